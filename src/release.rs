//! What each etcd release can do: the one place that knows how etcd changed from 2.2 to 3.7, measured
//! on the real releases (`shared/etcd-facts.md`) and taken from etcd's upgrade guides. Everything here
//! is a property of a release's minor, except the upgrade floors (of the minor an upgrade comes from),
//! the WAL-aware v2 store check and the restore that bumps revisions (of a patch); the planner, preflight, the steps and the tests ask
//! [`capabilities`] instead of comparing versions.

use crate::version::{Minor, Version};

/// What etcd `major.minor` offers. Built by [`capabilities`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Keeps a v2 store, so it can open etcd2 data and serve `/v2/keys` (2.x–3.5; gone in 3.6).
    pub v2_store: bool,
    /// Has the `--enable-v2` flag (3.3–3.5). Older releases always serve v2 and exit 2 on the flag;
    /// 3.4 and 3.5 serve v2 only with it.
    pub enable_v2_flag: bool,
    /// A v3 put may keep the stored value or lease (`ignore_value`, `ignore_lease`; 3.2 and later). Over
    /// gRPC, 3.0 and 3.1 drop the unknown field and write an empty value.
    pub put_ignore_value: bool,
    /// Has `--max-txn-ops` (3.3 and later); older releases allow 128 operations of a kind per transaction.
    pub max_txn_ops_flag: bool,
    /// Reports what a lease has left (`LeaseTimeToLive`, 3.1 and later; 3.0 answers 404), which the
    /// steps that rebuild through the API need to carry TTLs over.
    pub lease_time_to_live: bool,
    /// `ETCDCTL_API=3 etcdctl migrate` copies a stopped member's v2 store into its v3 store (3.0–3.4).
    pub etcdctl_migrate: bool,
    /// etcdctl speaks the v2 API unless `ETCDCTL_API=3` is set (3.0–3.3); 3.6 and later warn on the
    /// variable, and 2.x speaks only v2.
    pub etcdctl_needs_api_3: bool,
    /// Ships `etcdutl`, the offline data tool (3.5 and later).
    pub etcdutl: bool,
    /// `etcdutl snapshot restore --bump-revision N --mark-compacted` (etcd issue 16028): the restored
    /// member starts N revisions above the snapshot's, compacted there, so a watcher from before is told
    /// "compacted" and relists. Checked on the bundled releases: 3.5.16 and 3.5.30 have it, 3.5.1 does
    /// not (nor etcdctl 3.4.23's restore); 3.6 and later have it.
    pub restore_bumps_revision: bool,
    /// Opens a member that a newer etcdutl restored (its snapshot taken from this release), so that
    /// etcdutl can raise a logical copy's revision. Measured with etcdutl 3.5.30 on 3.3.25 and 3.4.23;
    /// 3.0–3.2 were not, so their copies are raised through the API.
    pub opens_newer_restore: bool,
    /// Has the online downgrade API (`etcdctl downgrade validate|enable`; 3.6 and later) and records
    /// a storage version in its backend.
    pub downgrade_api: bool,
    /// `etcdutl check v2store` also reads the WAL records past the newest v2 snapshot and fails on any v2
    /// request that 3.6 would refuse to replay ("custom v2 content in WAL records"), not only on keys in
    /// the snapshot. etcd documents it from 3.5.32 and 3.6.13.
    pub v2store_check_reads_wal: bool,
    /// Replays the v2 requests that etcd 3.5 and older wrote to the WAL (2.x–3.6; 3.6 only the member
    /// attributes and cluster version that 3.5 proposes as v2 `PUT`s). 3.7 parses every entry as a v3
    /// request and panics on them ("unmarshal should never fail").
    pub replays_v2_requests: bool,
    /// The lowest patch of the previous minor that etcd documents as safe to upgrade to this minor
    /// from; `None` where etcd documents none.
    pub upgrade_floor: Option<Version>,
    /// Serves its client API over TLS (2.x: HTTP; 3.1 and later: HTTP and gRPC). 3.0 offers no HTTP/2 by
    /// ALPN on a TLS listener, so its gRPC cannot be reached over TLS at all (measured on 3.0.17: its own
    /// etcdctl fails, "transport is closing"); its hidden client listener stays plain on loopback.
    pub client_tls: bool,
}

/// The patch of 3.5 that etcd's 3.5 → 3.6 upgrade guide requires of every member: 3.5.24 to 3.5.26 fix
/// the upgrade blockers (learner/zombie member records that 3.6 refuses), and 3.5.32 makes `etcdutl
/// check v2store` read the WAL as well as the v2 snapshot, which the seal before 3.6 relies on. (It also
/// adds `--v2-deprecation=write-only-skip-check`, which this tool never uses.)
pub const FLOOR_FOR_3_6: Version = Version::new(3, 5, 32);
/// The patch of 3.6 that etcd's 3.6 → 3.7 upgrade guide requires.
pub const FLOOR_FOR_3_7: Version = Version::new(3, 6, 11);

