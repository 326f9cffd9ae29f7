//! A real `veilfs serve` process and a real `veilfs mount` of an account on it, for tests that
//! go through the kernel. Everything lives in one temporary directory; dropping the fixture
//! unmounts (lazily if need be) and stops both processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_veilfs");
pub const PASSWORD: &str = "correct horse battery stäple";

pub struct MountFixture {
    pub root: tempfile::TempDir,
    pub url: String,
    pub email: String,
    pub mnt: PathBuf,
    /// `None` while stopped by [`MountFixture::stop_server`].
    server: Option<Child>,
    daemon: Option<Child>,
    mounts: u32,
    cache_dir: Option<PathBuf>,
    /// `mega` or `filen`: the account type and the mount's `--backend`.
    backend: &'static str,
    /// The daemon's limit on open files, soft and hard (see `limit_open_files`).
    open_files: Option<u64>,
    /// More options for the next mounts.
    options: Vec<String>,
}

impl MountFixture {
    /// A server with one account, mounted.
    pub fn new() -> Self {
        Self::build(None, "mega")
    }

    /// A server with one Filen account (made by `veilfs signup --backend filen`), mounted
    /// with `--backend filen`.
    pub fn filen() -> Self {
        Self::build(None, "filen")
    }

    /// Like [`MountFixture::new`], with the mount's local state in `cache_dir` (a small tmpfs,
    /// say) instead of inside the fixture.
    pub fn with_cache_dir(cache_dir: PathBuf) -> Self {
        Self::build(Some(cache_dir), "mega")
    }

    fn build(cache_dir: Option<PathBuf>, backend: &'static str) -> Self {
        let root = tempfile::Builder::new()
            .prefix("veilfs-mount-")
            .tempdir()
            .unwrap();
        let (server, url) = serve(&root.path().join("server"));
        let email = format!(
            "m{}@test.veilfs",
            hex::encode(veilfs::crypto::random_array::<4>())
        );
        std::fs::write(root.path().join("password"), PASSWORD).unwrap();
        let mnt = root.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut f = MountFixture {
            root,
            url,
            email,
            mnt,
            server: Some(server),
            daemon: None,
            mounts: 0,
            open_files: None,
            options: Vec::new(),
            cache_dir,
            backend,
        };
        let out = f
            .command()
            .args([
                "signup",
                "--backend",
                f.backend,
                "--server",
                &f.url,
                "--email",
                &f.email,
                "--password-file",
            ])
            .arg(f.root.path().join("password"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "signup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        f.mount();
        f
    }

    /// `veilfs` with this fixture's private config, state and cache directories.
    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        let r = self.root.path();
        c.env("HOME", r)
            .env("XDG_CONFIG_HOME", r.join("config"))
            .env("XDG_STATE_HOME", r.join("state"))
            .env("XDG_CACHE_HOME", r.join("cache"))
            .env("XDG_DATA_HOME", r.join("data"));
        c
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.root.path().join("cache"))
    }

    /// Kills the `veilfs serve` process (SIGKILL: a crash, not a clean stop).
    pub fn stop_server(&mut self) {
        let mut server = self.server.take().expect("server running");
        server.kill().unwrap();
        server.wait().unwrap();
    }

    /// A second MEGA client logged in to the fixture's account (another device, as the
    /// server sees it).
    pub async fn other_client(&self) -> veilfs::mega::MegaClient {
        let credentials = veilfs::mega::session::Credentials {
            email: self.email.clone(),
            password: zeroize::Zeroizing::new(PASSWORD.to_string()),
            mfa_code: None,
        };
        veilfs::mega::MegaClient::login(
            &self.url,
            &credentials,
            veilfs::retry::RetryPolicy::quick(),
            Default::default(),
        )
        .await
        .unwrap()
    }

    /// Adds `options` to the next mounts' command line.
    pub fn mount_options(&mut self, options: &[&str]) {
        self.options.extend(options.iter().map(|o| o.to_string()));
    }

    /// Starts the next mounts with at most `n` open files, as their soft and hard limit (so
    /// the daemon cannot lift it), as `ulimit -n n` before the mount would.
    pub fn limit_open_files(&mut self, n: u64) {
        self.open_files = Some(n);
    }

