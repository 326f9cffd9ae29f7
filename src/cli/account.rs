//! Which account a shell command acts on, and the commands that manage its session:
//! `veilfs login`, `logout` and `sessions`.
//!
//! Sessions are the ones a mount saves (`$XDG_CONFIG_HOME/veilfs/sessions`, one 0600 file per
//! server and e-mail, see `mount.rs`), so `veilfs ls` works against the account a mount uses and
//! `veilfs login` prepares a session the next mount resumes without a password.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::UsageError;
use crate::mega::client::MegaClient;
use crate::mega::session::{Credentials, Session};
use crate::mega::transfer::TransferOptions;
use crate::mega::{ErrorCode, MegaError};
use crate::retry::RetryPolicy;

/// Picks the account. Without options, the only saved session; with several, `--email` (and
/// `--server`) choose.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AccountArgs {
    /// The server of the saved session to use (default: the only one saved).
    #[arg(long, global = true, value_name = "URL", env = "VEILFS_SERVER")]
    pub server: Option<String>,
    /// The account of the saved session to use.
    #[arg(long, global = true, value_name = "EMAIL", env = "VEILFS_EMAIL")]
    pub email: Option<String>,
}

fn sessions_dir() -> PathBuf {
    super::mount::xdg("XDG_CONFIG_HOME", ".config")
        .join("veilfs")
        .join("sessions")
}

/// `http://h:1` and `http://h:1/` name the same server.
fn same_server(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

/// Every saved session with its file.
fn saved_sessions() -> Vec<(PathBuf, Session)> {
    let Ok(entries) = std::fs::read_dir(sessions_dir()) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Session)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| match Session::load(&p) {
            Ok(s) => Some((p, s)),
            Err(error) => {
                tracing::warn!(%error, "ignoring an unreadable session file");
                None
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.1.server, &a.1.email).cmp(&(&b.1.server, &b.1.email)));
    out
}

/// The saved session `args` designate.
fn find_session(args: &AccountArgs) -> anyhow::Result<(PathBuf, Session)> {
    let mut matching: Vec<(PathBuf, Session)> = saved_sessions()
        .into_iter()
        .filter(|(_, s)| {
            args.server
                .as_deref()
                .is_none_or(|u| same_server(u, &s.server))
                && args
                    .email
                    .as_deref()
                    .is_none_or(|e| e.trim().eq_ignore_ascii_case(&s.email))
        })
        .collect();
    match matching.len() {
        0 => Err(UsageError(
            "no saved session for this account: run `veilfs login --server URL --email EMAIL` \
             (or mount it once)"
                .into(),
        )
        .into()),
        1 => Ok(matching.pop().expect("one")),
        _ => {
            let names: Vec<String> = matching
                .iter()
                .map(|(_, s)| format!("  {} on {}", s.email, s.server))
                .collect();
            Err(UsageError(format!(
                "several saved sessions; choose one with --email (and --server):\n{}",
                names.join("\n")
            ))
            .into())
        }
    }
}

/// A client on the designated account's saved session, checked to be still alive.
pub async fn open(args: &AccountArgs) -> anyhow::Result<MegaClient> {
    let (path, session) = find_session(args)?;
    let client = MegaClient::resume(session, RetryPolicy::default(), TransferOptions::default())?;
    match client.quota().await {
        Ok(_) => Ok(client),
        Err(MegaError::Api(ErrorCode::Session)) => bail!(
            "the saved session {} was ended by the server: run `veilfs login` again",
            path.display()
        ),
        Err(e) => Err(e).context("checking the saved session"),
    }
}

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// The server's API URL, e.g. http://127.0.0.1:8787/ or https://g.api.mega.co.nz/
    #[arg(long, value_name = "URL")]
    pub server: String,
    #[arg(long)]
    pub email: String,
    /// File holding the password (first line); VEILFS_PASSWORD is used otherwise.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// A current two-factor code, for accounts with 2FA.
    #[arg(long, value_name = "CODE")]
    pub mfa_code: Option<String>,
}