/// What etcd `version` can do. Releases newer than any known here are assumed to behave like the
/// newest known one.
pub fn capabilities(version: Version) -> Capabilities {
    let Minor { major, minor } = version.minor();
    let v3 = major >= 3;
    let at_least = |m: u32| v3 && (major > 3 || minor >= m);
    Capabilities {
        v2_store: !at_least(6),
        enable_v2_flag: at_least(3) && !at_least(6),
        put_ignore_value: at_least(2),
        max_txn_ops_flag: at_least(3),
        lease_time_to_live: at_least(1),
        etcdctl_migrate: v3 && !at_least(5),
        etcdctl_needs_api_3: v3 && !at_least(6),
        etcdutl: at_least(5),
        restore_bumps_revision: at_least(6) || (major, minor) == (3, 5) && version >= Version::new(3, 5, 16),
        opens_newer_restore: at_least(3),
        downgrade_api: at_least(6),
        replays_v2_requests: !at_least(7),
        v2store_check_reads_wal: match (major, minor) {
            (3, 5) => version >= Version::new(3, 5, 32),
            (3, 6) => version >= Version::new(3, 6, 13),
            _ => false,
        },
        client_tls: (major, minor) != (3, 0),
        upgrade_floor: match (major, minor) {
            (3, 6) => Some(FLOOR_FOR_3_6),
            (3, 7) => Some(FLOOR_FOR_3_7),
            _ => None,
        },
    }
}

/// Whether leaving `from` for `to` needs a seal on `from` first: a snapshot forced past every WAL record
/// that `to` cannot replay, because it drops the v2 store (3.5 → 3.6) or v2 requests altogether (3.6 →
/// 3.7).
pub fn seal_before(from: Version, to: Version) -> bool {
    let (from, to) = (capabilities(from), capabilities(to));
    (from.v2_store && !to.v2_store) || (from.replays_v2_requests && !to.replays_v2_requests)
}

/// A bundled command-line tool of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Etcd,
    Etcdctl,
    Etcdutl,
}

impl Tool {
    /// The tool's name, as its bundled file is named (`<name>-X.Y.Z`).
    pub const fn name(self) -> &'static str {
        match self {
            Tool::Etcd => "etcd",
            Tool::Etcdctl => "etcdctl",
            Tool::Etcdutl => "etcdutl",
        }
    }
}

/// The tools release `version` ships: etcd and etcdctl, and etcdutl from 3.5 on.
pub fn tools(version: Version) -> &'static [Tool] {
    if capabilities(version).etcdutl {
        &[Tool::Etcd, Tool::Etcdctl, Tool::Etcdutl]
    } else {
        &[Tool::Etcd, Tool::Etcdctl]
    }
}

/// How to ask `tool` of release `version` for its version, without a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionQuery {
    pub version: Version,
    pub args: &'static [&'static str],
    /// Environment the query needs (`ETCDCTL_API=3` for etcdctl 3.0–3.5).
    pub env: &'static [(&'static str, &'static str)],
    /// The line of its standard output that names `version`.
    pub expected_line: String,
}

/// The query that makes `tool` of release `version` print its version: `etcd --version` prints
/// `etcd Version: X`; etcdctl 2.x `--version` prints `etcdctl version X` (no colon, and no `version`
/// command); etcdctl 3.x and etcdutl print `etcdctl version: X` for `version` (3.4 and later have no
/// `--version` flag).
pub fn version_query(tool: Tool, version: Version) -> VersionQuery {
    let caps = capabilities(version);
    let (args, line): (&'static [&'static str], String) = match tool {
        Tool::Etcd => (&["--version"], format!("etcd Version: {version}")),
        Tool::Etcdctl if version.major < 3 => (&["--version"], format!("etcdctl version {version}")),
        Tool::Etcdctl | Tool::Etcdutl => (&["version"], format!("{} version: {version}", tool.name())),
    };
    let env: &'static [(&'static str, &'static str)] =
        if tool == Tool::Etcdctl && caps.etcdctl_needs_api_3 { &[("ETCDCTL_API", "3")] } else { &[] };
    VersionQuery { version, args, env, expected_line: line }
}

