//! Which mount a path lives on, from `/proc/self/mountinfo`: a pod's volume is a mount of its own, and
//! whatever is not on it lives in the container's writable layer, which dies with the container.

use std::fs;
use std::path::{Path, PathBuf};

/// Whether `a` and `b` are on the same mount. Paths that do not exist yet count by their nearest
/// existing ancestor. When the mount table cannot be read, they count as the same (as before mounts
/// were considered).
pub fn same_mount(a: &Path, b: &Path) -> bool {
    let Ok(table) = fs::read_to_string("/proc/self/mountinfo") else { return true };
    let resolved = |path: &Path| path.ancestors().find_map(|p| p.canonicalize().ok());
    match (resolved(a).and_then(|a| mount_of(&table, &a)), resolved(b).and_then(|b| mount_of(&table, &b))) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// The id of the mount holding the canonical `path`: the deepest mount point above it, the last one
/// mounted when several are stacked on the same point.
fn mount_of(table: &str, path: &Path) -> Option<String> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            Some((fields.first()?.to_string(), PathBuf::from(unescape(fields.get(4)?))))
        })
        .filter(|(_, point)| path.starts_with(point))
        .max_by_key(|(_, point)| point.components().count())
        .map(|(id, _)| id)
}

/// mountinfo writes space, tab, newline and backslash in a mount point as `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\');
        match escape.and_then(|octal| u8::from_str_radix(std::str::from_utf8(octal).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
21 1 0:19 / / rw - overlay overlay rw
22 21 8:1 /var/lib/etcd /var/lib/etcd rw - ext4 /dev/sda1 rw
23 21 8:1 /srv /my\\040data rw - ext4 /dev/sda1 rw
24 22 0:30 / /var/lib/etcd rw - tmpfs tmpfs rw
";

    #[test]
    fn the_deepest_and_latest_mount_point_holds_a_path() {
        assert_eq!(mount_of(TABLE, Path::new("/")).as_deref(), Some("21"));
        assert_eq!(mount_of(TABLE, Path::new("/var/lib")).as_deref(), Some("21"));
        assert_eq!(mount_of(TABLE, Path::new("/var/lib/etcd/member")).as_deref(), Some("24"));
        assert_eq!(mount_of(TABLE, Path::new("/my data/x")).as_deref(), Some("23"));
        assert_eq!(mount_of(TABLE, Path::new("/my")).as_deref(), Some("21"));
        assert_eq!(unescape("/my\\040data"), "/my data");
        assert_eq!(
            unescape("/a\\\\b\\0"),
            "/a\\\\b\\0",
            "a backslash not followed by three octal digits stays"
        );
    }

    #[test]
    fn real_mounts_are_told_apart() {
        assert!(!same_mount(Path::new("/proc/self"), Path::new("/")), "procfs is its own mount");
        let dir = tempfile::tempdir().unwrap();
        assert!(same_mount(&dir.path().join("not/yet/made"), dir.path()), "by the nearest existing ancestor");
    }
}
