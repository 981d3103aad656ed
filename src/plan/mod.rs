//! Planning: which steps take the data from its current state to the target. A pure function of its
//! inputs (no files, no processes), so every path can be tested exhaustively without etcd.
//!
//! Rules, from etcd's own constraints:
//! - etcd moves one minor at a time, upwards in place, and leaves each minor from its highest bundled
//!   patch (etcd's upgrade policy), the target's own version last. Where etcd documents a patch floor for
//!   the next minor (3.5.32 for 3.6), a lower highest patch is refused before anything runs.
//! - Data opened by a newer minor is refused by an older one ("cluster cannot be downgraded"), so a
//!   downgrade goes one minor at a time: from 3.6 on by etcd's own online downgrade (the storage version
//!   must be lowered by the running newer minor; an offline `etcdutl migrate` leaves data the older
//!   minor refuses), below that by rebuilding the member from a snapshot.
//! - v2-store data (`etcd2`) is converted with `etcdctl migrate`, which only etcdctl 3.0–3.4 have; 3.6
//!   and later have no v2 store at all.
//! - etcd3 → etcd2 is a logical copy, only sensible when the API server wrote JSON. It is read by the
//!   current minor, whichever it is (revisions do not survive it, so walking down the etcd3 minors first
//!   would keep nothing more), except 3.0, which cannot say what a lease has left: that data moves up to
//!   3.1 first.
//!
//! One file a case: `upgrade` (up in place, within one storage), `convert` (etcd2 → etcd3), `downgrade`
//! (down by online downgrade or snapshot), `rollback` (etcd3 → etcd2); `cluster` adds a member's rules
//! and `step` holds the kinds of step.

mod cluster;
mod convert;
mod downgrade;
mod rollback;
mod step;
#[cfg(test)]
mod test_support;
mod upgrade;

use serde::Serialize;

use crate::release;
use crate::version::{EtcdState, Minor, Storage, Version};

pub use cluster::{check_member_of_cluster, check_step_in_cluster};
pub use step::Step;

/// The media type that an etcd2-era API server can read back; rollback to etcd2 requires it.
pub const JSON_MEDIA_TYPE: &str = "application/json";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("target etcd {0} is not bundled: add etcd-{0} to the bin dir or pick a bundled target")]
    TargetNotBundled(Version),
    #[error(
        "no bundled etcd {minor}.x: it is needed to {purpose}; bundle one (etcd moves one minor at a time)"
    )]
    MissingMinor { minor: Minor, purpose: &'static str },
    #[error(
        "converting etcd2 data to etcd3 needs a bundled etcd 3.0-3.4 between {from} and {to} (etcdctl migrate was removed in 3.5)"
    )]
    NoConverter { from: Version, to: Version },
    #[error(
        "rolling back to etcd2 needs STORAGE_MEDIA_TYPE={JSON_MEDIA_TYPE} (got {0}): an etcd2-era API server cannot read protobuf data; nothing was changed"
    )]
    RollbackNeedsJson(String),
    #[error(
        "etcd documents {to}.x as safe only from {floor} or later, and the newest bundled {from_minor}.x is {from}: bundle etcd {floor} or later"
    )]
    BelowFloor { from: Version, from_minor: Minor, floor: Version, to: Minor },
    #[error("cannot migrate {from} to {to}: {reason}")]
    Unsupported { from: EtcdState, to: EtcdState, reason: &'static str },
    #[error(
        "this member's peers run the cluster at {cluster} and a member may be at most one minor ahead: upgrade every member to {next} first (one member at a time), then to {target}"
    )]
    AheadOfCluster { cluster: Minor, next: Minor, target: Minor },
    #[error(
        "{0} of a multi-member cluster cannot be done member by member: stop every member, take one snapshot (etcdctl snapshot save) and restore it on each member with the target version's etcdctl snapshot restore"
    )]
    NotMemberByMember(&'static str),
    #[error(
        "a cluster goes down one minor at a time: take every member to {next} first (one member at a time), then to {target}"
    )]
    OneMinorDownAtATime { next: Minor, target: Minor },
}

