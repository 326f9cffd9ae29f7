//! `veilfs mount MOUNTPOINT [--server URL --email E --password-file F] …` and
//! `veilfs unmount MOUNTPOINT`.
//!
//! Without `--server`, the **embedded default**: a `veilfs serve` runs inside the daemon on a
//! loopback port, with its data under `$XDG_DATA_HOME/veilfs/embedded` and a local account
//! whose generated password is kept there in a 0600 file.
//!
//! The daemon detaches by default: the command re-runs itself with `--foreground` in a new
//! session, logging to a file, and returns once the mount is live (or prints why it failed).
//! SIGTERM or `veilfs unmount` unmount cleanly; queued uploads are then drained (bounded), and
//! whatever is left stays in the journal for the next mount.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::cache::BlockCache;
use crate::filen::remote::FilenRemote;
use crate::filen::session::FilenSession;
use crate::fs::FuseFs;
use crate::mega::client::MegaClient;
use crate::mega::remote::MegaRemote;
use crate::mega::session::{Credentials, Session};
use crate::mega::transfer::TransferOptions;
use crate::remote::Remote;
use crate::retry::RetryPolicy;
use crate::tree::{Invalidation, Tree, TreeStore};
use crate::vfs::{Vfs, VfsConfig};
use crate::writeback::Writeback;

const EMBEDDED_EMAIL: &str = "me@embedded.veilfs";

#[derive(clap::Args, Debug, Clone)]
pub struct MountArgs {
    /// Where to mount the drive (an empty directory).
    pub mountpoint: PathBuf,
    /// The server's API URL (e.g. http://127.0.0.1:8787/). Without it, the embedded server.
    #[arg(long, value_name = "URL", requires = "email")]
    pub server: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    /// File holding the password (first line); VEILFS_PASSWORD is used otherwise. Only needed
    /// when no saved session exists.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// A current two-factor code, for accounts with 2FA (only needed when logging in).
    #[arg(long, value_name = "CODE")]
    pub mfa_code: Option<String>,
    /// Storage backend: mega or filen (filen needs --server, --email and the password).
    #[arg(long, default_value = "mega")]
    pub backend: String,
    /// Local state: encrypted block cache, tree, staging files and upload journal.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Disk budget of the block cache (K, M, G suffixes).
    #[arg(long, default_value = "2G", value_parser = super::serve::parse_size)]
    pub cache_size: u64,
    /// Memory budget of the block cache.
    #[arg(long, default_value = "256M", value_parser = super::serve::parse_size)]
    pub memory_cache: u64,
    /// Stay in the foreground (for systemd and tests); logs go to stderr.
    #[arg(long)]
    pub foreground: bool,
    #[arg(long)]
    pub read_only: bool,
    /// How long, in seconds, the kernel may cache names and attributes. Changes made
    /// elsewhere are pushed to the kernel as soon as this mount hears of them, whatever this
    /// is; it only bounds how long a missed one could show stale metadata.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::fs::DEFAULT_TTL.as_secs_f64(), value_parser = parse_seconds)]
    pub attr_timeout: f64,
    /// Let the kernel check permission bits on every request even when root mounts (it
    /// always does for other users). Root passes those checks anyway, except root processes
    /// stripped of CAP_DAC_OVERRIDE; without them a file written costs one round trip less.
    #[arg(long)]
    pub default_permissions: bool,
    /// How long, in seconds, unmounting waits for queued uploads before leaving them to the
    /// next mount (they stay in the local journal: nothing is lost).
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0, value_parser = parse_seconds)]
    pub upload_wait: f64,
    /// Use HTTPS for transfers even where the server offers HTTP.
    #[arg(long)]
    pub force_https: bool,
    /// Mount a public folder link read-only (https://…/folder/H#KEY or #F!H!KEY), no account
    /// needed. The API asked is MEGA's for mega.nz links, otherwise the link's own host.
    #[arg(long, value_name = "LINK", conflicts_with_all = ["server", "embedded_data"])]
    pub link: Option<String>,
    /// Where the embedded server keeps its data (default $XDG_DATA_HOME/veilfs/embedded).
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    pub embedded_data: Option<PathBuf>,
}

/// A duration in seconds for `--attr-timeout`: 0 (no caching) up to a day.
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

#[derive(clap::Args, Debug)]
pub struct UnmountArgs {
    pub mountpoint: PathBuf,
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

pub(crate) fn xdg(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home().join(fallback))
}

