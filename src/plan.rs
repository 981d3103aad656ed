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

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::release::{self, Tool};
use crate::version::{EtcdState, Minor, Storage, Version};

/// The media type that an etcd2-era API server can read back; rollback to etcd2 requires it.
pub const JSON_MEDIA_TYPE: &str = "application/json";

/// One unit of work; after it completes, `version.txt` says [`Step::after`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// Start etcd `to` on the data dir until healthy, then stop it: a one-minor upgrade, or a patch change.
    InPlace { from: EtcdState, to: EtcdState },
    /// The last step on a minor before one that replays less of the WAL (the newest bundled 3.5 before
    /// 3.6, which has no v2 store; the newest 3.6 before 3.7, which applies no v2 request at all): like
    /// `InPlace`, then a snapshot forced past every earlier WAL record, checked (3.5: `etcdutl check
    /// v2store`; 3.6: the WAL read past that snapshot), so that the next minor opens the data.
    SealV2 { from: EtcdState, to: EtcdState },
    /// Convert v2-store data to the v3 store with `etcdctl-<at> migrate`, then reattach TTL keys to leases.
    ConvertToEtcd3 { at: Version },
    /// One-minor 3.x downgrade: snapshot the data with `source` (same minor as `from`), restore it with
    /// `to`'s etcdctl into a new member dir, verify, swap.
    Downgrade { from: EtcdState, source: Version, to: EtcdState },
    /// One-minor downgrade by etcd's downgrade API (3.6+): `source` (same minor as `from`) runs on the
    /// data and lowers its storage version to `to`'s minor, then `to` opens the data. In place.
    OnlineDowngrade { from: EtcdState, source: Version, to: EtcdState },
    /// etcd3 → etcd2: copy every key from the v3 store (read with `source`) into a fresh v2 store of `to`.
    RollbackToEtcd2 { from: EtcdState, source: Version, to: EtcdState },
}

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

impl Step {
    pub fn before(&self) -> EtcdState {
        match *self {
            Step::InPlace { from, .. }
            | Step::SealV2 { from, .. }
            | Step::Downgrade { from, .. }
            | Step::OnlineDowngrade { from, .. }
            | Step::RollbackToEtcd2 { from, .. } => from,
            Step::ConvertToEtcd3 { at } => EtcdState::new(at, Storage::Etcd2),
        }
    }

    pub fn after(&self) -> EtcdState {
        match *self {
            Step::InPlace { to, .. }
            | Step::SealV2 { to, .. }
            | Step::Downgrade { to, .. }
            | Step::OnlineDowngrade { to, .. }
            | Step::RollbackToEtcd2 { to, .. } => to,
            Step::ConvertToEtcd3 { at } => EtcdState::new(at, Storage::Etcd3),
        }
    }

    /// The bundled tools this step runs: etcd and etcdctl of each release it uses, and etcdutl where it
    /// checks data offline.
    pub fn tools(&self) -> Vec<(Tool, Version)> {
        let releases = match *self {
            Step::InPlace { to, .. } | Step::SealV2 { to, .. } => vec![to.version],
            Step::ConvertToEtcd3 { at } => vec![at],
            Step::Downgrade { source, to, .. }
            | Step::OnlineDowngrade { source, to, .. }
            | Step::RollbackToEtcd2 { source, to, .. } => {
                vec![source, to.version]
            }
        };
        let mut tools: Vec<(Tool, Version)> =
            releases.into_iter().flat_map(|v| [(Tool::Etcd, v), (Tool::Etcdctl, v)]).collect();
        if let Step::SealV2 { to, .. } = *self
            && release::capabilities(to.version).v2_store
        {
            tools.push((Tool::Etcdutl, to.version));
        }
        tools
    }

    // The two properties below decide backups and disk-space checks; they name every kind of step, so
    // the compiler sends whoever adds one here to decide.

    /// Conversion and the online downgrade rewrite the data dir in place and cannot be undone without a
    /// backup.
    pub fn rewrites_in_place(&self) -> bool {
        match self {
            Step::ConvertToEtcd3 { .. } | Step::OnlineDowngrade { .. } => true,
            Step::InPlace { .. }
            | Step::SealV2 { .. }
            | Step::Downgrade { .. }
            | Step::RollbackToEtcd2 { .. } => false,
        }
    }