/// The steps from `current` to `target`, in order, with where backups go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub current: EtcdState,
    pub target: EtcdState,
    pub steps: Vec<Step>,
}

impl Plan {
    /// A full backup goes before the first step of a run, and again before any step that rewrites the
    /// data dir in place or replaces its member (so every downgrade keeps what it replaced).
    pub fn backup_before(&self, index: usize) -> bool {
        let step = &self.steps[index];
        index == 0 || step.rewrites_in_place() || step.rebuilds()
    }
}

/// Plans the path from `current` to `target` using the `bundled` etcd versions.
pub fn plan(
    current: EtcdState,
    target: EtcdState,
    bundled: &[Version],
    storage_media_type: &str,
) -> Result<Plan, PlanError> {
    let planner = Planner { bundled, current, target };
    let steps = planner.steps(storage_media_type)?;
    Ok(Plan { current, target, steps })
}

/// What every case plans from: the bundled releases, and where the data is and must go.
struct Planner<'a> {
    bundled: &'a [Version],
    current: EtcdState,
    target: EtcdState,
}

impl Planner<'_> {
    fn steps(&self, storage_media_type: &str) -> Result<Vec<Step>, PlanError> {
        let (current, target) = (self.current, self.target);
        if current == target {
            return Ok(Vec::new());
        }
        for state in [current, target] {
            if state.storage == Storage::Etcd3 && state.version.major < 3 {
                return Err(self.unsupported("etcd3 storage needs etcd 3.x"));
            }
            if !(2..=3).contains(&state.version.major) {
                return Err(self.unsupported("only etcd 2.x and 3.x are known"));
            }
            if state.storage == Storage::Etcd2 && !release::capabilities(state.version).v2_store {
                return Err(self.unsupported("etcd 3.6 and later have no v2 store (etcd2 data)"));
            }
        }
        if !self.bundled.contains(&target.version) {
            return Err(PlanError::TargetNotBundled(target.version));
        }
        let going_up = target.version.minor() >= current.version.minor();
        let not_newer = target.version.minor() <= current.version.minor();
        match (current.storage, target.storage) {
            (from, to) if from == to && going_up => self.upgrade(current, target.version),
            (Storage::Etcd3, Storage::Etcd3) => self.downgrade(),
            (Storage::Etcd2, Storage::Etcd3) if going_up => self.convert(),
            (Storage::Etcd3, Storage::Etcd2) if not_newer => self.rollback_to_etcd2(storage_media_type),
            (Storage::Etcd2, Storage::Etcd2) => Err(self.unsupported(
                "etcd2 data cannot move to an older minor; restore a backup taken at that version",
            )),
            (Storage::Etcd2, _) => Err(self.unsupported("etcd2 data cannot be converted while downgrading")),
            (Storage::Etcd3, _) => {
                Err(self.unsupported("etcd3 data cannot go back to etcd2 on a newer version"))
            }
        }
    }

    fn unsupported(&self, reason: &'static str) -> PlanError {
        PlanError::Unsupported { from: self.current, to: self.target, reason }
    }

    /// The highest bundled patch of `minor`.
    fn highest_patch(&self, minor: Minor) -> Option<Version> {
        self.bundled.iter().copied().filter(|v| v.minor() == minor).max()
    }

    fn require_patch(&self, minor: Minor, purpose: &'static str) -> Result<Version, PlanError> {
        self.highest_patch(minor).ok_or(PlanError::MissingMinor { minor, purpose })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_support::*;

    #[test]
    fn nothing_to_do_at_target() {
        assert_eq!(render("3.5.16/etcd3", "3.5.16/etcd3", BUNDLE, PROTOBUF).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn refuses_an_unbundled_target() {
        let err = render("3.4.23/etcd3", "3.5.9/etcd3", BUNDLE, PROTOBUF).unwrap_err();
        assert_eq!(err, PlanError::TargetNotBundled(Version::new(3, 5, 9)));
    }

    #[test]
    fn etcd2_data_never_reaches_a_release_without_a_v2_store() {
        let err = render("3.4.23/etcd2", "3.6.14/etcd2", LINEAGE, PROTOBUF).unwrap_err();
        assert!(matches!(err, PlanError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("no v2 store"), "{err}");
    }

    #[test]
    fn refuses_pairs_that_make_no_sense() {
        for (current, target) in [
            ("3.3.25/etcd3", "3.5.16/etcd2"),
            ("3.5.16/etcd2", "3.3.25/etcd3"),
            ("3.5.16/etcd2", "3.4.23/etcd2"),
            ("2.2.1/etcd3", "3.5.16/etcd3"),
            ("9.9.9/etcd3", "3.5.16/etcd3"),
            ("3.4.23/etcd3", "2.3.7/etcd3"),
        ] {
            let bundle = format!("{BUNDLE} 2.3.7");
            let err = render(current, target, &bundle, JSON_MEDIA_TYPE).unwrap_err();
            assert!(matches!(err, PlanError::Unsupported { .. }), "{current} -> {target}: {err}");
        }
    }

    /// Every pair of states over a grid of versions either plans or refuses; a plan always starts at the
    /// current state, ends at the target, chains each step's before to the previous after, moves at most
    /// one minor per step, and only runs bundled binaries.
    #[test]
    fn every_pair_plans_a_chain_or_refuses() {
        let grid =
            versions("2.2.1 2.3.7 3.3.30 3.0.17 3.1.20 3.2.32 3.3.1 3.3.25 3.4.23 3.5.1 3.5.16 3.6.0 3.7.1");
        let bundles = [
            BUNDLE,
            LINEAGE,
            "2.3.7 3.0.17 3.1.20 3.2.32 3.3.25 3.4.23 3.5.16",
            "3.5.16",
            "3.3.25 3.5.16",
            "3.5.30 3.7.1",
            "",
        ];
        let mut planned = 0;
        for bundle in bundles {
            let bundled = versions(bundle);
            for &from in &grid {
                for &to in &grid {
                    for from_storage in [Storage::Etcd2, Storage::Etcd3] {
                        for to_storage in [Storage::Etcd2, Storage::Etcd3] {
                            let current = EtcdState::new(from, from_storage);
                            let target = EtcdState::new(to, to_storage);
                            for media in [PROTOBUF, JSON_MEDIA_TYPE] {
                                if let Ok(plan) = plan(current, target, &bundled, media) {
                                    planned += 1;
                                    check_chain(&plan, &bundled);
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(planned > 100, "only {planned} plans");
    }

    fn check_chain(plan: &Plan, bundled: &[Version]) {
        let mut at = plan.current;
        for step in &plan.steps {
            assert_eq!(step.before(), at, "{plan:?}");
            let (a, b) = (step.before().version.minor(), step.after().version.minor());
            let one_minor = a == b || a.next() == Some(b) || b.next() == Some(a);
            assert!(one_minor || matches!(step, Step::RollbackToEtcd2 { .. }), "{step} jumps minors");
            for (tool, version) in step.tools() {
                assert!(bundled.contains(&version), "{step} runs unbundled {} {version}", tool.name());
            }
            if let Step::RollbackToEtcd2 { source, .. } = *step {
                assert!(release::capabilities(source).lease_time_to_live, "{step} cannot read leases");
            }
            if let Step::Downgrade { source, .. } | Step::OnlineDowngrade { source, .. } = *step {
                let online = matches!(step, Step::OnlineDowngrade { .. });
                assert_eq!(
                    online,
                    release::capabilities(source).downgrade_api,
                    "{step}: only etcd can lower its storage"
                );
            }
            at = step.after();
        }
        assert_eq!(at, plan.target, "{plan:?}");
        assert_eq!(plan.steps.is_empty(), plan.current == plan.target);
    }
}
