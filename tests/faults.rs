//! Faults injected for real: redis-server paused (SIGSTOP), killed (SIGKILL) and restarted
//! under concurrent load, with a circuit breaker in front of the store. The load test prints
//! its figures (run with `--nocapture` to see them): requests sent, failed, slower than the
//! bound, and writes acknowledged against writes found in the database.
#![cfg(all(feature = "redis", feature = "metrics"))]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::RedisServer;
use support::db::{CreateEntry, Db, Entry, GetEntry, UpdateMetrics, entry};
use tower::{Service, ServiceExt};
use tower_caching::key::{Key, KeyBuilder};
use tower_caching::metrics::Metrics;
use tower_caching::store::{CircuitBreaker, RedisConfig, RedisStore, Store, StoreError};
use tower_caching::{Cache, CacheLayer};
use tower_layer::Layer;

const COMMAND_TIMEOUT: Duration = Duration::from_millis(50);

async fn redis_store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(
        RedisConfig::new(server.url())
            .command_timeout(COMMAND_TIMEOUT)
            .connect_timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap()
}

fn gauge(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .find(|family| family.name() == name)
        .and_then(|family| {
            family.get_metric().first().map(|m| {
                if family.get_field_type() == prometheus::proto::MetricType::GAUGE {
                    m.get_gauge().get_value()
                } else {
                    m.get_counter().get_value()
                }
            })
        })
        .unwrap_or(f64::NAN)
}

#[tokio::test]
async fn the_breaker_fails_fast_while_redis_stalls_and_closes_when_it_is_back() {
    let server = RedisServer::spawn();
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder().register(&registry).unwrap();
    let store = CircuitBreaker::builder(redis_store(&server).await)
        .failures(3)
        .open_for(Duration::from_millis(300))
        .metrics(&metrics)
        .build();
    let key = Key::new("k").unwrap();
    store.set(&key, b"v".to_vec().into(), None).await.unwrap();

    server.pause(true);
    // Three keys: a key whose read timed out is not read again while its value is looked at.
    for i in 0..3 {
        let started = Instant::now();
        assert!(matches!(
            store.get(&Key::new(format!("k{i}")).unwrap()).await,
            Err(StoreError::Timeout { .. })
        ));
        assert!(started.elapsed() >= COMMAND_TIMEOUT);
    }
    assert!(store.is_open());
    assert_eq!(gauge(&registry, "tower_caching_cache_circuit_state"), 1.0);
    // Open: nothing is sent, nobody waits.
    let started = Instant::now();
    for _ in 0..100 {
        assert!(matches!(
            store.get(&key).await,
            Err(StoreError::Unavailable)
        ));
    }
    // 100 timeouts would take 5 s; a margin for a loaded machine, still far from that.
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // Half-open: one probe, which times out, opens it again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(matches!(
        store.get(&key).await,
        Err(StoreError::Timeout { .. })
    ));
    assert!(matches!(
        store.get(&key).await,
        Err(StoreError::Unavailable)
    ));

    server.pause(false);
    tokio::time::sleep(Duration::from_millis(350)).await;
    // The probe succeeds (the connection may need a moment after the stall): closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match store.get(&key).await {
            Ok(value) => {
                assert_eq!(value.unwrap().bytes().as_ref(), b"v");
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(error) => panic!("never recovered: {error}"),
        }
    }
    assert!(!store.is_open());
    assert_eq!(gauge(&registry, "tower_caching_cache_circuit_state"), 0.0);
    assert!(gauge(&registry, "tower_caching_cache_circuit_opened_total") >= 2.0);
}

/// What the load saw.
#[derive(Default)]
struct Figures {
    sent: AtomicU64,
    failed: AtomicU64,
    slow: AtomicU64,
    slowest_micros: AtomicU64,
}

