//! The flagship example under load (30 requests in flight, GET/POST/PUT mixed) while a
//! fault hits Redis: through a fault-injecting relay (latency, black hole, resets,
//! refusals) or on the server itself (`CLIENT PAUSE`, `DEBUG SLEEP`, `maxmemory` with
//! `noeviction`, a restart). For each fault: no failed request, no acknowledged write
//! missing from the database, and no key answering older than the database 5 s after Redis
//! is healthy again. Each run prints its figures (`--nocapture`); `FAULT_SECONDS` sets how
//! long a fault lasts (default 3; BENCHMARKS.md used 10). Columns: scenario, requests,
//! failed, p99 healthy, p99 and max during the fault, acknowledged writes lost, keys stale
//! 5 s after the heal, requests/s healthy and during the fault.
#![cfg(all(feature = "redis", feature = "metrics"))]

#[path = "../examples/entries_service/app.rs"]
mod app;
mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::{App, AppConfig, CacheBackend, Database, Entry, ParticipantMetrics};
use support::RedisServer;
use support::proxy::{Fault, Proxy};
use tower_caching::store::RedisConfig;

const IN_FLIGHT: usize = 30;
const ENTRIES: usize = 240;
const COMMAND_TIMEOUT: Duration = Duration::from_millis(50);

fn fault_duration() -> Duration {
    let seconds = std::env::var("FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(seconds)
}

/// A temporary SQLite file, removed on drop.
struct TempDb(PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", ".hot.json"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

fn entry(id: &str, owner: &str) -> Entry {
    Entry {
        id: id.into(),
        key: format!("+55119{id}"),
        key_type: "PHONE".into(),
        ispb: "12345678".into(),
        owner_name: owner.into(),
    }
}

/// Which phase a request was sent in (the first second, a cold cache, is not counted).
const HEALTHY: u8 = 0;
const FAULTY: u8 = 1;
const RECOVERING: u8 = 2;
const WARMING: u8 = 3;

#[derive(Default)]
struct Figures {
    sent: AtomicU64,
    failed: AtomicU64,
    /// Latencies per phase, in microseconds.
    latencies: [Mutex<Vec<u64>>; 4],
    failures: Mutex<Vec<String>>,
}

impl Figures {
    fn record(&self, phase: u8, started: Instant, outcome: Result<(), String>) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.latencies[phase as usize]
            .lock()
            .unwrap()
            .push(started.elapsed().as_micros() as u64);
        if let Err(why) = outcome {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut failures = self.failures.lock().unwrap();
            if failures.len() < 5 {
                failures.push(why);
            }
        }
    }

    /// p99 and max of a phase.
    fn tail(&self, phase: u8) -> (Duration, Duration) {
        let mut all = self.latencies[phase as usize].lock().unwrap().clone();
        all.sort_unstable();
        if all.is_empty() {
            return (Duration::ZERO, Duration::ZERO);
        }
        let p99 = all[(all.len() * 99 / 100).min(all.len() - 1)];
        (
            Duration::from_micros(p99),
            Duration::from_micros(*all.last().unwrap()),
        )
    }

    fn count(&self, phase: u8) -> usize {
        self.latencies[phase as usize].lock().unwrap().len()
    }
}

/// What the load was told was done: each worker owns its keys, so the last acknowledged
/// write of each is known.
#[derive(Default)]
struct Acknowledged {
    entries: Mutex<HashMap<String, String>>,
    metrics: Mutex<HashMap<String, u64>>,
    /// Every write of each entry, with when it was sent and answered: printed for the
    /// first keys that end up lost or stale, so that a failure says what happened to them.
    history: Mutex<HashMap<String, Vec<String>>>,
}

impl Acknowledged {
    fn note(&self, id: &str, event: String) {
        self.history
            .lock()
            .unwrap()
            .entry(id.to_owned())
            .or_default()
            .push(event);
    }

    fn history(&self, id: &str) -> Vec<String> {
        self.history
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default()
    }
}

/// The faults.
#[derive(Clone, Copy, Debug)]
enum Scenario {
    Latency20ms,
    Latency200ms,
    BlackHole,
    Resets,
    Refusals,
    ClientPause,
    DebugSleep,
    MaxMemory,
    Restart,
}

struct Outcome {
    scenario: Scenario,
    requests: u64,
    failed: u64,
    healthy_p99: Duration,
    fault_p99: Duration,
    fault_max: Duration,
    lost: usize,
    stale: usize,
    /// Requests per second while healthy, and during the fault.
    throughput: f64,
    fault_throughput: f64,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "| {:?} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {:.0}/s | {:.0}/s |",
            self.scenario,
            self.requests,
            self.failed,
            self.healthy_p99.as_secs_f64() * 1e3,
            self.fault_p99.as_secs_f64() * 1e3,
            self.fault_max.as_secs_f64() * 1e3,
            self.lost,
            self.stale,
            self.throughput,
            self.fault_throughput,
        )
    }
}

