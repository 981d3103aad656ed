//! A member of a multi-member cluster: the plan made for its data, checked against where its cluster runs.

use super::{Plan, PlanError, Step};
use crate::version::Minor;

/// The extra rules for one member of a multi-member cluster. `cluster` is the lowest minor its cluster
/// runs at: the cluster version its data last saw (`member/snap/db`), or, where every peer answered and
/// all run a newer minor, that one (a member stopped while its peers moved on catches up to them).
///
/// etcd runs a cluster at its lowest member's minor, so a member moves up at most one minor past it
/// (checked again before each step by [`check_step_in_cluster`], against what the data says then). It
/// moves down only by etcd's online downgrade (3.6 on), one minor per roll: the next minor down needs
/// every member at this one first. Rebuilding or converting one member alone would split it from its
/// peers.
pub fn check_member_of_cluster(plan: &Plan, cluster: Option<Minor>) -> Result<(), PlanError> {
    let mut online_downgrades = plan.steps.iter().filter(|step| matches!(step, Step::OnlineDowngrade { .. }));
    for step in &plan.steps {
        match step {
            Step::InPlace { .. } | Step::SealV2 { .. } | Step::OnlineDowngrade { .. } => {}
            Step::ConvertToEtcd3 { .. } => return Err(PlanError::NotMemberByMember("converting etcd2 data")),
            Step::Downgrade { .. } | Step::RollbackToEtcd2 { .. } => {
                return Err(PlanError::NotMemberByMember(
                    "a downgrade below 3.6 (etcd's online downgrade starts at 3.6)",
                ));
            }
        }
    }
    if let (Some(first), Some(_)) = (online_downgrades.next(), online_downgrades.next()) {
        return Err(PlanError::OneMinorDownAtATime {
            next: first.after().version.minor(),
            target: plan.target.version.minor(),
        });
    }
    plan.steps.last().map_or(Ok(()), |last| check_step_in_cluster(last, cluster))
}

/// Whether a member of a cluster last seen at `cluster` may take `step` now: it may not end more than one
/// minor past the cluster.
pub fn check_step_in_cluster(step: &Step, cluster: Option<Minor>) -> Result<(), PlanError> {
    let Some(cluster) = cluster else { return Ok(()) };
    let target = step.after().version.minor();
    match cluster.next() {
        Some(next) if target > next => Err(PlanError::AheadOfCluster { cluster, next, target }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::plan::test_support::*;

    #[test]
    fn a_cluster_member_moves_at_most_one_minor_past_its_cluster() {
        let bundled = versions(BUNDLE);
        let up = |from: &str, to: &str| plan(state(from), state(to), &bundled, PROTOBUF).unwrap();
        let at_3_4 = Some(Minor::new(3, 4));
        assert_eq!(check_member_of_cluster(&up("3.4.23/etcd3", "3.5.16/etcd3"), at_3_4), Ok(()));
        assert_eq!(check_member_of_cluster(&up("3.4.23/etcd3", "3.4.23/etcd3"), at_3_4), Ok(()));
        let err =
            check_member_of_cluster(&up("3.3.25/etcd3", "3.5.16/etcd3"), Some(Minor::new(3, 3))).unwrap_err();
        assert_eq!(
            err,
            PlanError::AheadOfCluster {
                cluster: Minor::new(3, 3),
                next: Minor::new(3, 4),
                target: Minor::new(3, 5)
            }
        );
        assert!(err.to_string().contains("upgrade every member to 3.4 first"));
        let down = plan(state("3.5.16/etcd3"), state("3.4.23/etcd3"), &bundled, PROTOBUF).unwrap();
        let err = check_member_of_cluster(&down, Some(Minor::new(3, 5))).unwrap_err();
        assert!(matches!(err, PlanError::NotMemberByMember(_)), "{err}");
        assert!(err.to_string().contains("snapshot restore"), "{err}");
        // From 3.6 on, etcd's online downgrade rolls a cluster down member by member, one minor a roll.
        let lineage = versions(LINEAGE);
        let down = |from: &str, to: &str| plan(state(from), state(to), &lineage, PROTOBUF).unwrap();
        let at_3_7 = Some(Minor::new(3, 7));
        assert_eq!(check_member_of_cluster(&down("3.7.1/etcd3", "3.6.14/etcd3"), at_3_7), Ok(()));
        assert_eq!(check_member_of_cluster(&down("3.6.14/etcd3", "3.5.33/etcd3"), at_3_7), Ok(()));
        assert_eq!(
            check_member_of_cluster(&down("3.7.1/etcd3", "3.5.33/etcd3"), at_3_7),
            Err(PlanError::OneMinorDownAtATime { next: Minor::new(3, 6), target: Minor::new(3, 5) })
        );
        // Each step is checked against the cluster as the data says it then.
        let up = up("3.3.25/etcd3", "3.5.16/etcd3");
        assert_eq!(check_step_in_cluster(&up.steps[0], Some(Minor::new(3, 3))), Ok(()));
        assert!(check_step_in_cluster(&up.steps[1], Some(Minor::new(3, 3))).is_err());
        assert_eq!(check_step_in_cluster(&up.steps[1], Some(Minor::new(3, 4))), Ok(()));
        let convert = plan(state("3.3.25/etcd2"), state("3.3.25/etcd3"), &bundled, PROTOBUF).unwrap();
        assert!(matches!(check_member_of_cluster(&convert, None), Err(PlanError::NotMemberByMember(_))));
    }
}
