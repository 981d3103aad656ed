//! The WAL reader behind the seal before 3.7, on WALs real etcd wrote: etcd 3.5 proposes its member
//! attributes and the cluster version as v2 requests (which 3.7 cannot replay), and a snapshot taken past
//! them leaves none to replay. The seal itself runs on 3.6 (tests/ha_cluster.rs, tests/lineage.rs).

mod support;

use std::time::{Duration, Instant};

use etcd_migrate::wal;
use support::*;

#[test]
fn a_3_5_members_wal_holds_v2_requests_until_a_snapshot_passes_them() {
    let dir = TempDir::new("wal-3.5");
    let data = dir.join("data");
    let peer = free_peer_url();
    make_etcd3_data("3.5.30", &data, &peer, &sample_keys());
    let replay = wal::replay(&data.join("member")).unwrap();
    assert!(!replay.v2_requests.is_empty(), "3.5 published its attributes through v2: {replay:?}");
    assert!(replay.entries > replay.v2_requests.len(), "the keys are v3 requests: {replay:?}");

    // etcd 3.5 with a snapshot after every entry: once one is past everything written so far, no v2
    // request is left to replay.
    let etcd = TestEtcd::start_with("3.5.30", &data, "m", &peer, &["--snapshot-count=1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    let sealed = loop {
        etcd.put(&format!("/registry/after-{i}"), "v");
        i += 1;
        // Read while etcd writes: a record it is still writing may not decode yet.
        let replay = wal::replay(&data.join("member"));
        if let Ok(replay) = &replay
            && replay.v2_requests.is_empty()
            && replay.snapshot > 0
        {
            break replay.clone();
        }
        assert!(Instant::now() < deadline, "no snapshot passed the v2 requests: {replay:?}");
    };
    etcd.stop();
    let after = wal::replay(&data.join("member")).unwrap();
    assert!(after.snapshot >= sealed.snapshot && after.v2_requests.is_empty(), "{after:?}");
}