async fn run(scenario: Scenario, durable: bool) -> Outcome {
    let mut server = RedisServer::spawn_with(&["--enable-debug-command", "yes"]);
    let proxy = Proxy::start(server.addr()).await;
    let db_file = TempDb(std::env::temp_dir().join(format!(
        "{}.db",
        support::unique_prefix("faults-under-load")
    )));
    let database_url = format!("sqlite://{}", db_file.0.display());
    let app = Arc::new(
        App::build(AppConfig {
            database_url: database_url.clone(),
            durable_write_behind: durable,
            cache: CacheBackend::Redis(
                RedisConfig::new(proxy.url())
                    .command_timeout(COMMAND_TIMEOUT)
                    .connect_timeout(Duration::from_millis(200)),
            ),
            write_behind_interval: Duration::from_millis(200),
            key_prefix: String::new(),
            hot_keys_file: format!("{}.hot.json", db_file.0.display()).into(),
            warm_budget: Duration::from_secs(1),
        })
        .await
        .expect("the example builds"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = app.router();
    let serving = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .unwrap();
    for i in 0..ENTRIES {
        let id = format!("e{i}");
        let response = client
            .post(format!("{base}/entries"))
            .json(&entry(&id, "seed"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }
    if matches!(scenario, Scenario::Latency20ms) {
        proxy.latency(Duration::from_millis(20));
    }

    let figures = Arc::new(Figures::default());
    let acknowledged = Arc::new(Acknowledged::default());
    let phase = Arc::new(AtomicU8::new(WARMING));
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..IN_FLIGHT {
        let (client, base) = (client.clone(), base.clone());
        let (figures, acknowledged, phase, stop) = (
            figures.clone(),
            acknowledged.clone(),
            phase.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut seq = 0u64;
            let began = began;
            let ispb = format!("{:08}", 10_000_000 + worker);
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let now = phase.load(Ordering::Relaxed);
                let started = Instant::now();
                let outcome = match seq % 5 {
                    // A write of one of the worker's own entries: a new owner each time.
                    0 => {
                        let id =
                            format!("e{}", (worker + IN_FLIGHT * (seq as usize / 5)) % ENTRIES);
                        let owner = format!("w{worker}#{seq}");
                        let sent = began.elapsed();
                        let outcome = match client
                            .post(format!("{base}/entries"))
                            .json(&entry(&id, &owner))
                            .send()
                            .await
                        {
                            Ok(r) if r.status().is_success() => {
                                acknowledged
                                    .entries
                                    .lock()
                                    .unwrap()
                                    .insert(id.clone(), owner.clone());
                                Ok(())
                            }
                            Ok(r) => Err(format!("POST /entries: {}", r.status())),
                            Err(e) => Err(format!("POST /entries: {e}")),
                        };
                        acknowledged.note(
                            &id,
                            format!(
                                "{owner} sent at {sent:?} in phase {now}, answered at {:?}: {outcome:?}",
                                began.elapsed()
                            ),
                        );
                        outcome
                    }
                    // A write-behind update of the worker's own participant.
                    1 => {
                        let metrics = ParticipantMetrics {
                            lookups: seq,
                            updates: 0,
                            errors: 0,
                        };
                        match client
                            .put(format!("{base}/participants/{ispb}/metrics"))
                            .json(&metrics)
                            .send()
                            .await
                        {
                            Ok(r) if r.status().is_success() => {
                                acknowledged
                                    .metrics
                                    .lock()
                                    .unwrap()
                                    .insert(ispb.clone(), seq);
                                Ok(())
                            }
                            Ok(r) => Err(format!("PUT metrics: {}", r.status())),
                            Err(e) => Err(format!("PUT metrics: {e}")),
                        }
                    }
                    _ => {
                        let id = format!("e{}", fastrand::usize(0..ENTRIES));
                        match client.get(format!("{base}/entries/{id}")).send().await {
                            Ok(r) if r.status().is_success() => Ok(()),
                            Ok(r) => Err(format!("GET /entries: {}", r.status())),
                            Err(e) => Err(format!("GET /entries: {e}")),
                        }
                    }
                };
                figures.record(now, started, outcome);
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    phase.store(HEALTHY, Ordering::Relaxed);
    let healthy_for = Duration::from_secs(2);
    tokio::time::sleep(healthy_for).await;
    let healthy_requests = figures.count(HEALTHY);
    phase.store(FAULTY, Ordering::Relaxed);
    let fault_began = began.elapsed();
    let mut raw = support::raw_connection(&server.url()).await;
    let fault_for = fault_duration();
    let millis = fault_for.as_millis() as u64;
    match scenario {
        Scenario::Latency20ms => tokio::time::sleep(fault_for).await,
        Scenario::Latency200ms => {
            proxy.latency(Duration::from_millis(200));
            tokio::time::sleep(fault_for).await;
            proxy.latency(Duration::ZERO);
        }
        Scenario::BlackHole => {
            proxy.set(Fault::BlackHole);
            tokio::time::sleep(fault_for).await;
            // A long black hole ends as TCP does: the connection breaks.
            proxy.set(Fault::Reset);
            proxy.set(Fault::Pass);
        }
        Scenario::Resets => {
            let until = Instant::now() + fault_for;
            while Instant::now() < until {
                proxy.set(Fault::Reset);
                tokio::time::sleep(Duration::from_millis(100)).await;
                proxy.set(Fault::Pass);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Scenario::Refusals => {
            proxy.set(Fault::Reset);
            proxy.set(Fault::Refuse);
            tokio::time::sleep(fault_for).await;
            proxy.set(Fault::Pass);
        }
        Scenario::ClientPause => {
            let _: () = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(millis)
                .arg("ALL")
                .query_async(&mut raw)
                .await
                .unwrap();
            tokio::time::sleep(fault_for).await;
        }
        Scenario::DebugSleep => {
            // DEBUG SLEEP blocks the server, and this connection with it: on its own task.
            let mut sleeper = support::raw_connection(&server.url()).await;
            let seconds = fault_for.as_secs_f64();
            let sleeping = tokio::spawn(async move {
                let _: redis::RedisResult<()> = redis::cmd("DEBUG")
                    .arg("SLEEP")
                    .arg(seconds)
                    .query_async(&mut sleeper)
                    .await;
            });
            tokio::time::sleep(fault_for).await;
            let _ = sleeping.await;
        }
        Scenario::MaxMemory => {
            let used: String = redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut raw)
                .await
                .unwrap();
            let used: u64 = used
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap();
            for (name, value) in [
                ("maxmemory-policy", "noeviction".to_string()),
                ("maxmemory", used.to_string()),
            ] {
                let _: () = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg(name)
                    .arg(value)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
            }
            tokio::time::sleep(fault_for).await;
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(0)
                .query_async(&mut raw)
                .await
                .unwrap();
        }
        Scenario::Restart => {
            server.kill();
            tokio::time::sleep(fault_for).await;
            server.restart();
        }
    }
    phase.store(RECOVERING, Ordering::Relaxed);
    println!(
        "{scenario:?}: fault from {fault_began:?} to {:?}",
        began.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    // Every acknowledged write in the database (write-behind ones once their queue ran).
    let database = Database::connect(&database_url).await.unwrap();
    let acknowledged_entries = acknowledged.entries.lock().unwrap().clone();
    let acknowledged_metrics = acknowledged.metrics.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut lost_entries = Vec::new();
    let lost = loop {
        let mut lost = 0;
        lost_entries.clear();
        for (id, owner) in &acknowledged_entries {
            let found = database.entry(id).await.unwrap();
            if found.as_ref().map(|e| &e.owner_name) != Some(owner) {
                lost += 1;
                lost_entries.push((id.clone(), found.map(|e| e.owner_name)));
            }
        }
        for (ispb, lookups) in &acknowledged_metrics {
            let found = database.metrics(ispb).await.unwrap();
            if found.map(|m| m.lookups) != Some(*lookups) {
                lost += 1;
            }
        }
        if lost == 0 || Instant::now() > deadline {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    for (id, found) in lost_entries.iter().take(3) {
        println!(
            "{scenario:?} lost {id} at {:?}: database {found:?}, writes {:#?}",
            began.elapsed(),
            acknowledged.history(id)
        );
    }

    // More than 5 s after the heal: what the service answers is what the database holds.
    let mut stale = 0;
    for i in 0..ENTRIES {
        let id = format!("e{i}");
        let stored = database.entry(&id).await.unwrap();
        let answered: Option<Entry> = client
            .get(format!("{base}/entries/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .ok();
        if answered != stored {
            if stale < 3 {
                println!(
                    "{scenario:?} stale {id} at {:?}: answered {:?}, database {:?}, writes {:#?}",
                    began.elapsed(),
                    answered.map(|e| e.owner_name),
                    stored.map(|e| e.owner_name),
                    acknowledged.history(&id)
                );
            }
            stale += 1;
        }
    }
    let (healthy_p99, _) = figures.tail(HEALTHY);
    let (fault_p99, fault_max) = figures.tail(FAULTY);
    let outcome = Outcome {
        scenario,
        requests: figures.sent.load(Ordering::Relaxed),
        failed: figures.failed.load(Ordering::Relaxed),
        healthy_p99,
        fault_p99,
        fault_max,
        lost,
        stale,
        throughput: healthy_requests as f64 / healthy_for.as_secs_f64(),
        fault_throughput: figures.count(FAULTY) as f64 / fault_for.as_secs_f64(),
    };
    println!("{outcome}");
    let failures = figures.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{scenario:?}: {failures:?}");
    database.close().await;
    app.shutdown().await;
    serving.abort();
    outcome
}

fn check(outcome: &Outcome) {
    assert_eq!(outcome.failed, 0, "{outcome}");
    assert_eq!(outcome.lost, 0, "acknowledged writes lost: {outcome}");
    assert_eq!(outcome.stale, 0, "keys older than the database: {outcome}");
}

macro_rules! scenario {
    ($name:ident, $scenario:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            check(&run($scenario, true).await);
        }
    };
}

scenario!(latency_200ms, Scenario::Latency200ms);
scenario!(black_hole, Scenario::BlackHole);
scenario!(connection_resets, Scenario::Resets);
scenario!(refused_connections, Scenario::Refusals);
scenario!(client_pause, Scenario::ClientPause);
scenario!(debug_sleep, Scenario::DebugSleep);
scenario!(maxmemory_noeviction, Scenario::MaxMemory);
scenario!(restart, Scenario::Restart);

/// A healthy Redis 20 ms away: the durable queue against the in-memory one, side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_queue_at_20ms_against_the_in_memory_queue() {
    let memory = run(Scenario::Latency20ms, false).await;
    let durable = run(Scenario::Latency20ms, true).await;
    // For this scenario the "fault" is the steady state 20 ms away.
    println!(
        "20 ms away: durable/memory throughput {:.2}, p99 {:.2}",
        durable.fault_throughput / memory.fault_throughput,
        durable.fault_p99.as_secs_f64() / memory.fault_p99.as_secs_f64()
    );
    check(&memory);
    check(&durable);
}
