//! The subcommands behind `veilfs`, one file each. `main.rs` only parses and dispatches.

pub mod account;
pub mod drive;
pub mod files;
pub mod format;
pub mod links;
pub mod mount;
pub mod progress;
pub mod resume;
pub mod serve;
pub mod signup;
pub mod status;
pub mod transfer;

/// A mistake in how a command was called (as opposed to a failure while running it): the
/// process exits with status 2, like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Logs go to stderr, quiet unless `RUST_LOG` asks for more (e.g. `RUST_LOG=veilfs=debug`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A second initialisation (tests calling twice) is harmless; ignore it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