    /// The daemon's open descriptors.
    pub fn daemon_fds(&self) -> usize {
        let pid = self.daemon.as_ref().expect("mounted").id();
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server process: requests to it hang, as with
    /// a stalled network, instead of failing.
    pub fn pause_server(&self, paused: bool) {
        let pid = self.server.as_ref().expect("server running").id() as i32;
        let sig = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Starts the server again on the same data directory and port, so the mount's URL and
    /// session stay valid.
    pub fn start_server(&mut self) {
        assert!(self.server.is_none(), "server already running");
        let addr = self
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        // The port was just released; binding it again may need a moment.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match try_serve(&self.server_data(), &addr) {
                Ok((child, url)) => {
                    assert_eq!(url, self.url);
                    self.server = Some(child);
                    return;
                }
                Err(e) => assert!(Instant::now() < deadline, "server restart: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The password the next mount uses (after a password change, say).
    pub fn set_password(&self, password: &str) {
        std::fs::write(self.root.path().join("password"), password).unwrap();
    }

    pub fn server_data(&self) -> PathBuf {
        self.root.path().join("server")
    }

    pub fn log(&self, n: u32) -> PathBuf {
        self.root.path().join(format!("mount-{n}.log"))
    }

    /// Mounts in the foreground (as a child) and waits until the mount is live.
    pub fn mount(&mut self) {
        assert!(self.daemon.is_none(), "already mounted");
        self.mounts += 1;
        let log_path = self.log(self.mounts);
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = self.command();
        command
            .env(
                "RUST_LOG",
                std::env::var("VEILFS_TEST_LOG").unwrap_or_else(|_| "veilfs=info".into()),
            )
            .arg("mount")
            .arg(&self.mnt)
            .args([
                "--backend",
                self.backend,
                "--server",
                &self.url,
                "--email",
                &self.email,
                "--password-file",
            ])
            .arg(self.root.path().join("password"))
            .arg("--cache-dir")
            .arg(self.cache_dir())
            .arg("--foreground")
            .args(&self.options)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(n) = self.open_files {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: only setrlimit runs between fork and exec; it allocates nothing.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command.spawn().unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_mounted(&self.mnt) {
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "mount exited ({status}):\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "mount did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `veilfs unmount`, which waits for queued uploads; the daemon must exit cleanly.
    pub fn unmount(&mut self) {
        let child = self.start_unmount();
        self.finish_unmount(child);
    }

    /// Starts `veilfs unmount` with its output piped, for a test to watch what it prints.
    pub fn start_unmount(&self) -> Child {
        self.command()
            .arg("unmount")
            .arg(&self.mnt)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Waits for an unmount started by [`MountFixture::start_unmount`] and for the daemon to
    /// exit cleanly; returns what the unmount printed.
    pub fn finish_unmount(&mut self, unmount: Child) -> String {
        let out = unmount.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "unmount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut child = self.daemon.take().expect("mounted");
        let status = wait(&mut child, Duration::from_secs(90));
        assert!(
            status.success(),
            "daemon exited with {status}:\n{}",
            std::fs::read_to_string(self.log(self.mounts)).unwrap_or_default()
        );
        assert!(!is_mounted(&self.mnt));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// SIGKILL of the daemon, then a lazy unmount of what it left behind.
    pub fn kill(&mut self) {
        let mut child = self.daemon.take().expect("mounted");
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mnt)
            .status();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for MountFixture {
    fn drop(&mut self) {
        // A failing test shows what the daemon said: most mount bugs are explained there.
        if std::thread::panicking() && self.mounts > 0 {
            let log = std::fs::read_to_string(self.log(self.mounts)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of the mount's log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        if let Some(mut child) = self.daemon.take() {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mnt)
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|p| p == wanted))
}

/// Starts `veilfs serve` on a free port; returns the child and its URL.
pub fn serve(data: &Path) -> (Child, String) {
    try_serve(data, "127.0.0.1:0").unwrap()
}

/// Starts `veilfs serve` listening on `addr`; fails when it exits instead of listening.
fn try_serve(data: &Path, addr: &str) -> Result<(Child, String), String> {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--data"])
        .arg(data)
        .args(["--listen", addr]);
    try_spawn_serve(cmd)
}

/// Runs a prepared `veilfs serve` command and returns the child and the URL its first line
/// announces.
pub fn spawn_serve(cmd: Command) -> (Child, String) {
    try_spawn_serve(cmd).unwrap()
}

fn try_spawn_serve(mut cmd: Command) -> Result<(Child, String), String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    match line.trim().strip_prefix("veilfs serve: listening on ") {
        Some(url) => Ok((child, url.to_string())),
        None => {
            let status = child.wait().unwrap();
            Err(format!("serve exited ({status}) after printing {line:?}"))
        }
    }
}

/// Writes `data` in 1 MiB writes and closes with `close(2)` itself, so that an error the
/// close reports (the mount's flush) is seen rather than ignored as `drop` would.
pub fn write_and_close(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut h = std::fs::File::create(path)?;
    let written = data.chunks(1 << 20).try_for_each(|c| h.write_all(c));
    let fd = std::os::fd::IntoRawFd::into_raw_fd(h);
    let closed = if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    };
    written.and(closed)
}

/// Deterministic test content.
pub fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}
