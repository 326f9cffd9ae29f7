//! veilfs: mount an end-to-end encrypted cloud drive (MEGA or Filen) as a local folder.
//!
//! The layout follows `DESIGN.md`: `crypto` holds pure functions with no I/O; every other
//! module builds on it.

pub mod cache;
pub mod cli;
pub mod content;
pub mod crypto;
pub mod direct_io;
pub mod filen;
pub mod fs;
pub mod mega;
pub mod remote;
pub mod retry;
pub mod server;
pub mod tree;
pub mod util;
pub mod vfs;
pub mod writeback;