/// Where a mount's daemon records its pid, keyed by the absolute mount point.
pub(crate) fn pid_file(mountpoint: &Path) -> PathBuf {
    let digest = Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
    xdg("XDG_STATE_HOME", ".local/state")
        .join("veilfs")
        .join("mounts")
        .join(format!("{}.pid", hex::encode(&digest[..8])))
}

/// Where a daemon that stopped with uploads still queued leaves their number.
fn left_file(mountpoint: &Path) -> PathBuf {
    pid_file(mountpoint).with_extension("left")
}

pub fn run(mut args: MountArgs) -> anyhow::Result<()> {
    ensure!(
        args.backend == "mega" || args.backend == "filen",
        "unknown backend {:?} (mega or filen)",
        args.backend
    );
    ensure!(
        args.backend != "filen" || args.server.is_some(),
        "--backend filen needs --server and --email"
    );
    ensure!(
        args.backend != "filen" || args.link.is_none(),
        "--link opens MEGA folder links only"
    );
    // A public link gives read access only.
    args.read_only |= args.link.is_some();
    args.mountpoint = std::fs::canonicalize(&args.mountpoint)
        .with_context(|| format!("mount point {}", args.mountpoint.display()))?;
    ensure!(
        args.mountpoint.is_dir(),
        "{} is not a directory",
        args.mountpoint.display()
    );
    ensure!(
        !is_mounted(&args.mountpoint)?,
        "{} is already mounted",
        args.mountpoint.display()
    );
    if args.foreground {
        return run_daemon(args);
    }
    detach(&args)
}

/// Re-runs this command in the foreground as a detached process and waits until the mount
/// appears.
fn detach(args: &MountArgs) -> anyhow::Result<()> {
    let log_dir = xdg("XDG_STATE_HOME", ".local/state").join("veilfs");
    std::fs::create_dir_all(&log_dir)?;
    let log_path = log_dir.join("mount.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("log file {}", log_path.display()))?;
    let start = log.metadata()?.len();
    let mut child_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    child_args.push("--foreground".into());
    let mut child = Command::new(std::env::current_exe()?)
        .args(&child_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the mount daemon")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if is_mounted(&args.mountpoint)? {
            println!(
                "mounted on {} (log: {})",
                args.mountpoint.display(),
                log_path.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read(&log_path).unwrap_or_default();
            let tail = String::from_utf8_lossy(&text[(start as usize).min(text.len())..]);
            bail!("the mount daemon exited ({status}):\n{}", tail.trim_end());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the mount did not appear within 2 minutes (log: {})",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn is_mounted(mountpoint: &Path) -> anyhow::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let wanted = mountpoint.to_string_lossy();
    Ok(info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .map(unescape_mountinfo)
            .is_some_and(|p| p == wanted)
    }))
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn run_daemon(args: MountArgs) -> anyhow::Result<()> {
    super::init_logging();
    raise_open_file_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    if args.backend == "filen" {
        let (vfs, state) = rt.block_on(prepare_filen(&args))?;
        return serve_fuse(&args, &rt, vfs, state);
    }
    // The embedded server (when used) lives as long as this value.
    let (vfs, _server, state) = rt.block_on(prepare(&args))?;
    serve_fuse(&args, &rt, vfs, state)
}

/// Lifts the soft limit on open files to the hard one, as a file server should: each open
/// handle and each upload under way holds a descriptor, and the usual soft limit (1024) is a
/// default for interactive programs, not a choice the user made. Queued files hold none
/// (`vfs::LocalFile::rest`), so a low hard limit still works; this is headroom for programs
/// that keep many files open at once.
fn raise_open_file_limit() {
    let Some((soft, hard)) = crate::util::open_files_limit().filter(|(soft, hard)| soft < hard)
    else {
        return;
    };
    let wanted = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct passed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } != 0 {
        tracing::debug!(soft, "could not raise the open-file limit");
    }
}

/// Whether the kernel checks permission bits against each request (`default_permissions`).
///
/// Only the user who mounted may use the mount (no `allow_other`). For any other user the
/// kernel's checks are what keeps their own `chmod 000` files from them. For root they cannot
/// refuse anything: root's processes pass every mode check but the execution of a file no one
/// may execute, which the kernel checks without the option too (and `access(2)` gets the same
/// answer from `Vfs::access`). They still cost: after every create, rename or removal in a
/// folder the kernel forgets the folder's attributes, and checking the next path through it
/// asks for them again — one `GETATTR` round trip per file written (two under `rsync`).
/// `--default-permissions` keeps them for root too (root processes stripped of
/// `CAP_DAC_OVERRIDE`, which the kernel's checks would hold to the mode bits).
fn kernel_checks_permissions(forced: bool) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    forced || unsafe { libc::geteuid() } != 0
}

