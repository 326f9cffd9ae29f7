//! `veilfs status [MOUNTPOINT] [--json]`: what a running mount is doing — uploads still queued
//! and their bytes, cache use, the last sync with the server, recent errors, and the kernel's
//! requests so far with the time we took to answer them (`fs::stats`).
//!
//! Each mount daemon answers on a Unix socket beside its pid file (mode 0600, in a 0700
//! folder: only its owner may ask). A connection gets one JSON report and is closed.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::fs::stats::{self, OpStats};
use crate::remote::Remote;
use crate::vfs::Vfs;

/// Errors kept for the report.
const RECENT_ERRORS: usize = 10;

/// How long a measured disk use is reported again rather than measured anew. Measuring walks
/// every file of the mount's state (a staging file per queued upload, a file per cached
/// block): scripts poll `status` to wait for their uploads, and a walk per poll (50 a second
/// in the benchmarks) took 5 % of the daemon's CPU from the uploads being waited for.
const DISK_USAGE_MAX_AGE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub mountpoint: PathBuf,
    pub pid: u32,
    pub pending_uploads: usize,
    pub pending_bytes: u64,
    /// Uploads finished since the mount started.
    pub uploaded: u64,
    /// Unix time of the last exchange with the server's change feed.
    pub last_sync: Option<u64>,
    /// Newest last: `(unix time first seen, message)`.
    pub recent_errors: Vec<(u64, String)>,
    /// Bytes of the mount's local state on disk: block cache, tree, and staged uploads (as
    /// measured at most a couple of seconds ago).
    pub cache_disk_bytes: u64,
    pub cache_disk_budget: u64,
    /// The kernel's requests since the mount started, by kind (`lookup`, `create`, …). Absent
    /// from the answers of daemons older than this field.
    #[serde(default)]
    pub requests: BTreeMap<String, OpStats>,
}

/// Where the daemon of `mountpoint` (absolute) listens.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    super::mount::pid_file(mountpoint).with_extension("sock")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Starts answering status requests for a mount; the socket is removed when the returned guard
/// drops.
pub fn serve<R: Remote>(
    rt: &tokio::runtime::Handle,
    mountpoint: &Path,
    vfs: Arc<Vfs<R>>,
    state_dir: PathBuf,
    cache_budget: u64,
) -> anyhow::Result<SocketGuard> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(mountpoint);
    let dir = path.parent().context("socket path without a folder")?;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    // A socket left by a daemon that was killed would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = {
        let _enter = rt.enter();
        tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("status socket {}", path.display()))?
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;

    // Errors are sampled, so one that is quickly replaced still shows in the list.
    let errors: Arc<Mutex<VecDeque<(u64, String)>>> = Arc::default();
    let sampler = {
        let (vfs, errors) = (vfs.clone(), errors.clone());
        rt.spawn(async move {
            let mut last: Option<String> = None;
            loop {
                let current = vfs.status().last_error;
                if current.is_some() && current != last {
                    let mut list = errors.lock();
                    list.push_back((now(), current.clone().expect("checked")));
                    while list.len() > RECENT_ERRORS {
                        list.pop_front();
                    }
                }
                last = current;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mountpoint = mountpoint.to_path_buf();
    let mut measured: Option<(std::time::Instant, u64)> = None;
    let server = rt.spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let status = vfs.status();
            let mut recent: Vec<(u64, String)> = errors.lock().iter().cloned().collect();
            if let Some(e) = status.last_error
                && recent.last().map(|(_, m)| m) != Some(&e)
            {
                recent.push((now(), e));
            }
            let cache_disk_bytes = match measured {
                Some((at, bytes)) if at.elapsed() < DISK_USAGE_MAX_AGE => bytes,
                _ => {
                    let state_dir = state_dir.clone();
                    let bytes = tokio::task::spawn_blocking(move || disk_usage(&state_dir))
                        .await
                        .unwrap_or(0);
                    measured = Some((std::time::Instant::now(), bytes));
                    bytes
                }
            };
            let report = Report {
                mountpoint: mountpoint.clone(),
                pid: std::process::id(),
                pending_uploads: status.pending_uploads,
                pending_bytes: status.pending_bytes,
                uploaded: status.uploaded,
                last_sync: status.last_sync,
                recent_errors: recent,
                cache_disk_bytes,
                cache_disk_budget: cache_budget,
                requests: stats::snapshot(),
            };
            let mut body = serde_json::to_vec(&report).expect("report serializes");
            body.push(b'\n');
            let _ = stream.write_all(&body).await;
        }
    });
    Ok(SocketGuard {
        path,
        tasks: vec![sampler, server],
    })
}

