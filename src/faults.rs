//! Faults for fault-injection tests. Pauses at the points where a crash is hardest to get right (mid
//! version-file write, mid backup, each hidden etcd up, between the phases of a step), where the test
//! kills, signals or starves the migrator; failures of paths that have a fallback but that the bundled
//! releases never fail (a snapshot restore). Debug builds only: in a release build `pause` returns at once and `fail` is false.

use std::path::PathBuf;
use std::time::Duration;

/// How often a paused run looks for its release.
const RELEASE_POLL: Duration = Duration::from_millis(10);

/// In a debug build with `ETCD_MIGRATE_TEST_PAUSE=<point>` and `ETCD_MIGRATE_TEST_HANDSHAKE=<dir>`:
/// creates `<dir>/<point>.reached` at `point`, then blocks until `<dir>/<point>.release` exists. The test
/// decides what happens meanwhile, so no timing does.
pub fn pause(point: &str) {
    if let Some(release) = reached(point) {
        while !release.exists() {
            std::thread::sleep(RELEASE_POLL);
        }
    }
}

/// [`pause`] for async code: it awaits the release, so a paused run still answers SIGTERM.
pub async fn pause_async(point: &str) {
    if let Some(release) = reached(point) {
        while !release.exists() {
            tokio::time::sleep(RELEASE_POLL).await;
        }
    }
}

/// If a test pauses the run at `point`: tells it the run is there, and returns the file that releases it.
fn reached(point: &str) -> Option<PathBuf> {
    #[cfg(debug_assertions)]
    if std::env::var("ETCD_MIGRATE_TEST_PAUSE").is_ok_and(|wanted| wanted == point) {
        let dir = PathBuf::from(
            std::env::var_os("ETCD_MIGRATE_TEST_HANDSHAKE")
                .expect("ETCD_MIGRATE_TEST_PAUSE comes with ETCD_MIGRATE_TEST_HANDSHAKE"),
        );
        std::fs::write(dir.join(format!("{point}.reached")), b"").expect("the handshake dir is writable");
        tracing::info!(point, "paused for a fault-injection test");
        return Some(dir.join(format!("{point}.release")));
    }
    let _ = point;
    None
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