impl VersionQuery {
    /// Whether `stdout` of the query reports the expected version.
    pub fn reported_by(&self, stdout: &str) -> bool {
        stdout.lines().any(|line| line.trim() == self.expected_line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(version: &str) -> Capabilities {
        capabilities(version.parse().unwrap())
    }

    #[test]
    fn the_v2_store_and_its_flag() {
        for (version, store, flag) in [
            ("2.2.1", true, false),
            ("3.0.17", true, false),
            ("3.2.32", true, false),
            ("3.3.25", true, true),
            ("3.5.30", true, true),
            ("3.6.14", false, false),
            ("3.7.1", false, false),
        ] {
            assert_eq!((caps(version).v2_store, caps(version).enable_v2_flag), (store, flag), "{version}");
        }
    }

    #[test]
    fn which_releases_convert_keep_values_and_downgrade_online() {
        let with = |pick: fn(Capabilities) -> bool| -> Vec<&str> {
            ["2.3.7", "3.0.17", "3.1.20", "3.2.32", "3.3.25", "3.4.23", "3.5.16", "3.6.14", "3.7.1"]
                .into_iter()
                .filter(|v| pick(caps(v)))
                .collect()
        };
        assert_eq!(with(|c| c.etcdctl_migrate), ["3.0.17", "3.1.20", "3.2.32", "3.3.25", "3.4.23"]);
        assert_eq!(with(|c| c.put_ignore_value), ["3.2.32", "3.3.25", "3.4.23", "3.5.16", "3.6.14", "3.7.1"]);
        assert_eq!(with(|c| c.max_txn_ops_flag), ["3.3.25", "3.4.23", "3.5.16", "3.6.14", "3.7.1"]);
        assert_eq!(with(|c| c.etcdutl), ["3.5.16", "3.6.14", "3.7.1"]);
        assert_eq!(with(|c| c.restore_bumps_revision), ["3.5.16", "3.6.14", "3.7.1"]);
        assert!(!caps("3.5.1").restore_bumps_revision);
        assert_eq!(with(|c| c.opens_newer_restore), ["3.3.25", "3.4.23", "3.5.16", "3.6.14", "3.7.1"]);
        assert_eq!(with(|c| c.lease_time_to_live)[0], "3.1.20");
        assert_eq!(with(|c| c.downgrade_api), ["3.6.14", "3.7.1"]);
    }

    #[test]
    fn a_seal_comes_before_each_minor_that_replays_less_of_the_wal() {
        let seal = |from: &str, to: &str| seal_before(from.parse().unwrap(), to.parse().unwrap());
        assert!(seal("3.5.33", "3.6.14") && seal("3.6.14", "3.7.1"));
        assert!(!seal("3.4.23", "3.5.33") && !seal("3.6.11", "3.6.14") && !seal("3.7.1", "3.7.2"));
        assert!(!seal("2.3.7", "3.0.17"));
    }

    #[test]
    fn floors_for_the_minors_that_document_one() {
        assert_eq!(caps("3.6.14").upgrade_floor, Some(Version::new(3, 5, 32)));
        assert_eq!(caps("3.7.1").upgrade_floor, Some(Version::new(3, 6, 11)));
        assert_eq!(caps("3.5.30").upgrade_floor, None);
    }

    /// The seal before 3.6 runs the newest bundled 3.5's `etcdutl check v2store`, and the planner leaves
    /// 3.5 for 3.6 only from the floor or later: so the check it runs always reads the WAL too.
    #[test]
    fn the_3_6_floor_checks_the_wal_past_the_v2_snapshot() {
        assert!(capabilities(FLOOR_FOR_3_6).v2store_check_reads_wal);
        let reads_wal = |v: &str| caps(v).v2store_check_reads_wal;
        assert!(!reads_wal("3.5.30") && !reads_wal("3.5.31") && reads_wal("3.5.33"));
        assert!(!reads_wal("3.6.12") && reads_wal("3.6.13") && reads_wal("3.6.14"));
    }

    #[test]
    fn how_each_tool_reports_its_version() {
        let query = |tool, v: &str| version_query(tool, v.parse().unwrap());
        let etcdctl_2 = query(Tool::Etcdctl, "2.3.7");
        assert_eq!(etcdctl_2.args, ["--version"]);
        assert!(etcdctl_2.reported_by("etcdctl version 2.3.7\n"));
        assert!(!etcdctl_2.reported_by("etcdctl version 2.2.1\n"));
        let etcdctl_3 = query(Tool::Etcdctl, "3.0.17");
        assert_eq!((etcdctl_3.args, etcdctl_3.env), (&["version"][..], &[("ETCDCTL_API", "3")][..]));
        assert!(etcdctl_3.reported_by("etcdctl version: 3.0.17\nAPI version: 3.0\n"));
        let etcdctl_36 = query(Tool::Etcdctl, "3.6.14");
        assert_eq!(etcdctl_36.env, &[][..]);
        assert!(etcdctl_36.reported_by("etcdctl version: 3.6.14\nAPI version: 3.6\n"));
        assert!(query(Tool::Etcdutl, "3.7.1").reported_by("etcdutl version: 3.7.1\nAPI version: 3.7\n"));
        assert!(query(Tool::Etcd, "2.2.1").reported_by("etcd Version: 2.2.1\nGit SHA: 75f8282ee\n"));
    }
}
