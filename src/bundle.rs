//! The bundled etcd releases: the bin dir, which releases count as bundled, and the one definition of a
//! release being present (every tool it ships, as an executable file named `<tool>-X.Y.Z`).
//!
//! Everything that asks whether a release is here asks this module: preflight and the multi-call roles
//! in the binary, the tests and the benchmark through the library, and `image/fetch-etcd.sh`,
//! `tests/run.sh` and `rehearse.sh` through `etcd-migrate releases`, which an operator can run on an
//! image too.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::release::{self, Capabilities, Tool};
use crate::version::{Minor, Version};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot read bin dir {dir}: {message}")]
pub struct BundleError {
    pub dir: PathBuf,
    pub message: String,
}

/// The bin dir and the releases bundled in it, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    dir: PathBuf,
    versions: Vec<Version>,
}

impl Bundle {
    /// The releases `listed` (`BUNDLED_VERSIONS`) when given, else every `etcd-X.Y.Z` in `dir`. A listed
    /// or scanned release still needs its tools (preflight checks those a plan uses).
    pub fn resolve(dir: &Path, listed: Option<Vec<Version>>) -> Result<Bundle, BundleError> {
        let mut versions = match listed {
            Some(listed) => listed,
            None => scan(dir)?,
        };
        versions.sort();
        versions.dedup();
        Ok(Bundle { dir: dir.to_path_buf(), versions })
    }

    /// `dir` with no release counted as bundled: for asking which releases are present.
    pub fn in_dir(dir: &Path) -> Bundle {
        Bundle { dir: dir.to_path_buf(), versions: Vec::new() }
    }

    /// Every `etcd-X.Y.Z` in `dir`.
    pub fn scan(dir: &Path) -> Result<Bundle, BundleError> {
        Bundle::resolve(dir, None)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bundled releases, oldest first.
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    pub fn newest(&self) -> Option<Version> {
        self.versions.last().copied()
    }

    /// The newest bundled patch of `minor`: the release that minor is left from.
    pub fn newest_patch(&self, minor: Minor) -> Option<Version> {
        self.versions.iter().copied().filter(|v| v.minor() == minor).max()
    }

    /// The newest present patch of the oldest minor with a present release that `can` do something
    /// (asked of `release::capabilities`): the nearest release to an older one that can.
    pub fn nearest_that(&self, can: impl Fn(Capabilities) -> bool) -> Option<Version> {
        let able = |v: Version| can(release::capabilities(v)) && self.is_present(v);
        let oldest = self.versions.iter().copied().find(|&v| able(v))?;
        self.versions.iter().rev().copied().find(|&v| v.minor() == oldest.minor() && able(v))
    }

    /// `<bin-dir>/<tool>-X.Y.Z`, as the image bundles each release's tools.
    pub fn binary(&self, tool: Tool, version: Version) -> PathBuf {
        self.dir.join(format!("{}-{version}", tool.name()))
    }

    pub fn etcd(&self, version: Version) -> PathBuf {
        self.binary(Tool::Etcd, version)
    }

    pub fn etcdctl(&self, version: Version) -> PathBuf {
        self.binary(Tool::Etcdctl, version)
    }

    /// Whether `binary` is an executable file (following links, as an exec would).
    pub fn is_executable(binary: &Path) -> bool {
        std::fs::metadata(binary).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }

    /// The tools release `version` ships that the bin dir lacks: none when the release is present.
    pub fn missing_tools(&self, version: Version) -> Vec<Tool> {
        release::tools(version)
            .iter()
            .copied()
            .filter(|&tool| !Bundle::is_executable(&self.binary(tool, version)))
            .collect()
    }

    /// A release is present when the bin dir has every tool it ships.
    pub fn is_present(&self, version: Version) -> bool {
        self.missing_tools(version).is_empty()
    }
}

/// Every `etcd-X.Y.Z` in `dir`, oldest first.
fn scan(dir: &Path) -> Result<Vec<Version>, BundleError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| BundleError { dir: dir.to_path_buf(), message: e.to_string() })?;
    let prefix = format!("{}-", Tool::Etcd.name());
    Ok(entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().to_str()?.strip_prefix(&prefix)?.parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn bin_dir(files: &[(&str, u32)]) -> tempfile::TempDir {
        let temp = tempfile::tempdir().unwrap();
        for &(name, mode) in files {
            let path = temp.path().join(name);
            fs::write(&path, "").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        temp
    }

    const V3_4: Version = Version::new(3, 4, 23);
    const V3_5: Version = Version::new(3, 5, 16);

    #[test]
    fn the_bundled_releases_are_the_etcd_binaries_oldest_first() {
        let temp = bin_dir(&[("etcd-3.5.16", 0o755), ("etcdctl-3.3.25", 0o755), ("etcd-3.4.23", 0o755)]);
        let bundle = Bundle::scan(temp.path()).unwrap();
        assert_eq!(bundle.versions(), [V3_4, V3_5]);
        assert_eq!(bundle.newest(), Some(V3_5));
        assert_eq!(bundle.newest_patch(V3_4.minor()), Some(V3_4));
        let missing = Bundle::scan(&temp.path().join("missing")).unwrap_err();
        assert!(missing.to_string().starts_with("cannot read bin dir "), "{missing}");
    }

    #[test]
    fn listed_releases_replace_the_scan() {
        let temp = bin_dir(&[("etcd-3.4.23", 0o755)]);
        let bundle = Bundle::resolve(temp.path(), Some(vec![V3_5, V3_4, V3_5])).unwrap();
        assert_eq!(bundle.versions(), [V3_4, V3_5]);
    }

    #[test]
    fn a_release_is_present_with_every_tool_it_ships_executable() {
        let temp = bin_dir(&[
            ("etcd-3.4.23", 0o755),
            ("etcdctl-3.4.23", 0o755),
            ("etcd-3.5.16", 0o755),
            ("etcdctl-3.5.16", 0o755),
            ("etcdutl-3.5.16", 0o644),
        ]);
        let bundle = Bundle::scan(temp.path()).unwrap();
        assert!(bundle.is_present(V3_4), "3.4 ships no etcdutl");
        assert_eq!(bundle.missing_tools(V3_5), [Tool::Etcdutl], "not executable");
        assert_eq!(bundle.missing_tools(Version::new(3, 3, 25)), [Tool::Etcd, Tool::Etcdctl]);
    }
}
