//! Test support: real `redis-server` processes on free loopback ports, and a stand-in
//! database ([`db`]).
//!
//! Each test binary shares one server ([`shared_redis`]) and isolates tests by key prefix
//! ([`unique_prefix`]); tests that kill, pause or reconfigure a server spawn their own
//! ([`RedisServer::spawn`]). Servers die with the test process: spawned ones on drop, and all
//! of them through `PR_SET_PDEATHSIG` if the process dies first.
#![allow(dead_code)]

pub mod db;
pub mod faulty;
pub mod monitor;
pub mod proxy;
pub mod sentinel;

/// Defines, for each named `async fn test<S: Store>(store: S, prefix: &str)`, one
/// `#[tokio::test]` per store: `memory::test`, `redis::test` (shared redis-server) and
/// `cluster::test` (shared cluster), each with a key prefix of its own.
#[allow(unused_macros)]
macro_rules! on_every_store {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let prefix = super::support::unique_prefix(stringify!($test));
                    super::$test(tower_caching::store::MemoryStore::new(), &prefix).await;
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let prefix = super::support::unique_prefix(stringify!($test));
                    super::$test(super::support::shared_redis_store().await, &prefix).await;
                }
            )*
        }
        #[cfg(feature = "cluster")]
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let prefix = super::support::unique_prefix(stringify!($test));
                    super::$test(super::support::shared_cluster_store().await, &prefix).await;
                }
            )*
        }
    };
}

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A redis-server child process on `127.0.0.1:port`, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    extra_args: Vec<String>,
    /// Its own directory: a replica's sync writes `dump.rdb` there, and another server
    /// starting in the same directory would load it.
    dir: std::path::PathBuf,
    /// For a sentinel, its configuration file (in `dir`; the sentinel rewrites it).
    sentinel_conf: Option<std::path::PathBuf>,
}

impl RedisServer {
    /// A fresh server with no persistence.
    pub fn spawn() -> Self {
        Self::spawn_with(&[])
    }

    /// A fresh server with extra `redis-server` arguments (e.g. `["--requirepass", "pw"]`).
    pub fn spawn_with(extra_args: &[&str]) -> Self {
        Self::spawn_inner(extra_args, None)
    }

    /// A `redis-server --sentinel` with `conf` as its configuration file.
    pub fn spawn_sentinel(conf: &str) -> Self {
        Self::spawn_inner(&[], Some(conf))
    }

