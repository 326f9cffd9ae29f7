//! Every filesystem error's errno, in one place.

use fuser::Errno;

use crate::remote::RemoteError;
use crate::vfs::VfsError;

pub fn errno_of(e: &VfsError) -> Errno {
    match e {
        VfsError::NotFound => Errno::ENOENT,
        VfsError::Exists => Errno::EEXIST,
        VfsError::NotDir => Errno::ENOTDIR,
        VfsError::IsDir => Errno::EISDIR,
        VfsError::NotEmpty => Errno::ENOTEMPTY,
        VfsError::Invalid(_) => Errno::EINVAL,
        VfsError::ReadOnly => Errno::EROFS,
        VfsError::NotPermitted(_) => Errno::EPERM,
        VfsError::Access => Errno::EACCES,
        VfsError::NotSupported(_) => Errno::ENOTSUP,
        VfsError::Stale => Errno::ESTALE,
        VfsError::BadHandle => Errno::EBADF,
        VfsError::Integrity => Errno::EIO,
        VfsError::Remote(r) => match r {
            RemoteError::NotFound => Errno::ENOENT,
            RemoteError::OverQuota => Errno::EDQUOT,
            RemoteError::Access | RemoteError::NoKey => Errno::EACCES,
            RemoteError::Circular => Errno::EINVAL,
            RemoteError::Io(io) => io_errno(io),
            RemoteError::Integrity(_)
            | RemoteError::Unavailable(_)
            | RemoteError::Reload
            | RemoteError::Other(_) => Errno::EIO,
        },
        VfsError::Writeback(w) => w.io_error().map_or(Errno::EIO, io_errno),
        VfsError::Tree(_) => Errno::EIO,
        VfsError::Io(io) => io_errno(io),
    }
}

/// Local I/O errors keep their errno (ENOSPC for a full staging disk, EDQUOT …).
fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_i32)
}