pub struct SocketGuard {
    path: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The mount to ask (default: every running mount).
    pub mountpoint: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn ask(socket: &Path) -> anyhow::Result<Report> {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut body))
        .await
        .context("the mount daemon did not answer")??;
    serde_json::from_slice(&body).context("the mount daemon's answer is malformed")
}

fn print(report: &Report) {
    use super::format::{date, size};
    println!("{}", report.mountpoint.display());
    println!("  daemon pid:      {}", report.pid);
    println!(
        "  pending uploads: {} ({} left)",
        report.pending_uploads,
        size(report.pending_bytes)
    );
    println!(
        "  uploaded:        {} file(s) since mounted",
        report.uploaded
    );
    println!(
        "  local cache:     {} on disk (budget {}, staged uploads included)",
        size(report.cache_disk_bytes),
        size(report.cache_disk_budget)
    );
    println!(
        "  last sync:       {}",
        report.last_sync.map_or_else(
            || "never".to_string(),
            |t| format!("{} UTC", date(t as i64))
        )
    );
    print_requests(&report.requests);
    if report.recent_errors.is_empty() {
        println!("  recent errors:   none");
    } else {
        println!("  recent errors:");
        for (at, message) in &report.recent_errors {
            println!("    {} UTC  {message}", date(*at as i64));
        }
    }
}

/// The kinds of request that took the most time, most first (`--json` has them all).
const REQUESTS_SHOWN: usize = 8;

fn print_requests(requests: &BTreeMap<String, OpStats>) {
    if requests.is_empty() {
        return;
    }
    let mut by_time: Vec<(&String, &OpStats)> = requests.iter().collect();
    by_time.sort_by_key(|(_, s)| std::cmp::Reverse(s.total_us));
    println!("  requests:        count   failed     mean      max   (time to answer)");
    for (op, s) in by_time.into_iter().take(REQUESTS_SHOWN) {
        println!(
            "    {op:<14}{:>8} {:>8} {:>8} {:>8}",
            s.count,
            s.failed,
            micros(s.mean_us()),
            micros(s.max_us)
        );
    }
}

fn micros(us: u64) -> String {
    if us < 10_000 {
        format!("{us} µs")
    } else {
        format!("{} ms", us / 1000)
    }
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let sockets: Vec<PathBuf> = match &args.mountpoint {
        Some(mp) => {
            let mp = std::fs::canonicalize(mp)
                .with_context(|| format!("mount point {}", mp.display()))?;
            if !super::mount::is_mounted(&mp)? {
                bail!("{} is not mounted", mp.display());
            }
            let socket = socket_path(&mp);
            if !socket.exists() {
                bail!(
                    "no status socket for {} (mounted by another user, or by an older veilfs)",
                    mp.display()
                );
            }
            vec![socket]
        }
        None => {
            let dir = socket_path(Path::new("/")).with_file_name("");
            let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            found
        }
    };
    let mut reports = Vec::new();
    for socket in &sockets {
        match ask(socket).await {
            Ok(r) => reports.push(r),
            // Without a mount point, a socket whose daemon died is just left over.
            Err(e) if args.mountpoint.is_none() => tracing::debug!(error = %e, "skipping"),
            Err(e) => return Err(e),
        }
    }
    if args.json {
        if args.mountpoint.is_some() {
            println!("{}", serde_json::to_string_pretty(&reports[0])?);
        } else {
            println!("{}", serde_json::to_string_pretty(&reports)?);
        }
    } else if reports.is_empty() {
        println!("no running mounts");
    } else {
        for r in &reports {
            print(r);
        }
    }
    Ok(())
}
