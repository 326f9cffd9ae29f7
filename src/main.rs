//! The `veilfs` command line. Clap definitions only; each subcommand lives in `veilfs::cli`.

use clap::Parser;

/// Mount an end-to-end encrypted cloud drive (MEGA or Filen) as a local folder.
#[derive(Parser)]
#[command(name = "veilfs", version, about)]
struct Cli {}

fn main() {
    Cli::parse();
}
