//! A Redis primary, its replica and three sentinels watching them, all on loopback.

use std::process::Command;
use std::time::{Duration, Instant};

use super::RedisServer;

/// The name the sentinels monitor the primary under.
pub const MASTER: &str = "cache";

/// The port of the primary the sentinel on `port` names, if it answers.
pub fn named_by(port: u16) -> Option<u16> {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(["sentinel", "get-master-addr-by-name", MASTER])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .and_then(|port| port.trim().parse().ok())
        })
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A primary, one replica and three sentinels (quorum 2) that fail over after 1 s of
/// silence. Every process is killed on drop.
pub struct Sentinels {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
    password: Option<String>,
}

impl Sentinels {
    /// Spawns them all and waits until the sentinels know each other and the replica is in
    /// sync. With `password`, the data nodes require it (and the sentinels use it).
    pub fn spawn(password: Option<&str>) -> Self {
        let mut args: Vec<String> = ["--repl-diskless-sync-delay", "0"]
            .map(String::from)
            .to_vec();
        if let Some(password) = password {
            args.extend(["--requirepass", password, "--masterauth", password].map(String::from));
        }
        let primary = RedisServer::spawn_with(&as_strs(&args));
        let mut replica_args = args.clone();
        replica_args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port().to_string(),
        ]);
        let replica = RedisServer::spawn_with(&as_strs(&replica_args));
        let mut conf = format!(
            "sentinel monitor {MASTER} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 4000\n",
            primary.port()
        );
        if let Some(password) = password {
            conf.push_str(&format!("sentinel auth-pass {MASTER} {password}\n"));
        }
        let sentinels = (0..3).map(|_| RedisServer::spawn_sentinel(&conf)).collect();
        let set = Sentinels {
            primary,
            replica,
            sentinels,
            password: password.map(String::from),
        };
        set.wait_until_ready();
        set
    }

    /// `host:port` of each sentinel.
    pub fn addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::addr).collect()
    }

    /// `redis-cli` against a data node (with the password) or a sentinel.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &port.to_string()]);
        if let Some(password) = &self.password
            && !self.sentinels.iter().any(|s| s.port() == port)
        {
            command.args(["-a", password, "--no-auth-warning"]);
        }
        command
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = self
                .cli(self.replica.port(), &["info", "replication"])
                .contains("master_link_status:up");
            let known = self.sentinels.iter().all(|sentinel| {
                let master = self.cli(sentinel.port(), &["sentinel", "master", MASTER]);
                let lines: Vec<&str> = master.lines().collect();
                let field = |name: &str| {
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|at| lines.get(at + 1))
                        .copied()
                };
                field("num-other-sentinels") == Some("2") && field("num-slaves") == Some("1")
            });
            if synced && known {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels never got ready (replica synced: {synced})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port of the primary the first live sentinel names.
    pub fn named_primary(&self) -> Option<u16> {
        self.sentinels
            .iter()
            .filter(|s| s.pid().is_some())
            .find_map(|sentinel| named_by(sentinel.port()))
    }

    /// Waits until every live sentinel names the node on `port` and it says it is primary.
    pub fn wait_for_primary(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let named = self
                .sentinels
                .iter()
                .filter(|s| s.pid().is_some())
                .all(|s| {
                    self.cli(s.port(), &["sentinel", "get-master-addr-by-name", MASTER])
                        .lines()
                        .nth(1)
                        == Some(&port.to_string())
                });
            if named && self.cli(port, &["role"]).starts_with("master") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels never promoted the node on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
