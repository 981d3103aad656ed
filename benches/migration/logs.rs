//! What the migrator's JSON log says of a run's time.

use std::time::{SystemTime, UNIX_EPOCH};

/// A JSON log line's time, in seconds since midnight.
pub fn log_time(line: &serde_json::Value) -> f64 {
    let stamp = line["timestamp"].as_str().unwrap();
    let clock = stamp.split('T').nth(1).unwrap().trim_end_matches('Z');
    clock.split(':').fold(0.0, |acc, part| acc * 60.0 + part.parse::<f64>().unwrap())
}

/// From the migrator's JSON log: the seconds from each step's start to the stop of its hidden etcd, in
/// all (the rest of a run is the migrator's own time).
pub fn seconds_in_etcd(log: &str) -> f64 {
    let (mut started, mut total) = (None, 0.0);
    for line in log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        let message = line["message"].as_str().unwrap_or_default();
        if message.ends_with(" starting") && line["step"].is_u64() {
            started = Some(log_time(&line));
        } else if message == "hidden etcd stopped"
            && let Some(start) = started.take()
        {
            total += (log_time(&line) - start).rem_euclid(86_400.0);
        }
    }
    total
}

/// From a pod's JSON log, seconds from the pod's start (`spawned`, seconds since midnight UTC): until
/// the migrator has planned and checked (`migrating`), of that its preflight checks (`preflight_ms`), its
/// backup (from there until verified), until its first step starts, and until its exec of etcd.
pub struct PodPhases {
    pub preflight: f64,
    pub checks: f64,
    pub backup: f64,
    pub first_step: f64,
    pub exec: f64,
}

impl PodPhases {
    pub fn from_log(log: &str, spawned: f64) -> PodPhases {
        let lines: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|line| line["message"].is_string())
            .collect();
        let since_spawned = |found: &dyn Fn(&serde_json::Value) -> bool, what: &str| {
            let line = lines.iter().find(|line| found(line)).expect(what);
            (log_time(line) - spawned).rem_euclid(86_400.0)
        };
        let message = |m: &'static str| move |line: &serde_json::Value| line["message"] == m;
        let preflight = since_spawned(&message("migrating"), "migrating");
        let migrating = lines.iter().find(|line| line["message"] == "migrating").unwrap();
        PodPhases {
            preflight,
            checks: migrating["preflight_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0,
            backup: since_spawned(&message("backup verified"), "backup verified") - preflight,
            first_step: since_spawned(
                &|line| line["step"] == 1 && line["message"].as_str().unwrap().ends_with(" starting"),
                "a first step",
            ),
            exec: since_spawned(&message("starting etcd"), "starting etcd"),
        }
    }
}

/// Now, in seconds since midnight UTC, as [`log_time`] reads a log line's time.
pub fn wall_time() -> f64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (now.as_secs() % 86_400) as f64 + f64::from(now.subsec_nanos()) / 1e9
}

/// How long each phase of a conversion took, from the migrator's JSON log: the time between one
/// milestone line and the one before it goes to the phase that milestone ends.
pub struct Phases {
    seconds: std::collections::HashMap<&'static str, f64>,
    pub total: f64,
    pub attached_keys: u64,
}

impl Phases {
    pub fn from_log(log: &str) -> Phases {
        let lines: Vec<serde_json::Value> =
            log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let mut seconds = std::collections::HashMap::new();
        let mut last: Option<f64> = None;
        let mut attached_keys = 0;
        let (mut first, mut end) = (0.0, 0.0);
        for line in &lines {
            let message = line["message"].as_str().unwrap_or_default();
            let phase = match message {
                "migrating" => None,
                "backup verified" => Some("backup"),
                "hidden etcd is healthy" | "hidden etcd stopped" => Some("etcd starts and stops (2 each)"),
                "read the v2 data" => Some("v2 read"),
                "etcdctl migrate done" => Some("etcdctl migrate"),
                "leases attached" => {
                    attached_keys = line["keys"].as_u64().unwrap();
                    Some("attach")
                }
                "read the v3 data" => Some("verification"),
                m if m.starts_with("removed the stale v2 copy") => Some("removing the v2 copy"),
                m if m.starts_with("convert-to-etcd3") || m.starts_with("migrated") => Some("other"),
                _ => continue,
            };
            let mut now = log_time(line);
            match last {
                None => first = now,
                Some(before) => {
                    if now < before {
                        now += 86_400.0; // past midnight
                    }
                    *seconds.entry(phase.unwrap()).or_insert(0.0) += now - before;
                }
            }
            end = now;
            last = Some(now);
        }
        assert!(attached_keys > 0, "the conversion attached no leases: {log}");
        Phases { seconds, total: end - first, attached_keys }
    }

    pub fn get(&self, phase: &str) -> f64 {
        self.seconds.get(phase).copied().unwrap_or(0.0)
    }
}
