//! The rule for releases that cannot be had here: a test needing one says `NOT RUN` and returns, and
//! only then. Every test whose releases are in the bin dir runs, under `CI` too; the tests not run are
//! exactly those a release of which is absent, and each names the absent ones.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use etcd_migrate::client::v2::V2Client;
use support::*;

/// A test on a release the registries serve: it starts etcd 3.4.23 and reads back what it wrote.
#[test]
fn guarded_by_a_registry_release() {
    if !releases_present(&["3.4.23"]) {
        return;
    }
    let dir = TempDir::new("guarded-registry");
    let etcd = TestEtcd::start("3.4.23", &dir.join("data"));
    etcd.put("/registry/k", "v");
    assert_eq!(etcd.all_keys(), BTreeMap::from([("/registry/k".to_string(), b"v".to_vec())]));
    println!("ran on etcd 3.4.23");
}

/// A test that also needs a release only a mirror provides: the v2 client writes and reads back the same
/// through etcd 2.2.1's v2 API as through 3.4.23's.
#[test]
fn guarded_by_a_mirror_release() {
    if !releases_present(&["3.4.23", "2.2.1"]) {
        return;
    }
    for version in ["2.2.1", "3.4.23"] {
        let dir = TempDir::new("guarded-mirror");
        let etcd = TestEtcd::start(version, &dir.join("data"));
        let v2 = V2Client::new(etcd.endpoint());
        block_on(v2.set("/registry/k", "v", Some(600))).unwrap();
        let leaves = block_on(v2.leaves("/registry")).unwrap();
        let found: Vec<(&str, &str)> =
            leaves.iter().map(|leaf| (leaf.key.as_str(), leaf.value.as_str())).collect();
        assert_eq!(found, [("/registry/k", "v")], "{version}");
        assert!(leaves[0].ttl.is_some_and(|ttl| ttl > 0 && ttl <= 600), "{version}: {leaves:?}");
    }
    println!("ran on etcd 2.2.1");
}

/// Runs the two guarded tests above in this very test binary, with `CI` set and `bin_dir` as the bin
/// dir; returns what they printed.
fn run_guarded_tests(bin_dir: &Path) -> String {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "guarded_by_a_registry_release", "guarded_by_a_mirror_release", "--nocapture"])
        .env("CI", "true")
        .env("ETCD_BIN_DIR", bin_dir)
        .output()
        .unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{said}");
    assert!(said.contains("2 passed; 0 failed"), "{said}");
    said
}

/// The NOT RUN lines in `said` (run one test at a time, the harness puts `test <name> ... ` before each).
fn not_run_lines(said: &str) -> Vec<&str> {
    said.lines().filter_map(|line| line.find("NOT RUN: ").map(|at| &line[at..])).collect()
}

/// A bin dir holding only the registry releases: links to those of the real one.
fn registry_only_bin_dir(dir: &TempDir) -> std::path::PathBuf {
    let (real, bin) = (etcd_bin_dir(), dir.join("bin"));
    fs::create_dir(&bin).unwrap();
    for entry in fs::read_dir(&real).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if REGISTRY_RELEASES.iter().any(|version| name.ends_with(&format!("-{version}"))) {
            std::os::unix::fs::symlink(real.join(&name), bin.join(&name)).unwrap();
        }
    }
    bin
}

#[test]
fn under_ci_a_test_is_not_run_exactly_when_a_release_it_needs_is_absent() {
    let dir = TempDir::new("not-run");
    let said = run_guarded_tests(&registry_only_bin_dir(&dir));
    assert!(said.contains("ran on etcd 3.4.23"), "the registry test ran: {said}");
    assert!(!said.contains("ran on etcd 2.2.1"), "{said}");
    assert_eq!(
        not_run_lines(&said),
        ["NOT RUN: not_run::guarded_by_a_mirror_release needs etcd 2.2.1 (set ETCD_RELEASE_MIRROR)"],
        "one line, naming the test and only the absent release"
    );

    // Where the real bin dir has that release (a mirror provided it), the same test runs there.
    let absent = not_run_lines(&said)[0].split_once("needs etcd ").unwrap().1.split(' ').next().unwrap();
    if missing_releases(&etcd_bin_dir(), &[absent]).is_empty() {
        let said = run_guarded_tests(&etcd_bin_dir());
        assert!(
            said.contains("ran on etcd 3.4.23") && said.contains(&format!("ran on etcd {absent}")),
            "{said}"
        );
        assert_eq!(not_run_lines(&said), Vec::<&str>::new());
    }
}

