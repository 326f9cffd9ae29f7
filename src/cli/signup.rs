//! `veilfs signup --server URL --email E [--password-file F] [--backend filen]`: creates a MEGA
//! v2 account (or, with `--backend filen`, a Filen auth-v2 account via `filen::signup`) the
//! way MEGA's own clients do (reference §7.1) and finishes it with an RSA key pair, so any
//! client, megajs included, can log in right away.
//!
//! The protocol lives in `mega::signup`; this file reads the arguments and the password.

use anyhow::{Context as _, anyhow, ensure};
use std::path::PathBuf;
use zeroize::Zeroizing;

use crate::mega::signup::create_account;

#[derive(clap::Args, Debug)]
pub struct SignupArgs {
    /// The server's URL, e.g. http://127.0.0.1:8787/
    #[arg(long, value_name = "URL")]
    pub server: String,
    #[arg(long)]
    pub email: String,
    /// File holding the password (its first line). Without it, VEILFS_PASSWORD is used.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Account type to create: mega or filen.
    #[arg(long, default_value = "mega")]
    pub backend: String,
    /// Display name; defaults to the part of the e-mail before '@'.
    #[arg(long)]
    pub name: Option<String>,
}

/// Reads the password from `file` (first line, without its line ending) or `VEILFS_PASSWORD`.
pub fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<Zeroizing<String>> {
    let password = match file {
        Some(path) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading password file {}", path.display()))?,
            );
            Zeroizing::new(text.lines().next().unwrap_or("").to_string())
        }
        None => Zeroizing::new(
            std::env::var("VEILFS_PASSWORD")
                .map_err(|_| anyhow!("no password: give --password-file or set VEILFS_PASSWORD"))?,
        ),
    };
    ensure!(!password.is_empty(), "the password is empty");
    Ok(password)
}

pub async fn run(args: SignupArgs) -> anyhow::Result<()> {
    let password = read_password(args.password_file.as_deref())?;
    match args.backend.as_str() {
        "mega" => {}
        "filen" => {
            crate::filen::signup::register(&args.server, &args.email, &password)
                .await
                .context("registering the Filen account")?;
            println!("created Filen account {}", args.email.to_lowercase());
            return Ok(());
        }
        other => anyhow::bail!("unknown backend {other:?} (mega or filen)"),
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| args.email.split('@').next().unwrap_or("").to_string());
    let user = create_account(&args.server, &args.email, &password, &name).await?;
    println!(
        "created account {} (user handle {user})",
        args.email.to_lowercase()
    );
    Ok(())
}
