//! What a filesystem operation can fail with. `fs/errno.rs` maps each to the errno userspace
//! expects, in one place.

use thiserror::Error;

use crate::remote::RemoteError;
use crate::tree::TreeError;
use crate::writeback::WritebackError;

#[derive(Debug, Error)]
pub enum VfsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("read-only mount")]
    ReadOnly,
    /// The operation is refused by design (hard links, device nodes, foreign owners).
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    /// The node's content cannot be opened (the account holds no key for it).
    #[error("access denied")]
    Access,
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// The inode was removed between the kernel's lookup and this request, and nothing of it
    /// is kept: the kernel repeats the lookup once (ESTALE), finding what the name holds now.
    #[error("stale file handle")]
    Stale,
    #[error("bad file handle")]
    BadHandle,
    /// Content failed its integrity check: never serve it.
    #[error("integrity check failed")]
    Integrity,
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Writeback(#[from] WritebackError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = VfsError> = std::result::Result<T, E>;