impl Figures {
    fn record(&self, started: Instant, ok: bool, bound: Duration) {
        let took = started.elapsed();
        self.sent.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if took > bound {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
        self.slowest_micros
            .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_and_no_write_is_lost_while_redis_is_killed_and_paused() {
    let mut server = RedisServer::spawn();
    let db = Db::default();
    db.latency_ms.store(2, Ordering::SeqCst);
    for id in 0..50 {
        db.insert(entry(&id.to_string(), "seed"));
    }
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder().register(&registry).unwrap();
    let store = CircuitBreaker::builder(redis_store(&server).await)
        .failures(5)
        .open_for(Duration::from_millis(500))
        .metrics(&metrics)
        .build();
    let cache = |m: &Metrics| Cache::builder(store.clone()).metrics(m.clone());
    let reads: Cache<Option<Entry>, _> = cache(&metrics).build();
    let created: Cache<Entry, _> = reads.typed();
    let counters: Cache<u64, _> = cache(&metrics).build();

    let reader = CacheLayer::cache_aside(reads.clone()).layer(db.clone());
    let writer = CacheLayer::write_through(created.clone()).layer(db.clone());
    let metrics_writer = CacheLayer::write_behind(counters.clone())
        .value(|r: &UpdateMetrics| Some(r.seq))
        .batch_interval(Duration::from_millis(100))
        .layer(db.clone());

    // A request may wait for one command timeout before the cache gives up (the breaker
    // removes even that once it opens); the rest is the database and a busy machine.
    let bound = COMMAND_TIMEOUT + Duration::from_millis(200);
    let figures = Arc::new(Figures::default());
    let acknowledged: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..4u64 {
        let (reader, writer, mut metrics_writer) =
            (reader.clone(), writer.clone(), metrics_writer.clone());
        let (figures, acknowledged, stop) = (figures.clone(), acknowledged.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let keys = KeyBuilder::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let id = fastrand::u32(0..50).to_string();
                let started = Instant::now();
                let read = reader
                    .clone()
                    .oneshot(GetEntry {
                        keys: keys.clone(),
                        id: id.clone(),
                    })
                    .await;
                figures.record(started, read.is_ok(), bound);

                let ispb = format!("w{worker}-{}", seq % 10);
                let started = Instant::now();
                let update = UpdateMetrics {
                    keys: keys.clone(),
                    ispb: ispb.clone(),
                    seq,
                };
                let queued = match metrics_writer.ready().await {
                    Ok(service) => service.call(update).await,
                    Err(e) => Err(e),
                };
                figures.record(started, queued.is_ok(), bound);
                if queued.is_ok() {
                    acknowledged.lock().unwrap().insert(ispb, seq);
                }

                if seq.is_multiple_of(5) {
                    let started = Instant::now();
                    let created = writer
                        .clone()
                        .oneshot(CreateEntry {
                            keys: keys.clone(),
                            entry: entry(&id, &format!("w{worker} #{seq}")),
                        })
                        .await;
                    figures.record(started, created.is_ok(), bound);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    let phase = Duration::from_millis(1000);
    tokio::time::sleep(phase).await;
    server.kill();
    tokio::time::sleep(phase).await;
    server.restart();
    tokio::time::sleep(phase).await;
    server.pause(true);
    tokio::time::sleep(phase).await;
    server.pause(false);
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let flushed = counters.close().await.unwrap();

    let acknowledged = acknowledged.lock().unwrap().clone();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|(ispb, seq)| db.metrics(ispb) != Some(**seq))
        .collect();
    let hits = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "tower_caching_cache_hits_total")
        .flat_map(|f| {
            f.get_metric()
                .iter()
                .map(|m| m.get_counter().get_value())
                .collect::<Vec<_>>()
        })
        .sum::<f64>();
    let figures_line = format!(
        "faults: requests sent {}, failed {}, slower than {:?}: {}, slowest {:?}; \
         write-behind keys acknowledged {}, written with their last value {}, lost {}; \
         flushed at close {flushed}; cache hits {hits}; circuit opened {} times",
        figures.sent.load(Ordering::Relaxed),
        figures.failed.load(Ordering::Relaxed),
        bound,
        figures.slow.load(Ordering::Relaxed),
        Duration::from_micros(figures.slowest_micros.load(Ordering::Relaxed)),
        acknowledged.len(),
        acknowledged.len() - lost.len(),
        lost.len(),
        gauge(&registry, "tower_caching_cache_circuit_opened_total"),
    );
    println!("{figures_line}");
    assert_eq!(figures.failed.load(Ordering::Relaxed), 0, "{figures_line}");
    assert_eq!(figures.slow.load(Ordering::Relaxed), 0, "{figures_line}");
    assert!(lost.is_empty(), "lost writes {lost:?}; {figures_line}");
    assert_eq!(db.reordered(), vec![], "{figures_line}");
    assert!(figures.sent.load(Ordering::Relaxed) > 500, "{figures_line}");
    assert!(hits > 0.0, "caching never worked: {figures_line}");
    assert!(
        gauge(&registry, "tower_caching_cache_circuit_opened_total") >= 1.0,
        "{figures_line}"
    );
}

/// The repairs a stalled Redis is owed show in `{ns}_cache_repairs_owed`, and go back to
/// zero once Redis answers and they are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owed_repairs_are_a_gauge_that_returns_to_zero() {
    let server = RedisServer::spawn();
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder().register(&registry).unwrap();
    let store = CircuitBreaker::builder(redis_store(&server).await)
        .open_for(Duration::from_millis(200))
        .metrics(&metrics)
        .build();
    assert_eq!(gauge(&registry, "tower_caching_cache_repairs_owed"), 0.0);
    server.pause(true);
    let keys: Vec<Key> = (0..3).map(|i| Key::new(format!("k{i}")).unwrap()).collect();
    for key in &keys {
        assert!(store.delete(key).await.is_err());
    }
    assert_eq!(store.repairs_owed(), 3);
    assert_eq!(gauge(&registry, "tower_caching_cache_repairs_owed"), 3.0);
    server.pause(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.repairs_owed() > 0 {
        assert!(Instant::now() < deadline, "never repaired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gauge(&registry, "tower_caching_cache_repairs_owed"), 0.0);
}

/// The harness itself: a server restarted on a port that another redis-server took while it
/// was down refuses to go on (two tests sharing one Redis read each other's keys and queues:
/// `faults_under_load` once answered values that only a concurrent test had written), and
/// restarts for real once the port is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_never_adopts_another_server_on_its_port() {
    let mut server = RedisServer::spawn();
    let port = server.port();
    server.kill();
    let mut squatter = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--logfile", ""])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    support::within(Duration::from_secs(10), async || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;

    let refused = server.try_restart(Duration::from_millis(500));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("taken by another")),
        "{refused:?}"
    );
    squatter.kill().unwrap();
    squatter.wait().unwrap();

    server.try_restart(Duration::from_secs(10)).unwrap();
    let mut raw = support::raw_connection(&server.url()).await;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut raw)
        .await
        .unwrap();
    let pid: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap();
    assert_eq!(Some(pid), server.pid());
}