/// Mounts `vfs` and serves FUSE requests until unmounted, then drains the upload queue.
fn serve_fuse<R: Remote>(
    args: &MountArgs,
    rt: &tokio::runtime::Runtime,
    vfs: Arc<Vfs<R>>,
    state: PathBuf,
) -> anyhow::Result<()> {
    // `veilfs status` (and `veilfs unmount`) ask this socket; it goes away with the daemon.
    let _status = super::status::serve(
        rt.handle(),
        &args.mountpoint,
        vfs.clone(),
        state,
        args.cache_size,
    )?;
    let mut options = vec![
        fuser::MountOption::FSName("veilfs".into()),
        fuser::MountOption::Subtype("veilfs".into()),
        fuser::MountOption::NoAtime,
    ];
    if kernel_checks_permissions(args.default_permissions) {
        options.push(fuser::MountOption::DefaultPermissions);
    }
    options.push(if args.read_only {
        fuser::MountOption::RO
    } else {
        fuser::MountOption::RW
    });
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.n_threads = Some(4);
    config.clone_fd = true;
    let ttl = Duration::from_secs_f64(args.attr_timeout);
    let fs = FuseFs::new(vfs.clone(), rt.handle().clone(), ttl);
    let mut session = fuser::Session::new(fs, &args.mountpoint, &config)
        .with_context(|| format!("mounting on {}", args.mountpoint.display()))?;

    // Invalidations go through a thread of their own: the kernel may take locks that a
    // request in flight holds, so they must never be sent from a request's path.
    let notifier = session.notifier();
    let (tx, rx) = std::sync::mpsc::channel::<Invalidation>();
    vfs.set_notifier(move |i| {
        let _ = tx.send(i.clone());
    });
    std::thread::spawn(move || {
        for i in rx {
            let _ = match &i {
                Invalidation::Entry { parent, name } => {
                    notifier.inval_entry(fuser::INodeNo(*parent), name.as_ref())
                }
                Invalidation::Inode(ino) => notifier.inval_inode(fuser::INodeNo(*ino), 0, 0),
            };
        }
    });

    let mut unmounter = session.unmount_callable();
    rt.spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received; unmounting");
        if let Err(error) = unmounter.unmount() {
            tracing::error!(%error, "unmount failed");
        }
    });

    let pid_path = pid_file(&args.mountpoint);
    if let Some(dir) = pid_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&pid_path, std::process::id().to_string())?;
    let _ = std::fs::remove_file(left_file(&args.mountpoint));
    tracing::info!(mountpoint = %args.mountpoint.display(), "mounted");
    let result = session.run();
    let left = rt.block_on(vfs.drain(Duration::from_secs_f64(args.upload_wait)));
    if let Err(error) = vfs.persist_tree() {
        tracing::warn!(%error, "could not save the tree; the next mount re-reads it");
    }
    if left > 0 {
        eprintln!("{left} upload(s) still queued; they resume at the next mount");
        // For `veilfs unmount`, which waits for this process without a word from it.
        let _ = std::fs::write(left_file(&args.mountpoint), left.to_string());
    }
    let _ = std::fs::remove_file(&pid_path);
    result.context("FUSE session")?;
    Ok(())
}

/// Logs in to a Filen server, opens the local state and makes the tree ready.
async fn prepare_filen(args: &MountArgs) -> anyhow::Result<(Arc<Vfs<FilenRemote>>, PathBuf)> {
    let url = args.server.as_deref().context("--server is required")?;
    let email = args.email.as_deref().context("--email is required")?;
    let password = super::signup::read_password(args.password_file.as_deref())?;
    let session = FilenSession::login(url, email, &password)
        .await
        .context("logging in to Filen")?;
    // The current (password-derived) key seals the local state; after a password change the
    // mount starts from a fresh local state rather than failing to open the old one.
    let current = session.keys.current().as_str().as_bytes().to_vec();
    let id = format!(
        "filen|{url}|{}|{}",
        session.user_id,
        hex::encode(&Sha256::digest(&current)[..8])
    );
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(b"veilfs local state filen"), &current)
        .expand(b"tree", &mut key[..])
        .map_err(|_| anyhow!("key derivation"))?;
    let state = state_dir(args, &id)?;
    let vfs = open_vfs(args, &state, &key, FilenRemote::new(session)).await?;
    Ok((vfs, state))
}