    /// Rebuilding steps build a new member beside the live one and swap it in.
    pub fn rebuilds(&self) -> bool {
        match self {
            Step::Downgrade { .. } | Step::RollbackToEtcd2 { .. } => true,
            Step::InPlace { .. }
            | Step::SealV2 { .. }
            | Step::ConvertToEtcd3 { .. }
            | Step::OnlineDowngrade { .. } => false,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Step::InPlace { .. } => "in-place",
            Step::SealV2 { .. } => "seal-v2",
            Step::ConvertToEtcd3 { .. } => "convert-to-etcd3",
            Step::Downgrade { .. } => "downgrade",
            Step::OnlineDowngrade { .. } => "online-downgrade",
            Step::RollbackToEtcd2 { .. } => "rollback-to-etcd2",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.name(), self.before(), self.after())
    }
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

    /// In-place steps from `from` up to `to` within one storage: each minor is left from its highest
    /// bundled patch (checked against the next minor's documented floor), then `to` itself.
    fn upgrade(&self, from: EtcdState, to: Version) -> Result<Vec<Step>, PlanError> {
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

    fn convert(&self) -> Result<Vec<Step>, PlanError> {
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

    fn downgrade(&self) -> Result<Vec<Step>, PlanError> {
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

    fn rollback_to_etcd2(&self, storage_media_type: &str) -> Result<Vec<Step>, PlanError> {
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
    use super::*;

    const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

    fn state(s: &str) -> EtcdState {
        s.parse().unwrap()
    }

    fn versions(list: &str) -> Vec<Version> {
        list.split_whitespace().map(|v| v.parse().unwrap()).collect()
    }

    /// Renders a plan as `kind before->after` lines, the compact form the tests compare.
    fn render(current: &str, target: &str, bundled: &str, media: &str) -> Result<Vec<String>, PlanError> {
        let plan = plan(state(current), state(target), &versions(bundled), media)?;
        Ok(plan.steps.iter().map(ToString::to_string).collect())
    }

    const BUNDLE: &str = "3.3.25 3.4.23 3.5.1 3.5.16";

    #[test]
    fn nothing_to_do_at_target() {
        assert_eq!(render("3.5.16/etcd3", "3.5.16/etcd3", BUNDLE, PROTOBUF).unwrap(), Vec::<String>::new());
    }

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

    const LINEAGE: &str =
        "2.2.1 2.3.7 3.0.17 3.1.20 3.2.32 3.3.25 3.4.23 3.5.1 3.5.16 3.5.30 3.5.33 3.6.14 3.7.1";

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
    fn etcd2_data_never_reaches_a_release_without_a_v2_store() {
        let err = render("3.4.23/etcd2", "3.6.14/etcd2", LINEAGE, PROTOBUF).unwrap_err();
        assert!(matches!(err, PlanError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("no v2 store"), "{err}");
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

    #[test]
    fn refuses_a_missing_intermediate_minor_before_anything() {
        let err = render("3.3.25/etcd3", "3.5.16/etcd3", "3.3.25 3.5.16", PROTOBUF).unwrap_err();
        assert_eq!(
            err,
            PlanError::MissingMinor { minor: Minor::new(3, 4), purpose: "pass through it on the way up" }
        );
        assert!(err.to_string().contains("no bundled etcd 3.4.x"));
    }

    #[test]
    fn refuses_an_unbundled_target() {
        let err = render("3.4.23/etcd3", "3.5.9/etcd3", BUNDLE, PROTOBUF).unwrap_err();
        assert_eq!(err, PlanError::TargetNotBundled(Version::new(3, 5, 9)));
    }

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

    #[test]
    fn upgrades_etcd2_data_in_etcd2_mode() {
        assert_eq!(
            render("3.3.25/etcd2", "3.4.23/etcd2", BUNDLE, PROTOBUF).unwrap(),
            ["in-place 3.3.25/etcd2 -> 3.4.23/etcd2"]
        );
    }

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
