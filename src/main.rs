//! The `veilfs` command line. Clap definitions only; each subcommand lives in `veilfs::cli`.

use clap::{Parser, Subcommand};
use veilfs::cli;

/// Mount an end-to-end encrypted cloud drive (MEGA or Filen) as a local folder.
#[derive(Parser)]
#[command(name = "veilfs", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a MEGA-compatible zero-knowledge storage server.
    Serve(cli::serve::ServeArgs),
    /// Create an account on a veilfs server (password from --password-file or VEILFS_PASSWORD).
    Signup(cli::signup::SignupArgs),
    /// Mount a drive (the embedded local server when no --server is given).
    Mount(cli::mount::MountArgs),
    /// Unmount a drive, waiting for its queued uploads.
    Unmount(cli::mount::UnmountArgs),
}

fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    // The mount runs its own runtime around a blocking FUSE session.
    let args = match args.command {
        Command::Mount(a) => return cli::mount::run(a),
        Command::Unmount(a) => return cli::mount::unmount(a),
        other => other,
    };
    cli::init_logging();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match args {
            Command::Serve(a) => cli::serve::run(a).await,
            Command::Signup(a) => cli::signup::run(a).await,
            Command::Mount(_) | Command::Unmount(_) => unreachable!("dispatched above"),
        }
    })
}