/// The local state directory of an account, created private.
fn state_dir(args: &MountArgs, account_id: &str) -> anyhow::Result<PathBuf> {
    let digest = Sha256::digest(account_id.as_bytes());
    let state = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| xdg("XDG_CACHE_HOME", ".cache").join("veilfs"))
        .join(hex::encode(&digest[..8]));
    std::fs::create_dir_all(&state)?;
    set_private(&state)?;
    Ok(state)
}

/// Opens tree, cache and journal under `state` (sealed with `key`) over `remote`.
async fn open_vfs<R: Remote>(
    args: &MountArgs,
    state: &Path,
    key: &[u8; 32],
    remote: R,
) -> anyhow::Result<Arc<Vfs<R>>> {
    let tree = Tree::open(TreeStore::open(&state.join("tree"), key)?)?;
    let cache = BlockCache::open(&state.join("blocks"), args.memory_cache, args.cache_size)?;
    let wb = Writeback::open(&state.join("writeback"))?;
    let config = VfsConfig {
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        read_only: args.read_only,
        ..VfsConfig::default()
    };
    let vfs = Vfs::new(Arc::new(remote), tree, cache, wb, config);
    vfs.start().await.context("loading the drive")?;
    Ok(vfs)
}

/// Logs in (or starts the embedded server), opens the local state and makes the tree ready.
async fn prepare(
    args: &MountArgs,
) -> anyhow::Result<(
    Arc<Vfs<MegaRemote>>,
    Option<crate::server::RunningServer>,
    PathBuf,
)> {
    let options = TransferOptions {
        force_https: args.force_https,
    };
    let (client, credentials, server, account_id) = match &args.server {
        _ if args.link.is_some() => {
            let link = args.link.as_deref().expect("checked");
            let client = super::links::open_folder_link(link, None, options).await?;
            let id = format!("link|{}", client.session().user_handle);
            (client, None, None, id)
        }
        Some(url) => {
            let email = args
                .email
                .clone()
                .context("--email is required with --server")?;
            let client = saved_or_new_session(url, &email, args, options).await?;
            let id = format!("{url}|{}", client.session().user_handle);
            // With a password at hand, an ended session is renewed instead of failing.
            let credentials = super::signup::read_password(args.password_file.as_deref())
                .ok()
                .map(|password| Credentials {
                    email,
                    password,
                    mfa_code: None,
                });
            (client, credentials, None, id)
        }
        None => {
            let (client, credentials, server) = embedded(args, options).await?;
            let id = format!("embedded|{}", client.session().user_handle);
            (client, Some(credentials), Some(server), id)
        }
    };
    let state = state_dir(args, &account_id)?;

    // Local state is sealed under a key derived from the account's master key: without the
    // account, the tree and cache on disk are unreadable.
    let master = client.session().master_key()?;
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(b"veilfs local state"), &master[..])
        .expand(b"tree", &mut key[..])
        .map_err(|_| anyhow!("key derivation"))?;
    let vfs = open_vfs(args, &state, &key, MegaRemote::new(client, credentials)).await?;
    Ok((vfs, server, state))
}

fn set_private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

pub(crate) fn session_path(server: &str, email: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{server}|{}", email.to_lowercase()).as_bytes());
    xdg("XDG_CONFIG_HOME", ".config")
        .join("veilfs")
        .join("sessions")
        .join(format!("{}.json", hex::encode(&digest[..8])))
}

/// Resumes the saved session for this server and e-mail, or logs in and saves one (0600).
async fn saved_or_new_session(
    server: &str,
    email: &str,
    args: &MountArgs,
    options: TransferOptions,
) -> anyhow::Result<MegaClient> {
    let path = session_path(server, email);
    if let Ok(session) = Session::load(&path) {
        let client = MegaClient::resume(session, RetryPolicy::default(), options)?;
        // A revoked session must not leave the mount half alive: check it now.
        match client.quota().await {
            Ok(_) => return Ok(client),
            Err(error) => tracing::warn!(%error, "saved session refused; logging in again"),
        }
    }
    let password = super::signup::read_password(args.password_file.as_deref())?;
    let credentials = Credentials {
        email: email.to_string(),
        password,
        mfa_code: args.mfa_code.clone(),
    };
    let client = MegaClient::login(server, &credentials, RetryPolicy::default(), options)
        .await
        .context("logging in")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    client.session().save(&path)?;
    Ok(client)
}