/// `veilfs login`: logs in and saves the session (0600) where mounts and shell commands find it.
pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let password = super::signup::read_password(args.password_file.as_deref())?;
    let credentials = Credentials {
        email: args.email.clone(),
        password,
        mfa_code: args.mfa_code.clone(),
    };
    let client = match MegaClient::login(
        &args.server,
        &credentials,
        RetryPolicy::default(),
        TransferOptions::default(),
    )
    .await
    {
        Ok(client) => client,
        Err(MegaError::Api(ErrorCode::MfaRequired)) => {
            bail!("this account asks for a two-factor code: add --mfa-code CODE")
        }
        Err(e) => return Err(e).context("logging in"),
    };
    let path = super::mount::session_path(&args.server, &args.email);
    client.session().save(&path)?;
    println!(
        "logged in as {} on {} (session saved in {})",
        client.session().email,
        client.session().server,
        path.display()
    );
    Ok(())
}

/// `veilfs logout`: ends the session on the server and deletes its file.
pub async fn logout(args: AccountArgs) -> anyhow::Result<()> {
    let (path, session) = find_session(&args)?;
    let (email, server) = (session.email.clone(), session.server.clone());
    let client = MegaClient::resume(session, RetryPolicy::default(), TransferOptions::default())?;
    match client.api().call(json!({"a": "sml"})).await {
        // Already ended on the server: forgetting it locally is all that is left to do.
        Ok(_) | Err(MegaError::Api(ErrorCode::Session)) => {}
        Err(e) => return Err(e).context("ending the session on the server"),
    }
    remove_session_file(&path)?;
    println!("logged out {email} from {server}");
    Ok(())
}

fn remove_session_file(path: &Path) -> anyhow::Result<()> {
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
}

#[derive(clap::Args, Debug)]
pub struct SessionsArgs {
    /// End the sessions with these ids (as listed).
    #[arg(long, value_name = "ID", num_args = 1..)]
    pub revoke: Vec<String>,
    /// End every session of the account except this one.
    #[arg(long, conflicts_with = "revoke")]
    pub revoke_others: bool,
}

/// One line of `usl`: `[created, last used, agent, ip, country, current, id, alive]`.
struct SessionInfo {
    created: i64,
    agent: String,
    current: bool,
    id: String,
}

fn parse_sessions(answer: &Value) -> anyhow::Result<Vec<SessionInfo>> {
    let rows = answer
        .as_array()
        .context("the server's session list is not a list")?;
    rows.iter()
        .map(|row| {
            let field = |i: usize| row.get(i).cloned().unwrap_or(Value::Null);
            Ok(SessionInfo {
                created: field(0).as_i64().unwrap_or(0),
                agent: field(2).as_str().unwrap_or("").to_string(),
                current: field(5).as_i64() == Some(1),
                id: field(6)
                    .as_str()
                    .context("a session without an id")?
                    .to_string(),
            })
        })
        .collect()
}

/// `veilfs sessions`: lists the account's sessions, or ends some of them.
pub async fn sessions(account: AccountArgs, args: SessionsArgs) -> anyhow::Result<()> {
    let client = open(&account).await?;
    if args.revoke_others {
        client.api().call(json!({"a": "usr", "ko": 1})).await?;
        println!("ended every other session");
        return Ok(());
    }
    if !args.revoke.is_empty() {
        let listed = parse_sessions(&client.api().call(json!({"a": "usl"})).await?)?;
        for id in &args.revoke {
            match listed.iter().find(|s| &s.id == id) {
                None => bail!("no session with id {id} (see `veilfs sessions`)"),
                Some(s) if s.current => {
                    bail!("{id} is this session: use `veilfs logout` to end it")
                }
                Some(_) => {}
            }
        }
        client
            .api()
            .call(json!({"a": "usr", "s": args.revoke}))
            .await?;
        println!("ended {} session(s)", args.revoke.len());
        return Ok(());
    }
    let listed = parse_sessions(&client.api().call(json!({"a": "usl"})).await?)?;
    println!("{:<16}  {:<20}  {:<7}  AGENT", "ID", "CREATED", "CURRENT");
    for s in listed {
        println!(
            "{:<16}  {:<20}  {:<7}  {}",
            s.id,
            super::format::date(s.created),
            if s.current { "yes" } else { "" },
            s.agent
        );
    }
    Ok(())
}
