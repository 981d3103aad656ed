//! etcd3 → etcd2: a logical copy into a fresh v2 store, for JSON data only, read by the current minor,
//! or by 3.1 for 3.0 data (3.0 cannot say what a lease has left).

use super::{JSON_MEDIA_TYPE, PlanError, Planner, Step};
use crate::release;
use crate::version::{EtcdState, Storage};

impl Planner<'_> {
    pub(super) fn rollback_to_etcd2(&self, storage_media_type: &str) -> Result<Vec<Step>, PlanError> {
        if storage_media_type != JSON_MEDIA_TYPE {
            return Err(PlanError::RollbackNeedsJson(storage_media_type.to_string()));
        }
        let mut steps = Vec::new();
        let mut from = self.current;
        if !release::capabilities(from.version).lease_time_to_live {
            let next = from.version.minor().next().expect("every etcd3 minor has a next one");
            let reader = self.require_patch(next, "read what each lease has left for a rollback")?;
            steps = self.upgrade(from, reader)?;
            from = EtcdState::new(reader, Storage::Etcd3);
        }
        let source = self.require_patch(from.version.minor(), "read the current data for a rollback")?;
        steps.push(Step::RollbackToEtcd2 { from, source, to: self.target });
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::test_support::*;
    use crate::plan::{JSON_MEDIA_TYPE, PlanError};
    use crate::version::Minor;

    #[test]
    fn rolls_back_to_etcd2_only_with_json_data() {
        assert_eq!(
            render("3.4.23/etcd3", "3.3.25/etcd2", BUNDLE, JSON_MEDIA_TYPE).unwrap(),
            ["rollback-to-etcd2 3.4.23/etcd3 -> 3.3.25/etcd2"]
        );
        assert_eq!(
            render("3.4.23/etcd3", "3.4.23/etcd2", BUNDLE, JSON_MEDIA_TYPE).unwrap(),
            ["rollback-to-etcd2 3.4.23/etcd3 -> 3.4.23/etcd2"]
        );
        let err = render("3.4.23/etcd3", "3.3.25/etcd2", BUNDLE, PROTOBUF).unwrap_err();
        assert_eq!(err, PlanError::RollbackNeedsJson(PROTOBUF.to_string()));
        assert!(err.to_string().contains("application/json"));
    }

    #[test]
    fn rolls_back_to_etcd2_from_any_etcd3_minor_reading_leases_from_3_1_on() {
        assert_eq!(
            render("3.7.1/etcd3", "2.2.1/etcd2", LINEAGE, JSON_MEDIA_TYPE).unwrap(),
            ["rollback-to-etcd2 3.7.1/etcd3 -> 2.2.1/etcd2"]
        );
        assert_eq!(
            render("3.0.17/etcd3", "2.2.1/etcd2", LINEAGE, JSON_MEDIA_TYPE).unwrap(),
            ["in-place 3.0.17/etcd3 -> 3.1.20/etcd3", "rollback-to-etcd2 3.1.20/etcd3 -> 2.2.1/etcd2"]
        );
        let err = render("3.0.17/etcd3", "2.2.1/etcd2", "2.2.1 3.0.17", JSON_MEDIA_TYPE).unwrap_err();
        assert_eq!(
            err,
            PlanError::MissingMinor {
                minor: Minor::new(3, 1),
                purpose: "read what each lease has left for a rollback"
            }
        );
    }
}
