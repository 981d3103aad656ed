//! The static-pod manifests are checked against the real binary's options and the real etcd's flags, so
//! a renamed option or a typo in a manifest fails here, not on a control-plane node.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use serde_norway::Value;

fn manifest(name: &str) -> Value {
    let path = format!("{}/manifests/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (flags, environment variables) the binary knows, from `--list-options`.
fn migrator_options() -> (BTreeSet<String>, BTreeSet<String>) {
    let output = Command::new(env!("CARGO_BIN_EXE_etcd-migrate")).arg("--list-options").output().unwrap();
    assert!(output.status.success());
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let (flag, env) = line.split_once(' ').unwrap();
        flags.insert(flag.to_string());
        if env != "-" {
            envs.insert(env.to_string());
        }
    }
    (flags, envs)
}

/// The flags etcd 3.5.16 itself accepts, from its `--help`.
fn etcd_flags() -> BTreeSet<String> {
    let output = Command::new(support::etcd("3.5.16")).arg("--help").output().unwrap();
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    text.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches(['\'', ',', '.']).to_string())
        .collect()
}

fn flag_name(arg: &str) -> String {
    arg.split('=').next().unwrap().to_string()
}

fn port_of(url: &str) -> u64 {
    url.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap()
}

fn check(name: &str) {
    let pod = manifest(name);
    let container = &pod["spec"]["containers"][0];
    let command: Vec<String> =
        container["command"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(command[0], "/usr/local/bin/etcd-migrate", "{name}: the binary is the pod's command");
    let split = command.iter().position(|a| a == "--").expect("etcd flags follow --");
    let (flags, envs) = migrator_options();
    for arg in &command[1..split] {
        assert!(flags.contains(&flag_name(arg)), "{name}: etcd-migrate has no option {arg}");
    }
    let etcd = etcd_flags();
    let etcd_args = &command[split + 1..];
    for arg in etcd_args {
        assert!(etcd.contains(&flag_name(arg)), "{name}: etcd 3.5.16 has no flag {arg}");
    }

    let mut env = std::collections::BTreeMap::new();
    for var in container["env"].as_sequence().unwrap() {
        let key = var["name"].as_str().unwrap().to_string();
        assert!(envs.contains(&key), "{name}: etcd-migrate reads no variable {key}");
        env.insert(key, var["value"].as_str().unwrap().to_string());
    }
    for required in ["TARGET_VERSION", "TARGET_STORAGE", "STORAGE_MEDIA_TYPE", "DATA_DIRECTORY"] {
        assert!(env.contains_key(required), "{name}: sets {required}");
    }
    if let Some(creds) = env.get("ETCD_CREDS") {
        for arg in creds.split_whitespace() {
            assert!(etcd.contains(&flag_name(arg)), "{name}: ETCD_CREDS passes unknown etcd flag {arg}");
            assert!(
                etcd_args.contains(&arg.to_string()),
                "{name}: the hidden etcd's {arg} matches the final etcd's"
            );
        }
    }
    for (var, flag) in [
        ("INITIAL_CLUSTER", "--initial-cluster"),
        ("INITIAL_ADVERTISE_PEER_URLS", "--initial-advertise-peer-urls"),
    ] {
        let given =
            etcd_args.iter().find(|a| flag_name(a) == flag).map(|a| a.split_once('=').unwrap().1.to_string());
        assert_eq!(env.get(var), given.as_ref(), "{name}: {var} is the member's real {flag}");
    }

    // The data dir lies strictly inside a hostPath mount, so backups beside it persist.
    let data_dir = &env["DATA_DIRECTORY"];
    let volumes = pod["spec"]["volumes"].as_sequence().unwrap();
    let persisted = container["volumeMounts"].as_sequence().unwrap().iter().any(|mount| {
        let path = mount["mountPath"].as_str().unwrap();
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        volume["hostPath"].is_mapping() && data_dir.starts_with(&format!("{path}/"))
    });
    assert!(persisted, "{name}: {data_dir} is below a hostPath mount");

    // Probes hit a URL etcd listens on, plain HTTP.
    let listening: Vec<u64> = etcd_args
        .iter()
        .filter(|a| {
            a.starts_with("--listen-client-urls=http://") || a.starts_with("--listen-metrics-urls=http://")
        })
        .flat_map(|a| a.split_once('=').unwrap().1.split(','))
        .filter(|url| url.starts_with("http://"))
        .map(port_of)
        .collect();
    for probe in ["startupProbe", "livenessProbe"] {
        let port = container[probe]["httpGet"]["port"].as_u64().unwrap_or_else(|| panic!("{name}: {probe}"));
        assert!(
            listening.contains(&port),
            "{name}: {probe} on {port}, etcd listens on plain HTTP at {listening:?}"
        );
        assert_eq!(container[probe]["httpGet"]["path"], "/health");
    }
    assert!(
        container["resources"]["requests"]["cpu"].is_string()
            && container["resources"]["requests"]["memory"].is_string()
    );
}

#[test]
fn single_member_manifest_matches_the_binary_and_etcd() {
    check("etcd.yaml");
}

#[test]
fn three_member_tls_manifest_matches_the_binary_and_etcd() {
    check("etcd-3-member.yaml");
    let pod = manifest("etcd-3-member.yaml");
    let command = pod["spec"]["containers"][0]["command"].as_sequence().unwrap();
    for flag in ["--client-cert-auth", "--peer-client-cert-auth"] {
        assert!(command.iter().any(|a| a == flag), "TLS stays on: {flag}");
    }
}
