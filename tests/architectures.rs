//! arm64 on this amd64 machine: the static arm64 binary (`image/build-arm64.sh`), run under
//! `qemu-aarch64-static`, migrates real data with Debian's arm64 etcd releases, also under qemu: etcd2
//! data written by arm64 3.3.25 converted and taken to 3.5.30, then rolled back to 3.4.23. And the one
//! image for both architectures (`image/build-index.sh`): an OCI index listing linux/amd64 and
//! linux/arm64, each holding binaries of its own architecture, which skopeo reads and Docker runs.
//!
//! The arm64 releases run through a bin dir of wrappers (`exec qemu-aarch64-static <release>`), so
//! the arm64 migrator's hidden etcds are arm64 etcds without binfmt_misc; the whole migration runs in
//! a child of this test whose `ETCD_BIN_DIR` is that dir, so the shared fixtures write and read the
//! data with the arm64 releases too. Needs root (the toolchain's chroot) and qemu-user-static: where
//! they are missing the tests skip saying so, and fail when `CI` is set.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

use etcd_migrate::client::v2::V2Client;
use support::*;

/// Set in the child that runs the migration: the arm64 migrator's path.
const CHILD: &str = "ETCD_MIGRATE_TEST_ARM64_MIGRATOR";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs one of the image scripts, returning its last line of stdout (a path); panics with its stderr.
fn script(name: &str, args: &[&str], env: &[(&str, &str)]) -> PathBuf {
    let output = Command::new(repo().join("image").join(name))
        .args(args)
        .env("ETCD_MIGRATE", env!("CARGO_BIN_EXE_etcd-migrate"))
        .envs(env.iter().copied())
        .output();
    let output = output.unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(output.status.success(), "{name} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    PathBuf::from(stdout.lines().last().unwrap_or_default())
}

/// The static arm64 binary, built once per run; `None` (see [`cannot_run`]) where it cannot be.
fn arm64_binary() -> Option<&'static Path> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if uid.as_deref().ok() != Some("0") {
            return Err("building the arm64 binary needs root (a chroot)".into());
        }
        let started = Instant::now();
        let binary = script("build-arm64.sh", &[], &[]);
        eprintln!("the arm64 binary: built in {} s", started.elapsed().as_secs());
        Ok(binary)
    });
    match built {
        Ok(binary) => Some(binary),
        Err(why) => {
            cannot_run(why);
            None
        }
    }
}

/// `e_machine` of an ELF file: 0x3e x86-64, 0xb7 AArch64; `None` for anything else.
fn elf_machine(path: &Path) -> Option<u16> {
    let bytes = fs::read(path).ok()?;
    (bytes.len() > 20 && bytes.starts_with(b"\x7fELF")).then(|| u16::from_le_bytes([bytes[18], bytes[19]]))
}

const AARCH64: u16 = 0xb7;
const X86_64: u16 = 0x3e;

/// A bin dir of wrappers, one per arm64 release tool in `cache`, each exec'ing the real one under qemu
/// with the arm64 C library Debian's releases link to.
fn emulated_bin_dir(cache: &Path, dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let sysroot = cache.join("sysroot");
    for entry in fs::read_dir(cache).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !["etcd-", "etcdctl-", "etcdutl-"].iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        assert_eq!(elf_machine(&path), Some(AARCH64), "{} is an arm64 binary", path.display());
        let wrapper = dir.join(&name);
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nQEMU_LD_PREFIX='{}' exec qemu-aarch64-static '{}' \"$@\"\n",
                sysroot.display(),
                path.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn the_arm64_binary_converts_etcd2_data_to_3_5_30_and_rolls_it_back_with_arm64_etcd_under_qemu() {
    if let Some(migrator) = std::env::var_os(CHILD) {
        return emulated_migrations(Path::new(&migrator));
    }
    let Some(binary) = arm64_binary() else { return };
    // Every registry release, as the shared fixtures expect of a bin dir.
    let mut args = vec!["--arch", "arm64"];
    args.extend(REGISTRY_RELEASES);
    let cache = script("fetch-etcd.sh", &args, &[]);
    let dir = TempDir::new("arm64");
    let bin_dir = dir.join("bin");
    emulated_bin_dir(&cache, &bin_dir);
    assert_eq!(elf_machine(binary), Some(AARCH64));

    let started = Instant::now();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_arm64_binary_converts_etcd2_data_to_3_5_30_and_rolls_it_back_with_arm64_etcd_under_qemu",
            "--nocapture",
        ])
        .env(CHILD, binary)
        .env("ETCD_BIN_DIR", &bin_dir)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && said.contains("1 passed"), "the emulated run failed:\n{said}");
    eprintln!("the arm64 migrations under qemu: {} s in all", started.elapsed().as_secs());
}

