//! A tmpfs for tests that need a small, fillable file system (disk full).

use std::fs;
use std::path::{Path, PathBuf};

/// A tmpfs mounted on `path` (created if missing); unmounted (lazily) on drop, even when the
/// test fails.
#[derive(Debug)]
pub struct Tmpfs {
    /// The mount point.
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (`1m`, `8m`) on `path`, mode 0755; needs root.
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        assert_eq!(
            nix::unistd::geteuid().as_raw(),
            0,
            "a tmpfs needs root (mount -t tmpfs)"
        );
        fs::create_dir_all(path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0755").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount -t tmpfs -o size={size} {}: {e}", path.display()));
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("warning: cannot unmount {}: {e}", self.path.display());
        }
    }
}
