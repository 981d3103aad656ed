//! The other architectures Kubernetes runs etcd on, from this amd64 machine: arm64, arm (armv7), ppc64le
//! and s390x. For each, the static binary (`image/build-cross.sh`, all four in one build), run under
//! that architecture's `qemu-*-static`, migrates real data with Debian's releases of that architecture,
//! also under qemu: etcd2 data written by that architecture's etcd (3.3.25 where Debian built it, else
//! 3.4.23 with the v2 API on) converted and taken to 3.5.30, then rolled back to 3.4.23. s390x is
//! big-endian, and bbolt writes its pages in the writer's byte order: there the proof also reads what
//! the migrator reads itself, `status` (the db's cluster version and revisions) and the WAL, on data
//! s390x's etcd wrote. And the one image for all five (`image/build-index.sh`): an OCI index listing
//! each platform, each holding binaries of its own architecture, which skopeo reads and Docker runs.
//!
//! The releases run through a bin dir of wrappers (`exec qemu-ARCH-static <release>`), so the
//! migrator's hidden etcds are that architecture's etcds without binfmt_misc; the whole migration runs
//! in a child of this test whose `ETCD_BIN_DIR` is that dir, so the shared fixtures write and read the
//! data with those releases too. Needs root (the toolchain's chroot) and qemu-user-static: where they
//! are missing the tests skip saying so, and fail when `CI` is set.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

use etcd_migrate::client::v2::V2Client;
use etcd_migrate::wal;
use support::*;

/// Set in the child that runs the migrations: the architecture's name and its migrator's path.
const CHILD_ARCH: &str = "ETCD_MIGRATE_TEST_ARCH";
const CHILD_MIGRATOR: &str = "ETCD_MIGRATE_TEST_ARCH_MIGRATOR";

/// One architecture: its name (Kubernetes', `image/build-cross.sh`'s), qemu's name for it, its ELF
/// machine, and the Debian release of it that writes the etcd2 data.
struct Arch {
    name: &'static str,
    qemu: &'static str,
    machine: u16,
    etcd2_writer: &'static str,
}

const X86_64: u16 = 0x3e;
const ARM64: Arch = Arch { name: "arm64", qemu: "aarch64", machine: 0xb7, etcd2_writer: "3.3.25" };
const ARM: Arch = Arch { name: "arm", qemu: "arm", machine: 0x28, etcd2_writer: "3.3.25" };
const PPC64LE: Arch = Arch { name: "ppc64le", qemu: "ppc64le", machine: 0x15, etcd2_writer: "3.4.23" };
const S390X: Arch = Arch { name: "s390x", qemu: "s390x", machine: 0x16, etcd2_writer: "3.4.23" };
const ARCHES: [&Arch; 4] = [&ARM64, &ARM, &PPC64LE, &S390X];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs one of the image scripts, returning its stdout; panics with its stderr.
fn script(name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(repo().join("image").join(name))
        .args(args)
        .env("ETCD_MIGRATE", env!("CARGO_BIN_EXE_etcd-migrate"))
        .envs(env.iter().copied())
        .output();
    let output = output.unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(output.status.success(), "{name} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The last line of a script's stdout: the path it prints.
fn last_line(stdout: &str) -> PathBuf {
    PathBuf::from(stdout.lines().last().unwrap_or_default())
}

/// The static binary of `arch`, all four built once per run in one cargo run; `None` (see
/// [`cannot_run`]) where they cannot be.
fn cross_binary(arch: &Arch) -> Option<&'static Path> {
    static BUILT: OnceLock<Result<BTreeMap<String, PathBuf>, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if uid.as_deref().ok() != Some("0") {
            return Err("building the cross binaries needs root (a chroot)".into());
        }
        let started = Instant::now();
        // The release's code, built faster (no LTO): Cargo.toml's cross-test profile.
        let lines = script("build-cross.sh", &[], &[("CROSS_PROFILE", "cross-test")]);
        eprintln!("the cross binaries: built in {} s", started.elapsed().as_secs());
        Ok(lines
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(arch, path)| (arch.to_string(), PathBuf::from(path)))
            .collect())
    });
    match built {
        Ok(binaries) => Some(binaries[arch.name].as_path()),
        Err(why) => {
            cannot_run(why);
            None
        }
    }
}

/// `e_machine` of an ELF file, read in the file's own byte order (s390x's is big-endian); `None` for
/// anything that is not ELF.
fn elf_machine(path: &Path) -> Option<u16> {
    let bytes = fs::read(path).ok()?;
    if bytes.len() <= 20 || !bytes.starts_with(b"\x7fELF") {
        return None;
    }
    let field = [bytes[18], bytes[19]];
    Some(if bytes[5] == 2 { u16::from_be_bytes(field) } else { u16::from_le_bytes(field) })
}

