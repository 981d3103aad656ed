//! Up within one storage, in place: one minor at a time, each left from its highest bundled patch, a
//! seal before a minor that replays less of the WAL, and a refusal below the next minor's documented
//! floor.

use super::{PlanError, Planner, Step};
use crate::release;
use crate::version::{EtcdState, Version};

impl Planner<'_> {
    /// In-place steps from `from` up to `to` within one storage: each minor is left from its highest
    /// bundled patch (checked against the next minor's documented floor), then `to` itself.
    pub(super) fn upgrade(&self, from: EtcdState, to: Version) -> Result<Vec<Step>, PlanError> {
        let mut steps = Vec::new();
        let at = |steps: &[Step]| steps.last().map_or(from, Step::after);
        let state = |version| EtcdState::new(version, from.storage);
        while at(&steps).version.minor() < to.minor() {
            let minor = at(&steps).version.minor();
            let next_minor =
                minor.next().ok_or_else(|| self.unsupported("no known minor follows the current one"))?;
            let version = if next_minor == to.minor() {
                to
            } else {
                self.require_patch(next_minor, "pass through it on the way up")?
            };
            if release::seal_before(at(&steps).version, version) {
                let newest = self.require_patch(
                    minor,
                    "seal the WAL for the next minor, which cannot replay its v2 records",
                )?;
                steps.push(Step::SealV2 { from: at(&steps), to: state(newest) });
            } else if let Some(newest) =
                self.highest_patch(minor).filter(|&newest| newest > at(&steps).version)
            {
                steps.push(Step::InPlace { from: at(&steps), to: state(newest) });
            }
            let leaving = at(&steps).version;
            if let Some(floor) = release::capabilities(version).upgrade_floor
                && leaving < floor
            {
                return Err(PlanError::BelowFloor {
                    from: leaving,
                    from_minor: minor,
                    floor,
                    to: next_minor,
                });
            }
            steps.push(Step::InPlace { from: at(&steps), to: state(version) });
        }
        if at(&steps).version != to {
            steps.push(Step::InPlace { from: at(&steps), to: state(to) });
        }
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::test_support::*;
    use crate::plan::{PlanError, plan};
    use crate::release::Tool;
    use crate::version::{Minor, Version};

    #[test]
    fn upgrades_one_minor_at_a_time_with_the_highest_patch() {
        assert_eq!(
            render("3.3.25/etcd3", "3.5.16/etcd3", BUNDLE, PROTOBUF).unwrap(),
            ["in-place 3.3.25/etcd3 -> 3.4.23/etcd3", "in-place 3.4.23/etcd3 -> 3.5.16/etcd3"]
        );
        assert_eq!(
            render("3.3.25/etcd3", "3.5.1/etcd3", BUNDLE, PROTOBUF).unwrap(),
            ["in-place 3.3.25/etcd3 -> 3.4.23/etcd3", "in-place 3.4.23/etcd3 -> 3.5.1/etcd3"]
        );
        // A minor is left from its highest bundled patch, as etcd's upgrade policy asks.
        assert_eq!(
            render("3.3.1/etcd3", "3.4.23/etcd3", BUNDLE, PROTOBUF).unwrap(),
            ["in-place 3.3.1/etcd3 -> 3.3.25/etcd3", "in-place 3.3.25/etcd3 -> 3.4.23/etcd3"]
        );
    }

    #[test]
    fn patch_changes_within_a_minor_are_one_step() {
        assert_eq!(
            render("3.5.1/etcd3", "3.5.16/etcd3", BUNDLE, PROTOBUF).unwrap(),
            ["in-place 3.5.1/etcd3 -> 3.5.16/etcd3"]
        );
        assert_eq!(
            render("3.5.16/etcd3", "3.5.1/etcd3", BUNDLE, PROTOBUF).unwrap(),
            ["in-place 3.5.16/etcd3 -> 3.5.1/etcd3"]
        );
    }

    /// A pre-release (Kubernetes' tests write `3.4.13-rc.0/etcd3`) is of its minor, below its release.
    #[test]
    fn a_pre_release_is_left_like_any_patch_of_its_minor() {
        assert_eq!(
            render("3.4.13-rc.0/etcd3", "3.5.16/etcd3", BUNDLE, PROTOBUF).unwrap(),
            ["in-place 3.4.13-rc.0/etcd3 -> 3.4.23/etcd3", "in-place 3.4.23/etcd3 -> 3.5.16/etcd3"]
        );
        assert_eq!(
            render("3.4.23-rc.0/etcd3", "3.4.23/etcd3", BUNDLE, PROTOBUF).unwrap(),
            ["in-place 3.4.23-rc.0/etcd3 -> 3.4.23/etcd3"]
        );
        assert_eq!(
            render("3.5.16-rc.1/etcd3", "3.3.25/etcd3", BUNDLE, PROTOBUF).unwrap(),
            ["downgrade 3.5.16-rc.1/etcd3 -> 3.4.23/etcd3", "downgrade 3.4.23/etcd3 -> 3.3.25/etcd3"]
        );
        let bundle = "3.5.30 3.5.32-rc.0 3.6.14";
        assert_eq!(
            render("3.5.32-rc.0/etcd3", "3.5.32-rc.0/etcd3", bundle, PROTOBUF).unwrap(),
            Vec::<String>::new()
        );
        let err = render("3.5.30/etcd3", "3.6.14/etcd3", bundle, PROTOBUF).unwrap_err();
        assert_eq!(
            err,
            PlanError::BelowFloor {
                from: "3.5.32-rc.0".parse().unwrap(),
                from_minor: Minor::new(3, 5),
                floor: Version::new(3, 5, 32),
                to: Minor::new(3, 6)
            },
            "a pre-release of the floor is below it"
        );
    }

    #[test]
    fn upgrades_etcd2_data_in_etcd2_mode() {
        assert_eq!(
            render("3.3.25/etcd2", "3.4.23/etcd2", BUNDLE, PROTOBUF).unwrap(),
            ["in-place 3.3.25/etcd2 -> 3.4.23/etcd2"]
        );
    }

    #[test]
    fn reaches_3_7_through_the_newest_3_5_and_3_6() {
        assert_eq!(
            render("3.4.23/etcd3", "3.7.1/etcd3", LINEAGE, PROTOBUF).unwrap(),
            [
                "in-place 3.4.23/etcd3 -> 3.5.33/etcd3",
                "seal-v2 3.5.33/etcd3 -> 3.5.33/etcd3",
                "in-place 3.5.33/etcd3 -> 3.6.14/etcd3",
                "seal-v2 3.6.14/etcd3 -> 3.6.14/etcd3",
                "in-place 3.6.14/etcd3 -> 3.7.1/etcd3",
            ]
        );
        // The seal before 3.7 reads the WAL itself: 3.6 has no `etcdutl check v2store`.
        let seal = plan(state("3.6.14/etcd3"), state("3.7.1/etcd3"), &versions(LINEAGE), PROTOBUF).unwrap();
        assert_eq!(
            seal.steps[0].tools(),
            [(Tool::Etcd, Version::new(3, 6, 14)), (Tool::Etcdctl, Version::new(3, 6, 14))]
        );
        assert_eq!(
            render("3.5.1/etcd3", "3.6.14/etcd3", LINEAGE, PROTOBUF).unwrap(),
            ["seal-v2 3.5.1/etcd3 -> 3.5.33/etcd3", "in-place 3.5.33/etcd3 -> 3.6.14/etcd3"]
        );
        let seal = plan(state("3.5.1/etcd3"), state("3.6.14/etcd3"), &versions(LINEAGE), PROTOBUF).unwrap();
        assert!(seal.steps[0].tools().contains(&(Tool::Etcdutl, Version::new(3, 5, 33))));
    }

    #[test]
    fn refuses_a_minor_whose_documented_floor_is_not_bundled() {
        let err = render("3.4.23/etcd3", "3.6.14/etcd3", "3.4.23 3.5.1 3.5.16 3.6.14", PROTOBUF).unwrap_err();
        assert_eq!(
            err,
            PlanError::BelowFloor {
                from: Version::new(3, 5, 16),
                from_minor: Minor::new(3, 5),
                floor: Version::new(3, 5, 32),
                to: Minor::new(3, 6)
            }
        );
        assert!(err.to_string().contains("bundle etcd 3.5.32 or later"), "{err}");
        // The newest 3.5 Debian serves is below it, whichever 3.5 the data is at.
        for from in ["3.4.23/etcd3", "3.5.1/etcd3", "3.5.30/etcd3"] {
            let err =
                render(from, "3.6.14/etcd3", "3.4.23 3.5.1 3.5.16 3.5.30 3.6.14", PROTOBUF).unwrap_err();
            assert!(
                matches!(err, PlanError::BelowFloor { from, .. } if from == Version::new(3, 5, 30)),
                "{err}"
            );
        }
        // Skipping 3.6 is refused too: 3.7.1 panics on 3.5 data.
        let err = render("3.5.30/etcd3", "3.7.1/etcd3", "3.5.30 3.7.1", PROTOBUF).unwrap_err();
        assert!(matches!(err, PlanError::MissingMinor { minor, .. } if minor == Minor::new(3, 6)), "{err}");
        let err = render("3.6.0/etcd3", "3.7.1/etcd3", "3.6.5 3.7.1", PROTOBUF).unwrap_err();
        assert!(matches!(err, PlanError::BelowFloor { floor, .. } if floor == Version::new(3, 6, 11)));
        // Without any 3.6 bundled, nothing can seal the WAL before 3.7.
        let err = render("3.6.0/etcd3", "3.7.1/etcd3", "3.7.1", PROTOBUF).unwrap_err();
        assert!(matches!(err, PlanError::MissingMinor { minor, .. } if minor == Minor::new(3, 6)), "{err}");
    }

    #[test]
    fn refuses_a_missing_intermediate_minor_before_anything() {
        let err = render("3.3.25/etcd3", "3.5.16/etcd3", "3.3.25 3.5.16", PROTOBUF).unwrap_err();
        assert_eq!(
            err,
            PlanError::MissingMinor { minor: Minor::new(3, 4), purpose: "pass through it on the way up" }
        );
        assert!(err.to_string().contains("no bundled etcd 3.4.x"));
    }
}