/// Starts the in-process server and logs in to its local account, creating both on first use.
async fn embedded(
    args: &MountArgs,
    options: TransferOptions,
) -> anyhow::Result<(MegaClient, Credentials, crate::server::RunningServer)> {
    let data = args.embedded_data.clone().unwrap_or_else(|| {
        xdg("XDG_DATA_HOME", ".local/share")
            .join("veilfs")
            .join("embedded")
    });
    std::fs::create_dir_all(&data)?;
    set_private(&data)?;
    let config = crate::server::ServerConfig::new(data.join("server"), "127.0.0.1:0".parse()?);
    let server = crate::server::start(config).await?;
    let url = server.url();
    let password_path = data.join("password");
    let password = match std::fs::read_to_string(&password_path) {
        Ok(p) => Zeroizing::new(p.trim_end().to_string()),
        Err(_) => {
            let password = Zeroizing::new(crate::crypto::mega::b64_encode(
                &crate::crypto::random_array::<24>(),
            ));
            crate::mega::signup::create_account(&url, EMBEDDED_EMAIL, &password, "me")
                .await
                .context("creating the embedded account")?;
            crate::util::write_private_file(&password_path, password.as_bytes())?;
            password
        }
    };
    let credentials = Credentials {
        email: EMBEDDED_EMAIL.to_string(),
        password,
        mfa_code: None,
    };
    let client = MegaClient::login(&url, &credentials, RetryPolicy::default(), options)
        .await
        .context("logging in to the embedded server")?;
    Ok((client, credentials, server))
}

/// Whether process `pid` is alive (a zombie, exited but not yet reaped by its parent, is not).
fn is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// `veilfs unmount`: detaches the mount, then waits for the daemon to upload what is queued.
/// Waits for the daemon of an unmounted drive to exit, showing the uploads it still has to
/// finish (asked of its status socket) whenever that changes.
fn wait_for_daemon(pid: i32, socket: &Path, mountpoint: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok();
    let mut shown: Option<(usize, u64)> = None;
    while is_running(pid) {
        let report = rt
            .as_ref()
            .and_then(|rt| rt.block_on(super::status::ask(socket)).ok());
        let now = report.map_or((0, 0), |r| (r.pending_uploads, r.pending_bytes));
        if now.0 > 0 && shown != Some(now) {
            println!(
                "waiting for {} queued upload{} ({}) to finish…",
                now.0,
                if now.0 == 1 { "" } else { "s" },
                super::format::size(now.1)
            );
            shown = Some(now);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let left_file = left_file(mountpoint);
    let left = std::fs::read_to_string(&left_file).ok();
    let _ = std::fs::remove_file(&left_file);
    match left.and_then(|s| s.trim().parse::<usize>().ok()) {
        Some(left) => println!(
            "{left} queued upload{} not done yet: {} at the next mount",
            if left == 1 { "" } else { "s" },
            if left == 1 {
                "it resumes"
            } else {
                "they resume"
            }
        ),
        None if shown.is_some() => println!("all uploads done"),
        None => {}
    }
}

pub fn unmount(args: UnmountArgs) -> anyhow::Result<()> {
    let mountpoint = std::fs::canonicalize(&args.mountpoint)
        .with_context(|| format!("mount point {}", args.mountpoint.display()))?;
    ensure!(
        is_mounted(&mountpoint)?,
        "{} is not mounted",
        mountpoint.display()
    );
    let pid: Option<i32> = std::fs::read_to_string(pid_file(&mountpoint))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    // The daemon keeps answering status requests while it finishes its uploads.
    let socket = super::status::socket_path(&mountpoint);
    let status = Command::new("fusermount3")
        .arg("-u")
        .arg(&mountpoint)
        .status()
        .context("running fusermount3")?;
    ensure!(
        status.success(),
        "fusermount3 -u {} failed",
        mountpoint.display()
    );
    if let Some(pid) = pid {
        wait_for_daemon(pid, &socket, &mountpoint);
    }
    Ok(())
}
