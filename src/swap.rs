//! Swapping a rebuilt `member/` into the data dir, atomically and recoverably.
//!
//! Rebuilding steps (downgrade, rollback) build the new member in a work dir beside the live one and only
//! then swap: `renameat2(RENAME_EXCHANGE)` exchanges the two directories in one atomic operation, so
//! `member/` is never missing. Where the file system lacks it, two renames are used, and the inode of the
//! new member (recorded before the swap) tells a later run how far they got. The old defect this avoids:
//! a crash between moving the data aside and moving the new data in left an empty data dir that the next
//! run took for a fresh one.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::data_dir::member_dir;
use crate::durable::sync_dir;

/// Exchanges `<data_dir>/member` with `<work>/member`; afterwards the old member is at `<work>/member`.
pub fn swap_member(data_dir: &Path, work: &Path) -> io::Result<()> {
    let live = member_dir(data_dir);
    let rebuilt = work.join("member");
    match exchange(&live, &rebuilt) {
        Ok(()) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
            fs::rename(&live, work.join("old-member"))?;
            fs::rename(&rebuilt, &live)?;
            fs::rename(work.join("old-member"), &rebuilt)?;
        }
        Err(e) => return Err(e),
    }
    sync_dir(data_dir)?;
    sync_dir(work)
}

/// Whether the member recorded as `rebuilt_inode` is the live one; finishes a swap that a crash cut
/// between its two renames.
pub fn swapped_in(data_dir: &Path, work: &Path, rebuilt_inode: u64) -> io::Result<bool> {
    let live = member_dir(data_dir);
    match fs::metadata(&live) {
        Ok(meta) => Ok(meta.ino() == rebuilt_inode),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let rebuilt = work.join("member");
            if fs::metadata(&rebuilt)?.ino() != rebuilt_inode {
                return Err(io::Error::other(format!(
                    "{} is missing and no rebuilt member waits",
                    live.display()
                )));
            }
            fs::rename(&rebuilt, &live)?;
            fs::rename(work.join("old-member"), &rebuilt)?;
            sync_dir(data_dir)?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

pub fn inode(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}

fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchanges_members_and_recognises_the_rebuilt_one() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        let (data, work) = (root.join("data"), root.join("work"));
        fs::create_dir_all(data.join("member")).unwrap();
        fs::create_dir_all(work.join("member")).unwrap();
        fs::write(data.join("member/which"), "old").unwrap();
        fs::write(work.join("member/which"), "new").unwrap();
        let rebuilt = inode(&work.join("member")).unwrap();
        assert!(!swapped_in(&data, &work, rebuilt).unwrap());
        swap_member(&data, &work).unwrap();
        assert_eq!(fs::read_to_string(data.join("member/which")).unwrap(), "new");
        assert_eq!(fs::read_to_string(work.join("member/which")).unwrap(), "old");
        assert!(swapped_in(&data, &work, rebuilt).unwrap());
    }

    #[test]
    fn finishes_a_two_rename_swap_cut_in_the_middle() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        let (data, work) = (root.join("data"), root.join("work"));
        fs::create_dir_all(&data).unwrap();
        fs::create_dir_all(work.join("member")).unwrap();
        fs::create_dir_all(work.join("old-member")).unwrap();
        fs::write(work.join("member/which"), "new").unwrap();
        let rebuilt = inode(&work.join("member")).unwrap();
        assert!(swapped_in(&data, &work, rebuilt).unwrap());
        assert_eq!(fs::read_to_string(data.join("member/which")).unwrap(), "new");
        assert!(work.join("member").is_dir());
    }
}