/// A bin dir of wrappers, one per release tool of `arch` in `cache`, each exec'ing the real one under
/// qemu with the C library Debian's releases link to.
fn emulated_bin_dir(arch: &Arch, cache: &Path, dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let sysroot = cache.join("sysroot");
    for entry in fs::read_dir(cache).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !["etcd-", "etcdctl-", "etcdutl-"].iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        assert_eq!(elf_machine(&path), Some(arch.machine), "{} is an {} binary", path.display(), arch.name);
        let wrapper = dir.join(&name);
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nQEMU_LD_PREFIX='{}' exec qemu-{}-static '{}' \"$@\"\n",
                sysroot.display(),
                arch.qemu,
                path.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn arch_named(name: &str) -> &'static Arch {
    ARCHES.into_iter().find(|arch| arch.name == name).unwrap()
}

/// The proof for `arch`: in this process, the binary and the releases; in a child of this test (the
/// same test, run again with [`CHILD_ARCH`] set), the migrations themselves.
fn proof(arch: &Arch, test: &str) {
    if let Some(migrator) = std::env::var_os(CHILD_MIGRATOR) {
        return emulated_migrations(arch_named(&std::env::var(CHILD_ARCH).unwrap()), Path::new(&migrator));
    }
    let Some(binary) = cross_binary(arch) else { return };
    assert_eq!(elf_machine(binary), Some(arch.machine));
    // Every registry release of the architecture, as the shared fixtures expect of a bin dir.
    let releases = registry_releases(arch.name);
    let mut args = vec!["--arch", arch.name];
    args.extend(&releases);
    let cache = last_line(&script("fetch-etcd.sh", &args, &[]));
    let dir = TempDir::new(arch.name);
    let bin_dir = dir.join("bin");
    emulated_bin_dir(arch, &cache, &bin_dir);

    let started = Instant::now();
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(CHILD_ARCH, arch.name)
        .env(CHILD_MIGRATOR, binary)
        .env("ETCD_BIN_DIR", &bin_dir)
        .env(BIN_DIR_ARCH, arch.name)
        // For the fixtures' own etcds: 32-bit arm's etcd 3.5 refuses to start without it (Go's name for
        // each architecture here is Kubernetes').
        .env("ETCD_UNSUPPORTED_ARCH", arch.name)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && said.contains("1 passed"), "the emulated run failed:\n{said}");
    eprintln!("the {} migrations under qemu: {} s in all", arch.name, started.elapsed().as_secs());
}

#[test]
fn the_arm64_binary_converts_etcd2_data_to_3_5_30_and_rolls_it_back_with_arm64_etcd_under_qemu() {
    proof(
        &ARM64,
        "the_arm64_binary_converts_etcd2_data_to_3_5_30_and_rolls_it_back_with_arm64_etcd_under_qemu",
    );
}

#[test]
fn the_arm_binary_converts_etcd2_data_to_3_5_30_and_rolls_it_back_with_arm_etcd_under_qemu() {
    proof(&ARM, "the_arm_binary_converts_etcd2_data_to_3_5_30_and_rolls_it_back_with_arm_etcd_under_qemu");
}

#[test]
fn the_ppc64le_binary_converts_etcd2_data_to_3_5_30_and_rolls_it_back_with_ppc64le_etcd_under_qemu() {
    proof(
        &PPC64LE,
        "the_ppc64le_binary_converts_etcd2_data_to_3_5_30_and_rolls_it_back_with_ppc64le_etcd_under_qemu",
    );
}

#[test]
fn the_s390x_binary_reads_big_endian_data_converts_etcd2_to_3_5_30_and_rolls_it_back_with_s390x_etcd() {
    proof(
        &S390X,
        "the_s390x_binary_reads_big_endian_data_converts_etcd2_to_3_5_30_and_rolls_it_back_with_s390x_etcd",
    );
}

/// The migrator of `arch` under qemu, with the options every test gives the migrator ([`Migrator::new`]).
fn migrate(arch: &Arch, binary: &Path, data: &Path, peer: &str, args: &[&str]) -> Output {
    let peer_port = peer.rsplit(':').next().unwrap();
    let started = Instant::now();
    let output = Command::new(format!("qemu-{}-static", arch.qemu))
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
        // The migrator sets it for its hidden etcds itself.
        .env_remove("ETCD_UNSUPPORTED_ARCH")
        .output()
        .unwrap();
    eprintln!(
        "--- {} etcd-migrate {args:?}: {} s\n{}",
        arch.name,
        started.elapsed().as_secs(),
        stderr(&output)
    );
    output
}

