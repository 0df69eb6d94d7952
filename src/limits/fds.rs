//! The process's open-files limit. Every connection, pending or streaming,
//! holds a descriptor, and many systems start services with a soft limit of
//! 1,024 under a far higher hard one; Herald raises the soft limit to the
//! hard one at start so the connection caps, not the descriptor table, are
//! what bound it.

use std::io;

use rlimit::Resource;

/// `RLIMIT_NOFILE` before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit the process started with.
    pub soft_before: u64,
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the ceiling for the soft one).
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard limit (on macOS, to the
/// kernel's per-process maximum when that is lower).
pub fn raise_open_files_limit() -> io::Result<OpenFilesLimit> {
    let (soft_before, _) = Resource::NOFILE.get()?;
    rlimit::increase_nofile_limit(u64::MAX)?;
    let (soft, hard) = Resource::NOFILE.get()?;
    Ok(OpenFilesLimit {
        soft_before,
        soft,
        hard,
    })
}
