//! etcd2 → etcd3: up in etcd2 mode to the first bundled minor whose etcdctl has `migrate` (3.0–3.4),
//! converted there at its highest bundled patch, then up in etcd3 mode.

use super::{PlanError, Planner, Step};
use crate::release;
use crate::version::{EtcdState, Storage, Version};

impl Planner<'_> {
    pub(super) fn convert(&self) -> Result<Vec<Step>, PlanError> {
        let (current, target) = (self.current, self.target);
        let can_migrate = |v: &Version| release::capabilities(*v).etcdctl_migrate;
        let mut candidates = self
            .bundled
            .iter()
            .copied()
            .filter(|v| can_migrate(v) && v.minor() >= current.version.minor() && *v <= target.version);
        let first_minor = candidates
            .next()
            .map(Version::minor)
            .ok_or(PlanError::NoConverter { from: current.version, to: target.version })?;
        let at = self.highest_patch(first_minor).expect("candidate minor is bundled");
        let mut steps = self.upgrade(current, at)?;
        steps.push(Step::ConvertToEtcd3 { at });
        steps.extend(self.upgrade(EtcdState::new(at, Storage::Etcd3), target.version)?);
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::PlanError;
    use crate::plan::test_support::*;
    use crate::version::{Minor, Version};

    #[test]
    fn converts_etcd2_at_the_first_version_with_migrate() {
        assert_eq!(
            render("3.3.25/etcd2", "3.5.16/etcd3", BUNDLE, PROTOBUF).unwrap(),
            [
                "convert-to-etcd3 3.3.25/etcd2 -> 3.3.25/etcd3",
                "in-place 3.3.25/etcd3 -> 3.4.23/etcd3",
                "in-place 3.4.23/etcd3 -> 3.5.16/etcd3",
            ]
        );
        // Without 3.3 bundled, the data steps up in etcd2 mode and converts at 3.4.
        assert_eq!(
            render("3.3.25/etcd2", "3.5.16/etcd3", "3.4.23 3.5.16", PROTOBUF).unwrap(),
            [
                "in-place 3.3.25/etcd2 -> 3.4.23/etcd2",
                "convert-to-etcd3 3.4.23/etcd2 -> 3.4.23/etcd3",
                "in-place 3.4.23/etcd3 -> 3.5.16/etcd3",
            ]
        );
        // An older patch converts at the highest bundled patch of its minor.
        assert_eq!(
            render("3.3.1/etcd2", "3.4.23/etcd3", BUNDLE, PROTOBUF).unwrap(),
            [
                "in-place 3.3.1/etcd2 -> 3.3.25/etcd2",
                "convert-to-etcd3 3.3.25/etcd2 -> 3.3.25/etcd3",
                "in-place 3.3.25/etcd3 -> 3.4.23/etcd3",
            ]
        );
    }

    #[test]
    fn converts_from_etcd2_era_data_through_every_minor() {
        assert_eq!(
            render("2.2.1/etcd2", "3.1.20/etcd3", "2.3.7 3.0.17 3.1.20", PROTOBUF).unwrap(),
            [
                "in-place 2.2.1/etcd2 -> 2.3.7/etcd2",
                "in-place 2.3.7/etcd2 -> 3.0.17/etcd2",
                "convert-to-etcd3 3.0.17/etcd2 -> 3.0.17/etcd3",
                "in-place 3.0.17/etcd3 -> 3.1.20/etcd3",
            ]
        );
        let err = render("2.2.1/etcd2", "3.3.25/etcd3", BUNDLE, PROTOBUF).unwrap_err();
        assert_eq!(
            err,
            PlanError::MissingMinor { minor: Minor::new(2, 3), purpose: "pass through it on the way up" }
        );
    }

    #[test]
    fn says_which_version_can_convert_when_none_is_bundled() {
        let err = render("3.5.1/etcd2", "3.5.16/etcd3", BUNDLE, PROTOBUF).unwrap_err();
        assert_eq!(err, PlanError::NoConverter { from: Version::new(3, 5, 1), to: Version::new(3, 5, 16) });
        assert!(err.to_string().contains("3.0-3.4"));
        assert!(render("3.4.23/etcd2", "3.5.16/etcd3", "3.5.16", PROTOBUF).is_err());
    }
}