    fn spawn_inner(extra_args: &[&str], sentinel_conf: Option<&str>) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "{}-{:016x}",
                unique_prefix("redis"),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).expect("cannot create a directory for redis-server");
            let sentinel_conf = sentinel_conf.map(|conf| {
                let path = dir.join("sentinel.conf");
                std::fs::write(&path, conf).expect("cannot write sentinel.conf");
                path
            });
            let mut server = RedisServer {
                child: None,
                port,
                extra_args: extra_args.clone(),
                dir,
                sentinel_conf,
            };
            match server.start() {
                Ok(()) => return server,
                Err(error) => last_error = error,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    fn start(&mut self) -> Result<(), String> {
        let mut command = Command::new("redis-server");
        if let Some(conf) = &self.sentinel_conf {
            command.arg(conf).arg("--sentinel");
        }
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.to_string_lossy()])
            .args(["--logfile", ""])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the server when the
        // thread that spawned it dies, so a crashed test run leaves no server behind.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                panic!(
                    "redis-server is not installed: the tests start their own servers \
                     (apt-get install -y redis-server)"
                )
            }
            e.to_string()
        })?;
        let pid = child.id();
        self.child = Some(child);
        let password = self.password();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // Whoever answers on the port must be this child: a port freed by a killed
            // server can be taken by another test's server (or relay) before the restart,
            // and two tests sharing one Redis read each other's keys and queues.
            match answering_pid(self.port, password.as_deref()) {
                Some(answering) if answering == pid => return Ok(()),
                Some(answering) => {
                    self.kill();
                    return Err(format!(
                        "port {} is taken by another redis-server (pid {answering})",
                        self.port
                    ));
                }
                None => {}
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited at start: {status}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        Err(format!("redis-server on port {} did not answer", self.port))
    }

    /// The `--requirepass` password, if the server has one.
    fn password(&self) -> Option<String> {
        self.extra_args
            .iter()
            .position(|arg| arg == "--requirepass")
            .and_then(|at| self.extra_args.get(at + 1).cloned())
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to die.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, after [`RedisServer::kill`]. Panics if
    /// the port stays taken by another process for 10 s: a test must never go on against
    /// someone else's server.
    pub fn restart(&mut self) {
        if let Err(error) = self.try_restart(Duration::from_secs(10)) {
            panic!("restart failed: {error}");
        }
    }

    /// [`RedisServer::restart`], trying for at most `budget`.
    pub fn try_restart(&mut self, budget: Duration) -> Result<(), String> {
        self.kill();
        let deadline = Instant::now() + budget;
        loop {
            match self.start() {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() > deadline => return Err(error),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The process id of the server, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGSTOP (`true`) or SIGCONT (`false`): a server that stalls silently.
    pub fn pause(&self, paused: bool) {
        if let Some(child) = &self.child {
            let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.pause(false);
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        reserved_ports().lock().unwrap().remove(&self.port);
    }
}

/// The ports of this process's servers, running or killed for a restart: never handed out
/// again while their server lives.
fn reserved_ports() -> &'static std::sync::Mutex<std::collections::HashSet<u16>> {
    static PORTS: OnceLock<std::sync::Mutex<std::collections::HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(Default::default)
}

/// A free loopback port, reserved for a server of this process until it is dropped.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("no free loopback port");
        if reserved_ports().lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// The process id of the redis-server answering on `port` (`INFO server`), after `AUTH`
/// if it has a password; `None` if nothing answers (yet).
fn answering_pid(port: u16, password: Option<&str>) -> Option<u32> {
    fn command(parts: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", parts.len()).into_bytes();
        for part in parts {
            out.extend(format!("${}\r\n", part.len()).bytes());
            out.extend(part.bytes());
            out.extend(b"\r\n");
        }
        out
    }
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut request = Vec::new();
    if let Some(password) = password {
        request.extend(command(&["AUTH", password]));
    }
    request.extend(command(&["INFO", "server"]));
    stream.write_all(&request).ok()?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    // The pid line comes early in `INFO server`; read until it is complete.
    loop {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(rest) = text.split("process_id:").nth(1)
            && let Some(line) = rest.split("\r\n").next().filter(|_| rest.contains("\r\n"))
        {
            return line.trim().parse().ok();
        }
        if text.starts_with('-') && text.contains("\r\n") {
            // -LOADING, -NOAUTH...: a server, but not one that can say who it is yet.
            return None;
        }
    }
}

/// The redis-server shared by every test of this binary. It is spawned from a thread that
/// lives as long as the process, so it dies with the process (a test thread would kill it
/// when its test ends).
pub fn shared_redis() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let server = RedisServer::spawn();
            sender.send(server.url()).expect("test thread gone");
            loop {
                std::thread::park();
            }
        });
        receiver.recv().expect("the redis-server thread died")
    })
}

/// A key prefix no other test of this process uses.
pub fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{test}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Redis store on the shared server.
pub async fn shared_redis_store() -> tower_caching::store::RedisStore {
    use tower_caching::store::{RedisConfig, RedisStore};
    RedisStore::connect(RedisConfig::new(shared_redis()).command_timeout(Duration::from_secs(2)))
        .await
        .expect("cannot connect to the test redis-server")
}

/// A plain redis-rs connection to a server, for tests that plant or inspect bytes. Without
/// redis-rs's default timeouts (500 ms per response): planting 50 MiB, or any command on a
/// loaded machine, may take longer, and the test's own bounds are what it checks.
pub async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(10)))
        .set_response_timeout(Some(std::time::Duration::from_secs(30)));
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("raw redis connection")
}

