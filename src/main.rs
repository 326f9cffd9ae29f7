//! The `veilfs` command line. Clap definitions only; each subcommand lives in `veilfs::cli`.
//!
//! Exit status: 0 on success, 1 when a command fails, 2 on a usage error (clap's own, or
//! [`cli::UsageError`]).

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
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
    /// What a running mount is doing: queued uploads, cache, last sync, errors.
    Status(cli::status::StatusArgs),
    /// Log in and save the session that mounts and the commands below use.
    Login(cli::account::LoginArgs),
    /// End the saved session on the server and forget it.
    Logout {
        #[command(flatten)]
        account: cli::account::AccountArgs,
    },
    /// List the account's sessions, or end some of them.
    Sessions {
        #[command(flatten)]
        account: cli::account::AccountArgs,
        #[command(flatten)]
        args: cli::account::SessionsArgs,
    },
    /// List a remote folder.
    Ls {
        #[command(flatten)]
        account: cli::account::AccountArgs,
        #[command(flatten)]
        args: cli::files::LsArgs,
    },
    /// Download remote files or folders, or what a public link points at.
    Get {
        #[command(flatten)]
        account: cli::account::AccountArgs,
        #[command(flatten)]
        args: cli::transfer::GetArgs,
    },
    /// Upload local files or folders (an interrupted upload resumes when run again).
    Put {
        #[command(flatten)]
        account: cli::account::AccountArgs,
        #[command(flatten)]
        args: cli::transfer::PutArgs,
    },
    /// Create remote folders.
    Mkdir {
        #[command(flatten)]
        account: cli::account::AccountArgs,
        #[command(flatten)]
        args: cli::files::MkdirArgs,
    },
    /// Move or rename a remote file or folder.
    Mv {
        #[command(flatten)]
        account: cli::account::AccountArgs,
        #[command(flatten)]
        args: cli::files::MvArgs,
    },
    /// Delete remote files or folders.
    Rm {
        #[command(flatten)]
        account: cli::account::AccountArgs,
        #[command(flatten)]
        args: cli::files::RmArgs,
    },
    /// Export a remote file or folder and print its public link.
    Link {
        #[command(flatten)]
        account: cli::account::AccountArgs,
        #[command(flatten)]
        args: cli::links::LinkArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `veilfs man | man -l -`.
    Man {
        /// Write veilfs.1 and one page per subcommand (veilfs-ls.1, …) into this folder
        /// instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("veilfs: {error:#}");
            if error.downcast_ref::<cli::UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(args: Cli) -> anyhow::Result<()> {
    // The mount runs its own runtime around a blocking FUSE session.
    let args = match args.command {
        Command::Mount(a) => return cli::mount::run(a),
        Command::Unmount(a) => return cli::mount::unmount(a),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "veilfs", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man { out_dir: None } => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(());
        }
        Command::Man { out_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir)?;
            return Ok(());
        }
        other => other,
    };
    cli::init_logging();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match args {
            Command::Serve(a) => cli::serve::run(a).await,
            Command::Signup(a) => cli::signup::run(a).await,
            Command::Status(a) => cli::status::run(a).await,
            Command::Login(a) => cli::account::login(a).await,
            Command::Logout { account } => cli::account::logout(account).await,
            Command::Sessions { account, args } => cli::account::sessions(account, args).await,
            Command::Ls { account, args } => cli::files::ls(account, args).await,
            Command::Get { account, args } => cli::transfer::get(account, args).await,
            Command::Put { account, args } => cli::transfer::put(account, args).await,
            Command::Mkdir { account, args } => cli::files::mkdir(account, args).await,
            Command::Mv { account, args } => cli::files::mv(account, args).await,
            Command::Rm { account, args } => cli::files::rm(account, args).await,
            Command::Link { account, args } => cli::links::link(account, args).await,
            Command::Mount(_)
            | Command::Unmount(_)
            | Command::Completions { .. }
            | Command::Man { .. } => unreachable!("dispatched above"),
        }
    })
}