#[test]
fn a_release_counts_as_present_only_with_every_tool_it_ships() {
    let dir = TempDir::new("releases");
    let tool = |name: &str, mode: u32| {
        fs::write(dir.join(name), b"").unwrap();
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(mode)).unwrap();
    };
    for name in ["etcd-3.4.23", "etcdctl-3.4.23", "etcd-3.5.16", "etcdctl-3.5.16", "etcdctl-3.3.25"] {
        tool(name, 0o755);
    }
    tool("etcdutl-3.5.16", 0o644);
    assert_eq!(
        missing_releases(dir.path(), &["3.3.25", "3.4.23", "3.5.16", "3.9.0"]),
        ["3.3.25", "3.5.16", "3.9.0"],
        "3.3.25 lacks etcd, 3.5.16 an executable etcdutl, 3.9.0 everything"
    );
    // The scripts ask the same question of the binary (`tests/run.sh`, `image/fetch-etcd.sh`).
    let releases = |versions: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_etcd-migrate"))
            .args(["releases", "--bin-dir"])
            .arg(dir.path())
            .args(versions)
            .output()
            .unwrap()
    };
    let asked = releases(&["3.4.23", "3.5.16"]);
    assert_eq!(asked.status.code(), Some(1), "{asked:?}");
    assert_eq!(
        String::from_utf8_lossy(&asked.stdout),
        "3.4.23 present: etcd etcdctl\n3.5.16 missing: etcdutl\n"
    );
    tool("etcdutl-3.5.16", 0o755);
    assert_eq!(missing_releases(dir.path(), &["3.4.23", "3.5.16"]), Vec::<&str>::new());
    let listed = releases(&[]);
    assert!(listed.status.success(), "{listed:?}");
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "3.4.23 present: etcd etcdctl\n3.5.16 present: etcd etcdctl etcdutl\n",
        "every etcd-X.Y.Z in the bin dir, oldest first"
    );
}

/// `name=(a b c)` in `image/fetch-etcd.sh`.
fn script_array(script: &str, name: &str) -> BTreeSet<String> {
    let line = script.lines().find(|line| line.starts_with(&format!("{name}=("))).expect(name);
    line[name.len() + 2..line.len() - 1].split_whitespace().map(str::to_string).collect()
}

/// The `"X.Y.Z"` literals in `code`.
fn version_literals(code: &str) -> BTreeSet<String> {
    code.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.split('.').count() == 3 && s.split('.').all(|part| part.parse::<u32>().is_ok()))
        .map(str::to_string)
        .collect()
}

/// The top-level functions of a Rust file, each with the attributes and doc comment above it, after
/// what comes before the first (its uses and constants).
fn top_level_functions(source: &str) -> Vec<String> {
    let mut functions = vec![Vec::new()];
    for line in source.lines() {
        if line.starts_with("fn ") || line.starts_with("pub fn ") {
            let previous = functions.last_mut().unwrap();
            let above = previous.iter().rposition(|l: &&str| !(l.starts_with("#[") || l.starts_with("///")));
            let attributes = previous.split_off(above.map_or(0, |i| i + 1));
            functions.push(attributes);
        }
        functions.last_mut().unwrap().push(line);
    }
    functions.into_iter().map(|lines| lines.join("\n")).collect()
}

/// The name of the test `function` defines, if it is one.
fn test_name_of(function: &str) -> Option<&str> {
    let mut lines = function.lines().skip_while(|line| line.starts_with("///"));
    let attributes: Vec<&str> = lines.by_ref().take_while(|line| line.starts_with("#[")).collect();
    attributes.contains(&"#[test]").then_some(())?;
    let signature = function.lines().find(|line| line.starts_with("fn "))?;
    signature.strip_prefix("fn ")?.split('(').next()
}

/// Every test that names a release of the lineage the registries do not serve starts by asking for it,
/// so that where it is absent the test says NOT RUN instead of failing; no other function of the tests
/// names one (it could not say NOT RUN). And the registry releases the tests count on are the ones
/// `image/fetch-etcd.sh` fetches from the registries.
#[test]
fn every_test_asks_first_for_the_releases_the_registries_do_not_serve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = fs::read_to_string(root.join("image/fetch-etcd.sh")).unwrap();
    let (lineage, registry) = (script_array(&script, "LINEAGE"), script_array(&script, "REGISTRY"));
    let expected_registry: BTreeSet<String> = lineage.intersection(&registry).cloned().collect();
    assert_eq!(expected_registry, REGISTRY_RELEASES.iter().map(|v| v.to_string()).collect());
    let mirror_only: BTreeSet<String> = lineage.difference(&registry).cloned().collect();

    let mut guarded = 0;
    for entry in fs::read_dir(root.join("tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let source = fs::read_to_string(&path).unwrap();
        for item in top_level_functions(&source) {
            let named: BTreeSet<String> =
                version_literals(&item).intersection(&mirror_only).cloned().collect();
            let Some(name) = test_name_of(&item) else {
                assert!(named.is_empty(), "{}: a helper names {named:?}:\n{item}", path.display());
                continue;
            };
            if named.is_empty() {
                continue;
            }
            let body = item.split_once(" {\n").unwrap().1.trim_start();
            let asked = body
                .strip_prefix("if !releases_present(&[")
                .and_then(|rest| rest.split_once("])"))
                .map(|(list, _)| version_literals(list))
                .unwrap_or_else(|| panic!("{name} names {named:?} but does not start with releases_present"));
            assert!(named.is_subset(&asked), "{name} names {named:?} but asks only for {asked:?}");
            guarded += 1;
        }
    }
    assert!(guarded >= 10, "the scan found the guarded tests ({guarded})");
}