/// How many times the server at `url` ran `command` since it started or since
/// [`reset_command_stats`] (`INFO commandstats`).
#[allow(dead_code)]
pub async fn command_calls(url: &str, command: &str) -> u64 {
    let mut raw = raw_connection(url).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw)
        .await
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
    info.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count of calls"))
}

/// Zeroes the server's command counts (`CONFIG RESETSTAT`).
#[allow(dead_code)]
pub async fn reset_command_stats(url: &str) {
    let mut raw = raw_connection(url).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut raw)
        .await
        .expect("CONFIG RESETSTAT");
}

/// A Redis Cluster of `redis-server --cluster-enabled yes` processes on loopback, with slots
/// spread over the primaries by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `primaries` primaries with `replicas` replicas each.
    pub fn spawn(primaries: usize, replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
            .map(|_| {
                // Process ids are reused: a random name, and no file left from an earlier run
                // (a node that finds one rejoins that old cluster).
                let name = format!(
                    "{}-{:016x}.conf",
                    unique_prefix("cluster-nodes"),
                    fastrand::u64(..)
                );
                let config = std::env::temp_dir().join(name);
                let _ = std::fs::remove_file(&config);
                let config = config.to_string_lossy().into_owned();
                RedisServer::spawn_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &config,
                    "--cluster-node-timeout",
                    "1000",
                    // Replicas in sync at once (the default waits 5 s for more replicas),
                    // and allowed to take over however long the primary has been gone.
                    "--repl-diskless-sync-delay",
                    "0",
                    "--cluster-replica-validity-factor",
                    "0",
                    "--appendonly",
                    "no",
                ])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(node.addr());
        }
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let output = create
            .output()
            .expect("redis-cli is needed to create a test cluster");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok();
        if replicas > 0 {
            cluster.wait_for_replicas();
        }
        cluster
    }

    /// Waits until every live node reports `cluster_state:ok`.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port().to_string(), "cluster", "info"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster never became ok: {info}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Waits until every replica is in sync with its primary.
    fn wait_for_replicas(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port().to_string(), "info", "replication"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "a replica never synced: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Waits until the live nodes have marked the node on `port` as failed and the cluster
    /// is whole again (its replica promoted).
    pub fn wait_for_failover(&self, port: u16) {
        let live = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let nodes = Command::new("redis-cli")
                .args(["-p", &live.port().to_string(), "cluster", "nodes"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let failed = nodes.lines().any(|line| {
                line.contains(&format!(":{port}@"))
                    && line
                        .split_whitespace()
                        .nth(2)
                        .is_some_and(|flags| flags.split(',').any(|f| f == "fail"))
            });
            if failed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the node on {port} was never marked failed: {nodes}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_until_ok();
    }

    /// `host:port` of every node.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }
}

/// A cluster of three primaries shared by every test of this binary (see [`shared_redis`]).
pub fn shared_cluster() -> &'static [String] {
    static ADDRS: OnceLock<Vec<String>> = OnceLock::new();
    ADDRS.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let cluster = RedisCluster::spawn(3, 0);
            sender.send(cluster.addrs()).expect("test thread gone");
            loop {
                std::thread::park();
            }
        });
        receiver.recv().expect("the cluster thread died")
    })
}

/// A cluster store on the shared cluster.
#[cfg(feature = "cluster")]
pub async fn shared_cluster_store() -> tower_caching::store::RedisClusterStore {
    use tower_caching::store::{RedisClusterConfig, RedisClusterStore};
    RedisClusterStore::connect(
        RedisClusterConfig::new(shared_cluster().to_vec())
            .command_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("cannot connect to the test cluster")
}

/// Waits until `check` holds, polling every few milliseconds; panics after `limit`.
pub async fn within(limit: std::time::Duration, check: impl AsyncFn() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "still not so after {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The cache hits a registry has counted, over every strategy.
#[cfg(feature = "metrics")]
pub fn hits(registry: &prometheus::Registry) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "tower_caching_cache_hits_total")
        .flat_map(|f| {
            f.get_metric()
                .iter()
                .map(|m| m.get_counter().get_value())
                .collect::<Vec<_>>()
        })
        .sum()
}