/// In the child: the bin dir holds only the releases of `arch` (under qemu).
fn emulated_migrations(arch: &Arch, binary: &Path) {
    let dir = TempDir::new(&format!("{}-run", arch.name));
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());

    // etcd2 data written through the v2 API of that architecture's etcd: key → (value, TTL). Few keys:
    // every etcd here is emulated.
    let mut keys: BTreeMap<String, (String, Option<i64>)> = BTreeMap::new();
    for i in 0..10 {
        keys.insert(format!("/registry/pods/ns{}/pod-{i}", i % 2), (format!("{{\"pod\":{i}}}"), None));
    }
    for i in 0..4 {
        keys.insert(format!("/registry/events/ns/event-{i}"), (format!("{{\"event\":{i}}}"), Some(3600)));
    }
    keys.insert("/registry/masterleases/10.0.0.1".into(), ("lease".into(), Some(600)));
    keys.insert("/registry/configmaps/kube-system/ünïcødé".into(), ("värde ✓".into(), None));
    keys.insert("/registry/big/blob".into(), ("y".repeat(256 << 10), None));
    keys.insert("/registry/empty".into(), (String::new(), None));
    let etcd = TestEtcd::start_with(arch.etcd2_writer, &data, "m", &peer, &[]);
    let client = V2Client::new(etcd.endpoint());
    block_on(async {
        for (key, (value, ttl)) in &keys {
            client.set(key, value, *ttl).await.unwrap();
        }
    });
    etcd.stop();
    fs::write(data.join("version.txt"), format!("{}/etcd2\n", arch.etcd2_writer)).unwrap();

    // Converted (at the writer's minor: 3.3 and 3.4 have `etcdctl migrate`) and taken to 3.5.30.
    let output = migrate(arch, binary, &data, &peer, &["--target-version", "3.5.30", "--migrate-only"]);
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
    // Every write of every key (nothing was deleted): what bbolt's bucket `key` holds, one entry each.
    let writes = etcd.v3_key_values().iter().map(|kv| kv.version).sum();
    etcd.stop();
    if arch.name == S390X.name {
        what_the_migrator_reads_itself(arch, binary, &data, writes);
    }

    // One rollback: 3.5.30 → 3.4.23 (snapshot restore), keys, values and leases kept.
    let output = migrate(arch, binary, &data, &peer, &["--target-version", "3.4.23", "--migrate-only"]);
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

/// On data s390x's etcd 3.5.30 wrote (big-endian bbolt, the little-endian WAL): the s390x migrator's
/// `status` reads the db's cluster version and counts its revisions, one per write etcd served, and the
/// WAL reader finds every record, 3.5's v2 requests among them.
fn what_the_migrator_reads_itself(arch: &Arch, binary: &Path, data: &Path, writes: i64) {
    let db = fs::read(data.join("member/snap/db")).unwrap();
    assert_eq!(db[16..20], 0xED0C_DAEDu32.to_be_bytes(), "s390x's bbolt wrote a big-endian db");
    let output = Command::new(format!("qemu-{}-static", arch.qemu))
        .arg(binary)
        .args(["status", "--output", "json", "--data-dir"])
        .arg(data)
        .arg("--bin-dir")
        .arg(etcd_bin_dir())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["version_file"], "3.5.30/etcd3");
    assert_eq!(status["db_cluster_version"], "3.5");
    assert_eq!(status["v3_revisions"].as_i64(), Some(writes), "{status}");

    let replay = wal::replay(&data.join("member")).unwrap();
    assert!(!replay.v2_requests.is_empty(), "3.5 published its attributes through v2: {replay:?}");
    assert!(replay.entries > replay.v2_requests.len(), "the keys are v3 requests: {replay:?}");
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
fn one_oci_index_lists_all_five_platforms_each_with_binaries_of_its_architecture() {
    if std::env::var_os(CHILD_MIGRATOR).is_some() {
        return;
    }
    let mut binaries = vec![format!("amd64={}", env!("CARGO_BIN_EXE_etcd-migrate"))];
    for arch in ARCHES {
        let Some(binary) = cross_binary(arch) else { return };
        binaries.push(format!("{}={}", arch.name, binary.display()));
    }
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
    // What Debian has for all five.
    let versions = "3.4.23 3.5.30";
    let mut args = vec!["--source", "packages", "--tag", "etcd-migrate:index-test"];
    for binary in &binaries {
        args.extend(["--binary", binary]);
    }
    args.push(out.to_str().unwrap());
    let archive = last_line(&script("build-index.sh", &args, &[("BUNDLED_ETCD_VERSIONS", versions)]));
    eprintln!("staged and indexed five architectures in {} s", started.elapsed().as_secs());

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
            let platform = &m["platform"];
            let variant = platform["variant"].as_str().map(|v| format!("/{v}")).unwrap_or_default();
            format!(
                "{}/{}{variant}",
                platform["os"].as_str().unwrap(),
                platform["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/ppc64le", "linux/s390x"]);

    for manifest in manifests {
        let arch = manifest["platform"]["architecture"].as_str().unwrap();
        let machine = if arch == "amd64" { X86_64 } else { arch_named(arch).machine };
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
    for arch in ["amd64", "arm64", "arm", "ppc64le", "s390x"] {
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
