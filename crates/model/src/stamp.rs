//! A file's metadata as the watchers compare it: the config and registry poll, the listeners'
//! and the collector's certificates. Comparing it costs a `stat`, never a read.

use std::path::Path;
use std::time::SystemTime;

/// One file's metadata. `metadata` follows symlinks, so a Kubernetes ConfigMap or Secret
/// update (an atomic swap of the `..data` link) shows as a new inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    ctime: (i64, i64),
    inode: (u64, u64),
    /// A directory (a registry split into files).
    pub dir: bool,
}

impl FileStamp {
    /// The stamp of this metadata.
    pub fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            len: m.len(),
            modified: m.modified().ok(),
            ctime: (m.ctime(), m.ctime_nsec()),
            inode: (m.dev(), m.ino()),
            dir: m.is_dir(),
        }
    }

    /// The stamp of the file at `path` now (`None`: it cannot be stat'ed).
    pub fn read(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }
}
