//! Migrations to break, shared by the crash tests (SIGKILL, `crash_safety`) and the power-loss tests
//! (`power_loss`): a template data dir written by real etcd, the migration to run on it, and how to check
//! what a run left; and the wait for a killed run's hidden etcds to be gone.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_migrate::client::v2::V2Client;
use etcd_migrate::etcd_process::ensure_port_free;
use sha2::{Digest, Sha256};

use super::*;

/// Processes whose command line mentions `dir` (hidden etcds working on it).
pub fn processes_using(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
        })
        .collect()
}

/// Waits (bounded) until no process works on `data` and the member's peer port is free again, as the
/// rerun's preflight requires: the hidden etcd must not outlive the migrator. A process dying of its
/// parent-death signal already shows an empty command line while its sockets are still closing, hence
/// the port.
pub fn assert_stopped(data: &Path, peer: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_using(data).is_empty() || ensure_port_free(peer).is_err() {
        assert!(
            Instant::now() < deadline,
            "the hidden etcd outlived the migrator: {:?}\n{}",
            processes_using(data),
            listening_sockets()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success());
}

/// One scenario: a template data dir (`<template>/data`), the migration to run on it, and how to check
/// the result.
pub struct Scenario {
    pub name: &'static str,
    pub template: TempDir,
    pub peer: String,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, &'static str)>,
    pub final_version: &'static str,
    /// `etcd3`, or `etcd2` for a rollback (its keys are read through the v2 API).
    pub final_storage: &'static str,
    pub keys: BTreeMap<String, Vec<u8>>,
    /// Keys that must be on a lease (etcd3) or have a TTL (etcd2) no longer than this.
    pub leased: BTreeMap<String, i64>,
}

impl Scenario {
    pub fn migrator(&self, data: &Path) -> Migrator {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut migrator = Migrator::new(data, &self.peer).args(&args).args(&["--migrate-only"]);
        for (key, value) in &self.env {
            migrator = migrator.env(key, value);
        }
        migrator
    }

    pub fn final_state(&self) -> String {
        format!("{}/{}", self.final_version, self.final_storage)
    }

    /// Checks a finished data dir: version.txt, every key and value, every lease (or TTL). Returns the
    /// number of keys checked and the digest of what was found (keys, values, leased keys).
    pub fn check(&self, data: &Path) -> (usize, String) {
        assert_eq!(version_txt(data), self.final_state());
        let etcd = TestEtcd::start_with(self.final_version, data, "m", &self.peer, &[]);
        let mut digest = Sha256::new();
        if self.final_storage == "etcd2" {
            check_v2_keys(&etcd, &self.keys, &self.leased);
        } else {
            let found = etcd.all_keys();
            assert_eq!(found, self.keys, "{}: keys or values differ", self.name);
            let leased = etcd.leased_keys();
            for (key, ttl) in &self.leased {
                let (granted, remaining) = leased.get(key).unwrap_or_else(|| panic!("{key} lost its lease"));
                assert!(*granted <= *ttl && *remaining > 0, "{key}: {granted}/{remaining}, was {ttl}");
            }
        }
        for (key, value) in &self.keys {
            digest.update(format!("{key} {} {}\n", value.len(), self.leased.contains_key(key)));
            digest.update(value);
        }
        (self.keys.len(), format!("{:x}", digest.finalize())[..16].to_string())
    }
}

/// etcd2 data written by 3.3.25 (50 plain keys, 50 TTL events), migrated to etcd3 on `target`.
pub fn etcd2_scenario(name: &'static str, target: &'static str) -> Scenario {
    let template = TempDir::new("template-etcd2");
    let data = template.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let etcd = TestEtcd::start_with("3.3.25", &data, "m", &peer, &[]);
    let client = V2Client::new(etcd.endpoint());
    let mut keys = BTreeMap::new();
    let mut leased = BTreeMap::new();
    block_on(async {
        for i in 0..50 {
            let key = format!("/registry/pods/ns/pod-{i}");
            client.set(&key, &format!("pod {i}"), None).await.unwrap();
            keys.insert(key, format!("pod {i}").into_bytes());
        }
        for i in 0..50 {
            let key = format!("/registry/events/ns/event-{i}");
            client.set(&key, "event", Some(3600)).await.unwrap();
            keys.insert(key.clone(), b"event".to_vec());
            leased.insert(key, 3600);
        }
    });
    etcd.stop();
    fs::write(data.join("version.txt"), "3.3.25/etcd2").unwrap();
    let args = ["--target-version", target].map(String::from).to_vec();
    Scenario {
        name,
        template,
        peer,
        args,
        env: Vec::new(),
        final_version: target,
        final_storage: "etcd3",
        keys,
        leased,
    }
}

/// etcd3 data written by 3.5.16 (the sample keys but the large one, ten keys on a lease) downgraded to
/// 3.3.25 in two steps.
pub fn downgrade_scenario() -> Scenario {
    let template = TempDir::new("template-downgrade");
    let data = template.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let mut keys = sample_keys();
    keys.remove("/registry/big/blob");
    make_etcd3_data("3.5.16", &data, &peer, &keys);
    let etcd = TestEtcd::start_with("3.5.16", &data, "m", &peer, &[]);
    let lease = etcd.etcdctl(&["lease", "grant", "3600"]).split_whitespace().nth(1).unwrap().to_string();
    let mut leased = BTreeMap::new();
    for i in 0..10 {
        let key = format!("/registry/events/e{i}");
        etcd.etcdctl(&["put", "--lease", &lease, &key, "event"]);
        keys.insert(key.clone(), b"event".to_vec());
        leased.insert(key, 3600);
    }
    etcd.stop();
    let args = ["--target-version", "3.3.25"].map(String::from).to_vec();
    Scenario {
        name: "downgrade-3.5-to-3.3",
        template,
        peer,
        args,
        env: Vec::new(),
        final_version: "3.3.25",
        final_storage: "etcd3",
        keys,
        leased,
    }
}

/// etcd3 data written by 3.3.25 (the sample keys, keys on two leases) upgraded to 3.5.16 in two steps.
pub fn upgrade_scenario() -> Scenario {
    let template = TempDir::new("template-upgrade");
    let data = template.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let (keys, leased) = leased_fixture("3.3.25", &data, &peer);
    let args = ["--target-version", "3.5.16"].map(String::from).to_vec();
    Scenario {
        name: "upgrade-3.3-to-3.5",
        template,
        peer,
        args,
        env: Vec::new(),
        final_version: "3.5.16",
        final_storage: "etcd3",
        keys,
        leased,
    }
}

/// etcd3 data written by 3.4.23 with JSON values (keys on two leases) rolled back to 3.3.25/etcd2.
pub fn rollback_scenario() -> Scenario {
    let template = TempDir::new("template-rollback");
    let data = template.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let (keys, leased) = leased_fixture("3.4.23", &data, &peer);
    let args = ["--target-version", "3.3.25", "--target-storage", "etcd2"].map(String::from).to_vec();
    Scenario {
        name: "rollback-3.4-to-3.3-etcd2",
        template,
        peer,
        args,
        env: vec![("STORAGE_MEDIA_TYPE", "application/json")],
        final_version: "3.3.25",
        final_storage: "etcd2",
        keys,
        leased,
    }
}
