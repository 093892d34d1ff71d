//! A `redis-server` of a test's own (Debian's package), on a free loopback
//! port in a temporary directory, killed when dropped. Skips (returns
//! `None`, saying what to install) without it, unless
//! `PERFMON_REDIS_TESTS=require`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of the test's own.
pub(crate) struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
    persistent: bool,
}

fn have(binary: &str) -> bool {
    Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    /// A new server in `dir` (None: skip, with what to install).
    /// `persistent`: append-only file on, so a restart keeps the stream.
    pub(crate) fn start(dir: &Path, persistent: bool) -> Option<Redis> {
        if !have("redis-server") || !have("redis-cli") {
            assert!(
                std::env::var("PERFMON_REDIS_TESTS").as_deref() != Ok("require"),
                "PERFMON_REDIS_TESTS=require, but no redis-server: apt-get install redis-server"
            );
            eprintln!("skipped: no redis-server (apt-get install redis-server)");
            return None;
        }
        Some(Redis::spawn(dir, free_port(), persistent))
    }

    fn spawn(dir: &Path, port: u16, persistent: bool) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", if persistent { "yes" } else { "no" }])
            .args(["--appendfsync", "always", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let redis = Redis {
            child,
            port,
            dir: dir.to_owned(),
            persistent,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn restart(&mut self) {
        self.stop();
        *self = Redis::spawn(&self.dir.clone(), self.port, self.persistent);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
