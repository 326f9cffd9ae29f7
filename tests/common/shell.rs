//! A real `veilfs serve` with one account, and private homes (config, state, cache) for
//! running the shell commands against it.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output};

use super::mount::{BIN, PASSWORD, serve};

/// A server with one account, and a private home whose saved session points at it.
pub struct Shell {
    pub root: tempfile::TempDir,
    pub server: Child,
    pub url: String,
    pub email: String,
}

impl Shell {
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("veilfs-shell-")
            .tempdir()
            .unwrap();
        let (server, url) = serve(&root.path().join("server"));
        let email = format!(
            "s{}@test.veilfs",
            hex::encode(veilfs::crypto::random_array::<4>())
        );
        fs::write(root.path().join("password"), PASSWORD).unwrap();
        let shell = Shell {
            root,
            server,
            url,
            email,
        };
        let out = shell.run_in(
            "home",
            &[
                "signup",
                "--server",
                &shell.url,
                "--email",
                &shell.email,
                "--password-file",
                &shell.password(),
            ],
        );
        assert_ok(&out);
        assert_ok(&shell.login("home"));
        shell
    }

    pub fn password(&self) -> String {
        self.root.path().join("password").display().to_string()
    }

    pub fn login(&self, home: &str) -> Output {
        self.run_in(
            home,
            &[
                "login",
                "--server",
                &self.url,
                "--email",
                &self.email,
                "--password-file",
                &self.password(),
            ],
        )
    }

    pub fn home(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// `veilfs ARGS` with the private home `home`.
    pub fn command_in(&self, home: &str) -> Command {
        let h = self.home(home);
        let mut c = Command::new(BIN);
        c.env("HOME", &h)
            .env("XDG_CONFIG_HOME", h.join("config"))
            .env("XDG_STATE_HOME", h.join("state"))
            .env("XDG_CACHE_HOME", h.join("cache"))
            .env_remove("VEILFS_SERVER")
            .env_remove("VEILFS_EMAIL");
        c
    }

    pub fn run_in(&self, home: &str, args: &[&str]) -> Output {
        self.command_in(home).args(args).output().unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_in("home", args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_ok(&out);
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn local(&self, rel: &str) -> PathBuf {
        self.root.path().join("local").join(rel)
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
