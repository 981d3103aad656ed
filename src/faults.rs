//! Pauses for fault-injection tests, at the points where a crash is hardest to get right (mid
//! version-file write, mid backup), so a test can kill the migrator exactly there. Debug builds only:
//! in a release build `pause` is empty.

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
