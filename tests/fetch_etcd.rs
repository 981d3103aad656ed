//! `image/fetch-etcd.sh`, which brings the real etcd releases: what cannot be had is named on one line
//! with how to provide it, and a release mirror's archives are taken only when they match its SHA256SUMS.
//! The mirror here is made of the registry release 3.5.16, packed as etcd's release archives are.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
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

/// Runs `image/NAME` with `args` and `env`, every proxy pointed at a closed port: nothing but a local
/// (`file:`) apt repository can serve it.
fn offline(name: &str, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("image").join(name));
    command.args(args).env("ETCD_MIGRATE", env!("CARGO_BIN_EXE_etcd-migrate")).env_remove("DEBIAN_MIRROR");
    let closed = format!("http://127.0.0.1:{}", free_port());
    for proxy in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
        command.env(proxy, &closed);
    }
    command.envs(env.iter().map(|(key, value)| (key, value)));
    command.output().unwrap()
}

/// The .debs of `packages` (name, version prefix) for amd64, as the scripts keep what they download
/// (`image/debian-download.sh`'s DEBS_CACHE), downloaded there from bookworm through the machine's
/// archive if the cache does not hold them yet.
fn downloaded_debs(packages: &[(&str, &str)]) -> Vec<PathBuf> {
    let cache = std::env::var_os("DEBS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap()).join(".cache/etcd-migrate/debs"));
    let find = |(name, version): &(&str, &str)| {
        fs::read_dir(&cache).ok()?.map(|entry| entry.unwrap().path()).find(|path| {
            let file = path.file_name().unwrap().to_string_lossy();
            file.starts_with(&format!("{name}_{version}")) && file.ends_with("_amd64.deb")
        })
    };
    if !packages.iter().all(|package| find(package).is_some()) {
        let dir = TempDir::new("debs");
        let wanted: Vec<String> =
            packages.iter().map(|(name, version)| format!("{name}={version}*")).collect();
        let status = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("image/debian-download.sh"))
            .args(["bookworm", "amd64"])
            .arg(dir.path())
            .args(&wanted)
            .env("DEBS_CACHE", &cache)
            .status()
            .unwrap();
        assert!(status.success(), "the machine's Debian archive serves {wanted:?}");
    }
    packages.iter().map(|package| find(package).expect("downloaded")).collect()
}

/// The one file of the .deb at `deb` at `path`, unpacked under `dir`.
fn file_of_deb(deb: &Path, path: &str, dir: &Path) -> Vec<u8> {
    assert!(Command::new("dpkg").arg("-x").arg(deb).arg(dir).status().unwrap().success());
    fs::read(dir.join(path)).unwrap()
}

#[test]
fn the_scripts_take_debian_from_a_local_apt_repository_named_by_debian_mirror_or_the_apt_sources() {
    let debs =
        downloaded_debs(&[("etcd-server", "3.4.23"), ("etcd-client", "3.4.23"), ("busybox-static", "")]);
    // A local apt repository of those packages: bookworm's amd64 index, made by dpkg-scanpackages.
    let dir = TempDir::new("local-apt");
    let repo = dir.join("repo");
    fs::create_dir_all(repo.join("pool")).unwrap();
    for deb in &debs {
        fs::copy(deb, repo.join("pool").join(deb.file_name().unwrap())).unwrap();
    }
    let index =
        Command::new("dpkg-scanpackages").args(["--multiversion", "pool"]).current_dir(&repo).output();
    let index = index.expect("dpkg-scanpackages (dpkg-dev) is installed");
    assert!(index.status.success(), "{}", String::from_utf8_lossy(&index.stderr));
    let packages = repo.join("dists/bookworm/main/binary-amd64");
    fs::create_dir_all(&packages).unwrap();
    fs::write(packages.join("Packages"), &index.stdout).unwrap();
    let uri = format!("file:{}", repo.display());
    let path = |name: &str| dir.join(name).display().to_string();

    // DEBIAN_MIRROR names it (unsigned: trusted): fetch-etcd.sh takes etcd 3.4.23 from it, offline.
    let output = offline(
        "fetch-etcd.sh",
        &["3.4.23"],
        &[
            ("ETCD_CACHE", path("cache")),
            ("DEBS_CACHE", path("debs-cache")),
            ("DEBIAN_MIRROR", format!("[trusted=yes] {uri}")),
        ],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let unpacked = dir.join("unpacked");
    for tool in ["etcd", "etcdctl"] {
        let deb = if tool == "etcd" { &debs[0] } else { &debs[1] };
        assert_eq!(
            fs::read(dir.join("cache").join(format!("{tool}-3.4.23"))).unwrap(),
            file_of_deb(deb, &format!("usr/bin/{tool}"), &unpacked),
            "{tool} 3.4.23 is the local repository's"
        );
    }

    // No DEBIAN_MIRROR: the machine's apt sources (here APT_CONFIG's), a one-line list whose only entry
    // is not Debian's and a deb822 .sources naming the local repository; stage.sh takes busybox from it.
    let parts = dir.join("sources.list.d");
    fs::create_dir_all(&parts).unwrap();
    let closed = format!("http://127.0.0.1:{}", free_port());
    fs::write(dir.join("sources.list"), format!("deb [arch=amd64] {closed}/nodesource nodistro main\n"))
        .unwrap();
    fs::write(
        parts.join("debian.sources"),
        format!("# the archive\nTypes: deb\nURIs: {uri}\nSuites: bookworm bookworm-updates\nComponents: main\nTrusted: yes\n"),
    )
    .unwrap();
    fs::write(
        dir.join("apt.conf"),
        format!(
            "Dir::Etc::sourcelist \"{}\";\nDir::Etc::sourceparts \"{}\";\n",
            path("sources.list"),
            parts.display()
        ),
    )
    .unwrap();
    let out = dir.join("staged");
    let output = offline(
        "stage.sh",
        &["--source", "packages", "--binary", env!("CARGO_BIN_EXE_etcd-migrate"), out.to_str().unwrap()],
        &[
            ("APT_CONFIG", path("apt.conf")),
            ("BUNDLED_ETCD_VERSIONS", "3.4.23".into()),
            ("ETCD_CACHE", path("cache")),
            ("BUSYBOX_CACHE", path("busybox")),
            ("DEBS_CACHE", path("debs-cache")),
        ],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        fs::read(out.join("rootfs/bin/sh")).unwrap(),
        file_of_deb(&debs[2], "bin/busybox", &unpacked),
        "/bin/sh is the local repository's busybox"
    );
    let kept: Vec<String> = fs::read_dir(dir.join("debs-cache"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 3, "every package downloaded is kept: {kept:?}");

    // Neither names a Debian archive: one line saying so and what to set.
    fs::remove_file(parts.join("debian.sources")).unwrap();
    let output = offline("debian-archive.py", &[], &[("APT_CONFIG", path("apt.conf"))]);
    assert_eq!(output.status.code(), Some(1));
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.contains("no Debian archive among the apt sources") && said.contains("DEBIAN_MIRROR"),
        "{said}"
    );
}