/// The arm64 migrator under qemu, with the options every test gives the migrator ([`Migrator::new`]).
fn migrate(binary: &Path, data: &Path, peer: &str, args: &[&str]) -> Output {
    let peer_port = peer.rsplit(':').next().unwrap();
    let started = Instant::now();
    let output = Command::new("qemu-aarch64-static")
        .arg(binary)
        .arg("--data-dir")
        .arg(data)
        .arg("--bin-dir")
        .arg(etcd_bin_dir())
        .args(["--name", "m", "--port", &free_port().to_string(), "--peer-port", peer_port])
        .args(["--listen-peer-urls", &peer.replace("localhost", "127.0.0.1")])
        .args(["--initial-advertise-peer-urls", peer, "--initial-cluster", &format!("m={peer}")])
        .args(["--health-timeout", "120s"])
        .args(args)
        .output()
        .unwrap();
    eprintln!("--- arm64 etcd-migrate {args:?}: {} s\n{}", started.elapsed().as_secs(), stderr(&output));
    output
}

/// In the child: the bin dir holds only the arm64 releases (under qemu).
fn emulated_migrations(binary: &Path) {
    let dir = TempDir::new("arm64-run");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());

    // etcd2 data written through arm64 3.3.25's v2 API: key → (value, TTL).
    let mut keys: BTreeMap<String, (String, Option<i64>)> = BTreeMap::new();
    for i in 0..20 {
        keys.insert(format!("/registry/pods/ns{}/pod-{i}", i % 2), (format!("{{\"pod\":{i}}}"), None));
    }
    for i in 0..10 {
        keys.insert(format!("/registry/events/ns/event-{i}"), (format!("{{\"event\":{i}}}"), Some(3600)));
    }
    keys.insert("/registry/masterleases/10.0.0.1".into(), ("lease".into(), Some(600)));
    keys.insert("/registry/configmaps/kube-system/ünïcødé".into(), ("värde ✓".into(), None));
    keys.insert("/registry/big/blob".into(), ("y".repeat(256 << 10), None));
    keys.insert("/registry/empty".into(), (String::new(), None));
    let etcd = TestEtcd::start_with("3.3.25", &data, "m", &peer, &[]);
    let client = V2Client::new(etcd.endpoint());
    block_on(async {
        for (key, (value, ttl)) in &keys {
            client.set(key, value, *ttl).await.unwrap();
        }
    });
    etcd.stop();
    fs::write(data.join("version.txt"), "3.3.25/etcd2\n").unwrap();

    // Converted (at 3.3, the first bundled minor with `etcdctl migrate`) and taken to 3.5.30.
    let output = migrate(binary, &data, &peer, &["--target-version", "3.5.30", "--migrate-only"]);
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    for line in ["convert-to-etcd3 starting", "leases attached", "in-place done"] {
        assert!(log.contains(line), "the log has {line:?}");
    }
    assert_eq!(version_txt(&data), "3.5.30/etcd3");
    let etcd = TestEtcd::start_with("3.5.30", &data, "m", &peer, &[]);
    let found = etcd.all_keys();
    assert_eq!(found.len(), keys.len(), "nothing else appeared");
    for (key, (value, _)) in &keys {
        assert_eq!(found.get(key).map(Vec::as_slice), Some(value.as_bytes()), "{key}");
    }
    assert_leases_match_ttls(&etcd, &keys);
    let leased = etcd.leased_keys();
    etcd.stop();

    // One rollback: 3.5.30 → 3.4.23 (snapshot restore), keys, values and leases kept.
    let output = migrate(binary, &data, &peer, &["--target-version", "3.4.23", "--migrate-only"]);
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("downgrade"), "a downgrade step ran: {log}");
    assert_eq!(version_txt(&data), "3.4.23/etcd3");
    let etcd = TestEtcd::start_with("3.4.23", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), found, "every key and value, as 3.5.30 served them");
    // The same keys on leases, each granted as before; etcd gives a lease its whole TTL again when it
    // restarts, so no more than that is left.
    let granted = leased.into_iter().map(|(key, (granted, _))| (key, granted)).collect();
    check_leases(&etcd, &granted);
}

