//! Down within etcd3, one minor at a time: from 3.6 on by etcd's online downgrade, below that by
//! rebuilding the member from a snapshot of the data read by its own minor.

use super::{PlanError, Planner, Step};
use crate::release;
use crate::version::{EtcdState, Storage};

impl Planner<'_> {
    pub(super) fn downgrade(&self) -> Result<Vec<Step>, PlanError> {
        let (current, target) = (self.current, self.target);
        if current.version.minor() == target.version.minor() {
            return Ok(vec![Step::InPlace { from: current, to: target }]);
        }
        let mut steps = Vec::new();
        let mut at = current;
        let mut source =
            self.require_patch(current.version.minor(), "read the current data for a downgrade")?;
        while at.version.minor() > target.version.minor() {
            let minor = at
                .version
                .minor()
                .previous()
                .ok_or_else(|| self.unsupported("no minor below the current one"))?;
            if minor.major < 3 {
                return Err(self.unsupported("etcd3 data cannot go below etcd 3.0"));
            }
            let version = if minor == target.version.minor() {
                target.version
            } else {
                self.require_patch(minor, "pass through it on the way down")?
            };
            let next = EtcdState::new(version, Storage::Etcd3);
            steps.push(if release::capabilities(source).downgrade_api {
                Step::OnlineDowngrade { from: at, source, to: next }
            } else {
                Step::Downgrade { from: at, source, to: next }
            });
            at = next;
            source = version;
        }
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::test_support::*;
    use crate::plan::{PlanError, Step, plan};
    use crate::version::{Minor, Version};

    #[test]
    fn downgrades_one_minor_at_a_time_by_snapshot() {
        assert_eq!(
            render("3.5.16/etcd3", "3.3.25/etcd3", BUNDLE, PROTOBUF).unwrap(),
            ["downgrade 3.5.16/etcd3 -> 3.4.23/etcd3", "downgrade 3.4.23/etcd3 -> 3.3.25/etcd3"]
        );
        let plan = plan(state("3.5.9/etcd3"), state("3.4.23/etcd3"), &versions(BUNDLE), PROTOBUF).unwrap();
        assert_eq!(
            plan.steps,
            [Step::Downgrade {
                from: state("3.5.9/etcd3"),
                source: Version::new(3, 5, 16),
                to: state("3.4.23/etcd3")
            }]
        );
    }

    #[test]
    fn downgrades_from_3_6_on_by_etcds_online_downgrade_then_by_snapshot() {
        assert_eq!(
            render("3.7.1/etcd3", "3.0.17/etcd3", LINEAGE, PROTOBUF).unwrap(),
            [
                "online-downgrade 3.7.1/etcd3 -> 3.6.14/etcd3",
                "online-downgrade 3.6.14/etcd3 -> 3.5.33/etcd3",
                "downgrade 3.5.33/etcd3 -> 3.4.23/etcd3",
                "downgrade 3.4.23/etcd3 -> 3.3.25/etcd3",
                "downgrade 3.3.25/etcd3 -> 3.2.32/etcd3",
                "downgrade 3.2.32/etcd3 -> 3.1.20/etcd3",
                "downgrade 3.1.20/etcd3 -> 3.0.17/etcd3",
            ]
        );
        let plan = plan(state("3.7.0/etcd3"), state("3.6.14/etcd3"), &versions(LINEAGE), PROTOBUF).unwrap();
        assert_eq!(
            plan.steps,
            [Step::OnlineDowngrade {
                from: state("3.7.0/etcd3"),
                source: Version::new(3, 7, 1),
                to: state("3.6.14/etcd3")
            }]
        );
        assert!(plan.backup_before(0) && plan.steps[0].rewrites_in_place(), "it cannot be undone");
    }

    #[test]
    fn a_downgrade_needs_the_current_minor_to_read_the_data() {
        let err = render("3.5.16/etcd3", "3.4.23/etcd3", "3.4.23", PROTOBUF).unwrap_err();
        assert_eq!(
            err,
            PlanError::MissingMinor {
                minor: Minor::new(3, 5),
                purpose: "read the current data for a downgrade"
            }
        );
        let err = render("3.5.16/etcd3", "3.3.25/etcd3", "3.3.25 3.5.16", PROTOBUF).unwrap_err();
        assert_eq!(
            err,
            PlanError::MissingMinor { minor: Minor::new(3, 4), purpose: "pass through it on the way down" }
        );
    }
}
