//! The kinds of step a plan is made of: the state each starts and ends at, the tools it runs, and what
//! it does to the data dir.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::release::{self, Tool};
use crate::version::{EtcdState, Storage, Version};

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