/// The files of a blob of the OCI layout in `dir`, by its digest.
fn blob(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let said =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{command:?}: {said}");
    said
}

#[test]
fn one_oci_index_lists_linux_amd64_and_linux_arm64_each_with_binaries_of_its_architecture() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let Some(arm64) = arm64_binary() else { return };
    if Command::new("skopeo").arg("--version").output().is_err() {
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !root {
            return cannot_run("no skopeo here (apt-get install skopeo)");
        }
        run(Command::new("apt-get").args(["install", "-y", "-q", "--no-install-recommends", "skopeo"]));
    }
    let dir = TempDir::new("oci-index");
    let out = dir.join("out");
    let started = Instant::now();
    let versions = "3.3.25 3.4.23 3.5.30";
    let archive = script(
        "build-index.sh",
        &[
            "--source",
            "packages",
            "--tag",
            "etcd-migrate:index-test",
            "--amd64-binary",
            env!("CARGO_BIN_EXE_etcd-migrate"),
            "--arm64-binary",
            arm64.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        &[("BUNDLED_ETCD_VERSIONS", versions)],
    );
    eprintln!("staged and indexed both architectures in {} s", started.elapsed().as_secs());

    let layout = dir.join("layout");
    fs::create_dir(&layout).unwrap();
    run(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout));
    let top = json(&layout.join("index.json"));
    let entry = &top["manifests"][0];
    assert_eq!(entry["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], "etcd-migrate:index-test");
    let index = json(&blob(&layout, entry["digest"].as_str().unwrap()));
    let manifests = index["manifests"].as_array().unwrap();
    let platforms: Vec<String> = manifests
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);

    for manifest in manifests {
        let arch = manifest["platform"]["architecture"].as_str().unwrap();
        let machine = if arch == "arm64" { AARCH64 } else { X86_64 };
        let image = json(&blob(&layout, manifest["digest"].as_str().unwrap()));
        let config = json(&blob(&layout, image["config"]["digest"].as_str().unwrap()));
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/etcd-migrate");
        let layers = image["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        let root = dir.join(arch);
        fs::create_dir(&root).unwrap();
        let layer = blob(&layout, layers[0]["digest"].as_str().unwrap());
        run(Command::new("tar").arg("-xzf").arg(&layer).arg("-C").arg(&root));
        let bin = root.join("usr/local/bin");
        let mut checked = vec!["etcd-migrate".to_string(), "../../../bin/sh".to_string()];
        for version in versions.split(' ') {
            checked.extend([format!("etcd-{version}"), format!("etcdctl-{version}")]);
        }
        checked.push("etcdutl-3.5.30".into());
        for name in &checked {
            assert_eq!(elf_machine(&bin.join(name)), Some(machine), "{arch}: {name}");
        }
        // Every ELF file of the layer (libraries too) is of that architecture.
        let listing = run(Command::new("tar").arg("-tzf").arg(&layer));
        let mut elves = 0;
        for path in listing.lines().filter(|path| !path.ends_with('/')) {
            if let Some(found) = elf_machine(&root.join(path)) {
                assert_eq!(found, machine, "{arch}: {path}");
                elves += 1;
            }
        }
        assert!(elves > checked.len(), "{arch}: {elves} ELF files, the C library's among them");
    }

    // skopeo reads the index, picks each platform, and loads this machine's into Docker, which runs it.
    let source = format!("oci-archive:{}", archive.display());
    for arch in ["amd64", "arm64"] {
        let inspected = run(Command::new("skopeo").args(["inspect", "--override-arch", arch, &source]));
        assert!(inspected.contains(&format!("\"Architecture\": \"{arch}\"")), "{inspected}");
    }
    let engine = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
    if !engine.is_ok_and(|o| o.status.success()) {
        return cannot_run("no Docker engine answers here");
    }
    let tag = format!("etcd-migrate:index-test-{}", std::process::id());
    run(Command::new("skopeo").args(["copy", "-q", &source, &format!("docker-daemon:{tag}")]));
    let version = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/usr/local/bin/etcd-3.4.23",
            &tag,
            "--version",
        ])
        .output()
        .unwrap();
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    assert!(String::from_utf8_lossy(&version.stdout).contains("etcd Version: 3.4.23"), "{version:?}");
}
