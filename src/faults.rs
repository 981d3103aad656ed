//! Faults for fault-injection tests. Pauses at the points where a crash is hardest to get right (mid
//! version-file write, mid backup), so a test can kill the migrator exactly there; failures of paths
//! that have a fallback but that the bundled releases never fail (a snapshot restore). Debug builds
//! only: in a release build `pause` is empty and `fail` is false.

/// In a debug build with `ETCD_MIGRATE_TEST_PAUSE=<point>`, logs and sleeps half a second at `point`.
pub fn pause(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("ETCD_MIGRATE_TEST_PAUSE").is_ok_and(|wanted| wanted == point) {
        tracing::info!(point, "paused for a fault-injection test");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// In a debug build with `ETCD_MIGRATE_TEST_FAIL=<point>`: true, so the caller fails at `point`.
pub fn fail(point: &str) -> bool {
    #[cfg(debug_assertions)]
    if std::env::var("ETCD_MIGRATE_TEST_FAIL").is_ok_and(|wanted| wanted == point) {
        tracing::warn!(point, "failing here for a fault-injection test");
        return true;
    }
    let _ = point;
    false
}
