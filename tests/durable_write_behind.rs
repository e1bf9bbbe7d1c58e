//! The durable write-behind queue on a Redis stream: a process that crashes with 10,000
//! acknowledged writes in flight loses none of them — a fresh instance writes them all, each
//! key ending with its last value and never going back to an older one. Then the edges:
//! a failing writer, an entry that does not decode, and Redis down when a write arrives.
//! The crash test prints its figures (run with `--nocapture`).
#![cfg(feature = "redis")]

#[macro_use]
mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use support::RedisServer;
use support::db::{Db, DbError, UpdateMetrics};
use tower::ServiceExt;
use tower_caching::key::{Key, KeyBuilder};
use tower_caching::store::{RedisConfig, RedisStore};
use tower_caching::strategy::{DeadLetter, StreamQueue};
use tower_caching::{Cache, CacheLayer};
use tower_layer::Layer;

/// The request as it travels through the stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Write {
    ispb: String,
    seq: u64,
}

/// The database's writer for [`Write`]s.
fn writer(
    db: &Db,
) -> impl tower::Service<Write, Response = (), Error = DbError, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    let keys = KeyBuilder::new();
    tower::ServiceBuilder::new()
        .map_request(move |w: Write| UpdateMetrics {
            keys: keys.clone(),
            ispb: w.ispb,
            seq: w.seq,
        })
        .service(db.clone())
}

fn layered<Conn: ConnectionLike + Clone + Send + Sync + 'static>(
    db: &Db,
    queue: StreamQueue<Conn>,
) -> (
    Cache<u64>,
    impl tower::Service<Write, Response = (), Error = DbError, Future: Send> + Clone,
) {
    layered_every(db, queue, Duration::from_millis(50))
}

/// [`layered`], its batches `interval` apart.
fn layered_every<Conn: ConnectionLike + Clone + Send + Sync + 'static>(
    db: &Db,
    queue: StreamQueue<Conn>,
    interval: Duration,
) -> (
    Cache<u64>,
    impl tower::Service<Write, Response = (), Error = DbError, Future: Send> + Clone,
) {
    let cache: Cache<u64> = Cache::in_memory();
    let keys = KeyBuilder::new();
    let service = CacheLayer::write_behind(cache.clone())
        .key(move |w: &Write| keys.metrics(&w.ispb))
        .value(|w: &Write| Some(w.seq))
        .batch_interval(interval)
        .max_batch(100)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .durable(queue)
        .layer(writer(db));
    // An instance starting: its worker writes what others left, before any write of its own.
    service.start();
    (cache, service)
}

/// A store behind a breaker that opens at the first failure, for `open_for`.
async fn breaker_on(
    server: &RedisServer,
    open_for: Duration,
) -> tower_caching::store::CircuitBreaker<RedisStore> {
    let store = RedisStore::connect(
        RedisConfig::new(server.url()).command_timeout(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    tower_caching::store::CircuitBreaker::builder(store)
        .failures(1)
        .open_for(open_for)
        .build()
}

const KEYS: usize = 2_000;
const VERSIONS: u64 = 5;

/// Enqueues `KEYS × VERSIONS` writes (each key's versions in order, keys concurrently) on
/// one runtime, kills that runtime — the crash: its worker, its in-flight writes and its
/// memory are gone — then starts a fresh instance on another runtime and waits until the
/// database holds every key's last version.
fn crash_then_recover<Conn>(make_queue: impl AsyncFn() -> StreamQueue<Conn>)
where
    Conn: ConnectionLike + Clone + Send + Sync + 'static,
{
    let db = Db::default();
    // Slow enough that the crash finds writes written, in flight, and not yet read.
    db.latency_ms.store(200, Ordering::Relaxed);

    let crashed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (enqueue_time, acknowledged) = crashed.block_on(async {
        let (_cache, service) = layered(&db, make_queue().await);
        let started = Instant::now();
        let mut acknowledged = 0;
        for seq in 1..=VERSIONS {
            let results: Vec<_> = stream::iter(0..KEYS)
                .map(|i| {
                    let service = service.clone();
                    async move {
                        service
                            .oneshot(Write {
                                ispb: format!("{i:08}"),
                                seq,
                            })
                            .await
                    }
                })
                .buffer_unordered(64)
                .collect()
                .await;
            acknowledged += results.iter().filter(|r| r.is_ok()).count();
        }
        (started.elapsed(), acknowledged)
    });
    crashed.shutdown_background();
    let written_before_crash = db.writes();
    assert_eq!(acknowledged, KEYS * VERSIONS as usize);

    // The fresh instance: another process, in effect — new cache, new worker, same stream,
    // same database. The database is fast now.
    db.latency_ms.store(0, Ordering::Relaxed);
    let fresh = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let recovered_after = fresh.block_on(async {
        let (cache, _service) = layered(&db, make_queue().await);
        let started = Instant::now();
        let all_written = || (0..KEYS).all(|i| db.metrics(&format!("{i:08}")) == Some(VERSIONS));
        while !all_written() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "after 60 s, {} of {KEYS} keys hold their last version",
                (0..KEYS)
                    .filter(|i| db.metrics(&format!("{i:08}")) == Some(VERSIONS))
                    .count()
            );
            cache.flush_pending_writes().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    });
    let reordered = db.reordered();
    println!(
        "durable write-behind: {acknowledged} writes acknowledged in {enqueue_time:?} \
         ({:.0}/s); {written_before_crash} writer calls before the crash; every key's last \
         version in the database {recovered_after:?} after the fresh instance started; \
         {} writer calls in all; {} writes went back to an older version",
        acknowledged as f64 / enqueue_time.as_secs_f64(),
        db.writes(),
        reordered.len(),
    );
    assert!(
        reordered.is_empty(),
        "older versions written last: {reordered:?}"
    );
    assert!(
        written_before_crash < (KEYS * VERSIONS as usize) as u32,
        "the first instance wrote everything before the crash: the test proves nothing"
    );
}

#[test]
fn acknowledged_writes_survive_a_crash() {
    let server = RedisServer::spawn();
    let url = server.url();
    let name = support::unique_prefix("crash");
    crash_then_recover(async || {
        let config = RedisConfig::new(url.clone()).command_timeout(Duration::from_secs(2));
        let store = RedisStore::connect(config).await.unwrap();
        StreamQueue::new(&store, &name).claim_after(Duration::from_millis(500))
    });
}

#[cfg(feature = "cluster")]
#[test]
fn acknowledged_writes_survive_a_crash_on_a_cluster() {
    use tower_caching::store::{RedisClusterConfig, RedisClusterStore};
    let nodes = support::shared_cluster().to_vec();
    let name = support::unique_prefix("crash-cluster");
    crash_then_recover(async || {
        let config = RedisClusterConfig::new(nodes.clone()).command_timeout(Duration::from_secs(2));
        let store = RedisClusterStore::connect(config).await.unwrap();
        StreamQueue::on_cluster(&store, &name).claim_after(Duration::from_millis(500))
    });
}

async fn redis_queue(server: &RedisServer, test: &str) -> StreamQueue {
    let store =
        RedisStore::connect(RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1)))
            .await
            .unwrap();
    StreamQueue::new(&store, &support::unique_prefix(test))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_keeps_failing_is_dead_lettered_in_redis_too() {
    let server = RedisServer::spawn();
    let queue = redis_queue(&server, "dead").await;
    let dead_key = queue.dead_letter_key();
    let db = Db::default();
    *db.poison_ispb.lock().unwrap() = Some("poison".into());
    let letters = Arc::new(Mutex::new(Vec::new()));
    let cache: Cache<u64> = Cache::in_memory();
    let keys = KeyBuilder::new();
    let service = CacheLayer::write_behind(cache.clone())
        .key(move |w: &Write| keys.metrics(&w.ispb))
        .value(|w: &Write| Some(w.seq))
        .max_attempts(3)
        .backoff(Duration::from_millis(5), Duration::from_millis(10))
        .on_dead_letter({
            let letters = letters.clone();
            move |letter: DeadLetter<Write>| letters.lock().unwrap().push(letter)
        })
        .durable(queue)
        .layer(writer(&db));
    for ispb in ["good", "poison"] {
        service
            .clone()
            .oneshot(Write {
                ispb: ispb.into(),
                seq: 1,
            })
            .await
            .unwrap();
    }
    cache.flush_pending_writes().await.unwrap();
    assert_eq!(db.metrics("good"), Some(1));
    {
        let letters = letters.lock().unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].request.ispb, "poison");
        assert_eq!(letters[0].attempts, 3);
    }
    let mut raw = support::raw_connection(&server.url()).await;
    let dead: u64 = redis::cmd("XLEN")
        .arg(&dead_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(dead, 1, "the dead letter is not in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_does_not_decode_is_set_aside_without_blocking_the_others() {
    let server = RedisServer::spawn();
    let queue = redis_queue(&server, "undecodable").await;
    let (stream, dead_key) = (queue.stream_key(), queue.dead_letter_key());
    let mut raw = support::raw_connection(&server.url()).await;
    // Written by an older version of the application, say.
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("k")
        .arg("metrics:old")
        .arg("r")
        .arg(&b"\xff not json"[..])
        .query_async(&mut raw)
        .await
        .unwrap();
    let db = Db::default();
    let (cache, service) = layered(&db, queue);
    service
        .clone()
        .oneshot(Write {
            ispb: "new".into(),
            seq: 7,
        })
        .await
        .unwrap();
    cache.flush_pending_writes().await.unwrap();
    assert_eq!(db.metrics("new"), Some(7));
    let dead: u64 = redis::cmd("XLEN")
        .arg(&dead_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(dead, 1);
    let left: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        left, 0,
        "written and set-aside entries are deleted from the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_write_is_written_directly_not_lost() {
    let mut server = RedisServer::spawn();
    let queue = redis_queue(&server, "down").await;
    server.kill();
    let db = Db::default();
    let (cache, service) = layered(&db, queue);
    let started = Instant::now();
    service
        .oneshot(Write {
            ispb: "x".into(),
            seq: 3,
        })
        .await
        .unwrap();
    assert_eq!(
        db.metrics("x"),
        Some(3),
        "the write was neither queued nor written"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        cache.get(&KeyBuilder::new().metrics("x")).await.unwrap(),
        Some(3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_instances_share_the_work_and_never_go_back_to_an_older_value() {
    let server = RedisServer::spawn();
    let name = support::unique_prefix("shared");
    let connect = || async {
        let store = RedisStore::connect(RedisConfig::new(server.url()))
            .await
            .unwrap();
        StreamQueue::new(&store, &name)
    };
    let db = Db::default();
    let (a_cache, a) = layered(&db, connect().await);
    let (b_cache, b) = layered(&db, connect().await);
    for i in 0..500u64 {
        let service = if i % 2 == 0 { a.clone() } else { b.clone() };
        service
            .oneshot(Write {
                ispb: format!("{}", i % 50),
                seq: i,
            })
            .await
            .unwrap();
    }
    a_cache.flush_pending_writes().await.unwrap();
    b_cache.flush_pending_writes().await.unwrap();
    for k in 0..50u64 {
        let last = 450 + k;
        assert_eq!(db.metrics(&k.to_string()), Some(last), "key {k}");
    }
    assert!(db.reordered().is_empty(), "{:?}", db.reordered());
    let key = Key::new("metrics:0").unwrap();
    assert_eq!(a_cache.get(&key).await.unwrap(), Some(450));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_of_departed_instances_are_forgotten() {
    let server = RedisServer::spawn();
    let name = support::unique_prefix("consumers");
    let db = Db::default();
    let queue = async || {
        let store = RedisStore::connect(RedisConfig::new(server.url()))
            .await
            .unwrap();
        StreamQueue::new(&store, &name).claim_after(Duration::from_millis(100))
    };
    let consumers = async |stream: &str| -> usize {
        let mut raw = support::raw_connection(&server.url()).await;
        let list: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(stream)
            .arg("writers")
            .query_async(&mut raw)
            .await
            .unwrap();
        list.len()
    };
    let stream = queue().await.stream_key();
    for _ in 0..3 {
        // An instance that writes, closes (its final flush reads its own write, so it is a
        // consumer of the group), then goes away; once closed, its worker reads nothing
        // more, so the next instance's write is delivered to the next instance. The
        // service lives until the close, as in a running application: a queue whose last
        // service is gone before the close leaves its entries to the other instances.
        let (cache, service) = layered(&db, queue().await);
        service
            .clone()
            .oneshot(Write {
                ispb: "a".into(),
                seq: 1,
            })
            .await
            .unwrap();
        cache.close().await.unwrap();
        drop(service);
    }
    assert_eq!(consumers(&stream).await, 3);
    // Idle for more than ten claim periods (the claim period is raised to twice the
    // backoff cap, 100 ms): forgotten by the next instance.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (cache, _service) = layered(&db, queue().await);
    cache.flush_pending_writes().await.unwrap();
    // Only the new instance may remain (Redis 7.2+ registers a consumer on its first read,
    // even an empty one; 7.0 only once it receives an entry).
    let left = consumers(&stream).await;
    assert!(
        left <= 1,
        "{left} consumers: departed ones are still in the group"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_writes_wait_in_redis_not_in_memory() {
    let server = RedisServer::spawn();
    let queue = redis_queue(&server, "backpressure").await;
    let stream = queue.stream_key();
    let db = Db::default();
    db.down.store(true, Ordering::SeqCst);
    let cache: Cache<u64> = Cache::in_memory();
    let keys = KeyBuilder::new();
    let service = CacheLayer::write_behind(cache.clone())
        .key(move |w: &Write| keys.metrics(&w.ispb))
        .value(|w: &Write| Some(w.seq))
        .capacity(50)
        .max_batch(20)
        .max_attempts(1_000)
        .batch_interval(Duration::from_millis(10))
        .backoff(Duration::from_millis(5), Duration::from_millis(10))
        .durable(queue)
        .layer(writer(&db));
    for i in 0..300 {
        service
            .clone()
            .oneshot(Write {
                ispb: i.to_string(),
                seq: 1,
            })
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // At most `capacity` waiting for a retry, plus the batch read just before reaching it.
    assert!(
        service.queue_depth() < 50 + 20,
        "{} writes held in memory",
        service.queue_depth()
    );
    let mut raw = support::raw_connection(&server.url()).await;
    let queued: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(queued, 300);

    db.down.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(20), cache.flush_pending_writes())
        .await
        .expect("the flush did not finish")
        .unwrap();
    assert!((0..300).all(|i| db.metrics(&i.to_string()) == Some(1)));
    let left: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_the_stream_gets_it_back() {
    let server = RedisServer::spawn();
    let queue = redis_queue(&server, "lost").await;
    let db = Db::default();
    let (cache, service) = layered(&db, queue);
    service
        .clone()
        .oneshot(Write {
            ispb: "a".into(),
            seq: 1,
        })
        .await
        .unwrap();
    cache.flush_pending_writes().await.unwrap();
    assert_eq!(db.metrics("a"), Some(1));
    // As after a restart without persistence: the stream and its group are gone.
    let mut raw = support::raw_connection(&server.url()).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    // The service stays alive (as in a running application): its queue is flushed below.
    service
        .clone()
        .oneshot(Write {
            ispb: "a".into(),
            seq: 2,
        })
        .await
        .unwrap();
    // The first flush may meet the missing group; the next recreates it.
    let _ = cache.flush_pending_writes().await;
    cache.flush_pending_writes().await.unwrap();
    assert_eq!(db.metrics("a"), Some(2));
}

/// Behind the cache's circuit breaker, the queue's `XADD` costs no timeout once the circuit
/// is open: with Redis stalled, write-behind writes are written directly at once, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_breaker_a_stalled_redis_costs_a_write_at_most_one_timeout() {
    use tower_caching::store::CircuitBreaker;
    let server = RedisServer::spawn();
    let timeout = Duration::from_millis(50);
    let store = RedisStore::connect(RedisConfig::new(server.url()).command_timeout(timeout))
        .await
        .unwrap();
    let store = CircuitBreaker::builder(store)
        .failures(2)
        .open_for(Duration::from_secs(30))
        .build();
    let queue = StreamQueue::new(&store, &support::unique_prefix("breaker"));
    let db = Db::default();
    let (_cache, service) = layered(&db, queue);
    service
        .clone()
        .oneshot(Write {
            ispb: "a".into(),
            seq: 0,
        })
        .await
        .unwrap();

    server.pause(true);
    let mut slow = 0;
    for seq in 1..=20 {
        let started = Instant::now();
        service
            .clone()
            .oneshot(Write {
                ispb: "a".into(),
                seq,
            })
            .await
            .unwrap();
        assert_eq!(
            db.metrics("a"),
            Some(seq),
            "written directly, before the answer"
        );
        if started.elapsed() >= timeout {
            slow += 1;
        }
    }
    server.pause(false);
    assert!(store.is_open());
    assert!(slow <= 2, "{slow} writes paid a timeout");
}

/// The worker's Redis bookkeeping never holds the writers: with Redis 300 ms away, a write
/// holds its database connection for its own 5 ms, not until Redis acknowledged the writes
/// before it (a connection is held from acquiring it until the write's future is dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_acknowledgements_do_not_hold_the_writers() {
    use support::proxy::Proxy;

    /// A database connection, held from acquiring to being dropped.
    struct Connection {
        acquired: Instant,
        held: Arc<Mutex<Vec<Duration>>>,
    }
    impl Drop for Connection {
        fn drop(&mut self) {
            self.held.lock().unwrap().push(self.acquired.elapsed());
        }
    }

    let server = RedisServer::spawn();
    let proxy = Proxy::start(server.addr()).await;
    let store =
        RedisStore::connect(RedisConfig::new(proxy.url()).command_timeout(Duration::from_secs(5)))
            .await
            .unwrap();
    let queue = StreamQueue::new(&store, &support::unique_prefix("acks"));
    let held: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let database = {
        let held = held.clone();
        tower::service_fn(move |_: Write| {
            let connection = Connection {
                acquired: Instant::now(),
                held: held.clone(),
            };
            async move {
                let _connection = connection;
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, DbError>(())
            }
        })
    };
    let cache: Cache<u64> = Cache::in_memory();
    let keys = KeyBuilder::new();
    let service = CacheLayer::write_behind(cache.clone())
        .key(move |w: &Write| keys.metrics(&w.ispb))
        .value(|w: &Write| Some(w.seq))
        .batch_interval(Duration::from_millis(50))
        .max_batch(100)
        .durable(queue)
        .layer(database);
    // A writer that waited for Redis would hold its connection for a round trip (0.8 s);
    // its own work takes 5 ms. The bound between them leaves a loaded machine 0.4 s.
    proxy.latency(Duration::from_millis(800));
    futures_util::future::join_all((0..20).map(|i| {
        service.clone().oneshot(Write {
            ispb: format!("k{i}"),
            seq: 1,
        })
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.lock().unwrap().len() < 20 {
        assert!(Instant::now() < deadline, "not all written");
        let _ = cache.flush_pending_writes().await;
    }
    let longest = held.lock().unwrap().iter().copied().max().unwrap();
    assert!(
        longest < Duration::from_millis(400),
        "a write held its connection for {longest:?}"
    );
}

/// An instance that dies holding entries (read, not written) is taken over once its
/// liveness lapses — a few seconds — not after the 60 s claim period.
#[test]
fn a_departed_instance_is_taken_over_within_seconds_not_the_claim_period() {
    let server = RedisServer::spawn();
    let name = support::unique_prefix("departed");
    let queue = async || {
        let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(2));
        let store = RedisStore::connect(config).await.unwrap();
        // The default claim period: 60 s.
        StreamQueue::new(&store, &name)
    };
    let db = Db::default();
    db.latency_ms.store(500, Ordering::Relaxed);
    let crashed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    crashed.block_on(async {
        let (_cache, service) = layered(&db, queue().await);
        for i in 0..50 {
            service
                .clone()
                .oneshot(Write {
                    ispb: format!("{i}"),
                    seq: 1,
                })
                .await
                .unwrap();
        }
        // The worker has read them and is writing: the crash finds them held.
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    crashed.shutdown_background();
    assert!(db.metrics_count() < 50, "all written before the crash");

    db.latency_ms.store(0, Ordering::Relaxed);
    let fresh = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let took = fresh.block_on(async {
        let (_cache, _service) = layered(&db, queue().await);
        let started = Instant::now();
        while (0..50).any(|i| db.metrics(&i.to_string()) != Some(1)) {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{} of 50 written after 15 s",
                db.metrics_count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    });
    println!("a departed instance's writes were taken over and written in {took:?}");
}

/// A write Redis could not queue is written directly; the older writes of its key still
/// queued must not be written after it (the database would go back to an older value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_queued_write_never_overwrites_a_newer_direct_one() {
    let server = RedisServer::spawn();
    let store = breaker_on(&server, Duration::from_millis(300)).await;
    let queue = StreamQueue::new(&store, &support::unique_prefix("direct"));
    let db = Db::default();
    let (cache, service) = layered_every(&db, queue, Duration::from_secs(60));
    // Write 1 must wait in the stream for the next round, 60 s away. The worker's first
    // round (at start) may still be reading when it is queued, and take it: then that
    // round is over, and another key starts again.
    let mut ispb = String::new();
    for attempt in 0.. {
        assert!(attempt < 5, "the worker wrote every first write at once");
        ispb = format!("a{attempt}");
        let queued = service.clone().oneshot(Write {
            ispb: ispb.clone(),
            seq: 1,
        });
        queued.await.unwrap();
        if db.metrics(&ispb).is_none() {
            break;
        }
    }
    let write = |seq| {
        service.clone().oneshot(Write {
            ispb: ispb.clone(),
            seq,
        })
    };
    // A stall opens the circuit; while it is open, write 2's `XADD` is never sent.
    server.pause(true);
    let probe = tower_caching::Key::new("probe").unwrap();
    assert!(
        tower_caching::store::Store::get(&store, &probe)
            .await
            .is_err()
    );
    server.pause(false);
    assert!(store.is_open());
    write(2).await.unwrap(); // cannot be queued: written directly
    assert_eq!(db.metrics(&ispb), Some(2));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.flush_pending_writes().await.is_err() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(db.metrics(&ispb), Some(2), "the queued write 1 went over 2");
    assert!(db.reordered().is_empty(), "{:?}", db.reordered());
    // Newer writes are queued and written as usual.
    write(3).await.unwrap();
    cache.flush_pending_writes().await.unwrap();
    assert_eq!(db.metrics(&ispb), Some(3));
}

/// An `XADD` that failed on the client may still run on Redis (it timed out, or its
/// connection broke, after sending): its entry lands after writes of its key queued since.
/// The worker never writes it — the direct write it fell back to was acknowledged, and
/// newer writes were acknowledged after that — whether it arrives in the same round as a
/// newer queued write of its key (it must not pass for the newest) or after that one was
/// written. The late entry is planted as Redis would have stored it: the same producer,
/// the same number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_enqueue_that_redis_ran_late_never_goes_over_newer_writes() {
    let server = RedisServer::spawn();
    let store = breaker_on(&server, Duration::from_millis(300)).await;
    let queue = StreamQueue::new(&store, &support::unique_prefix("late"));
    let stream = queue.stream_key();
    let db = Db::default();
    let (cache, service) = layered_every(&db, queue, Duration::from_secs(60));
    let write = |seq| {
        service.clone().oneshot(Write {
            ispb: "a".into(),
            seq,
        })
    };
    write(1).await.unwrap();
    cache.flush_pending_writes().await.unwrap();
    assert_eq!(db.metrics("a"), Some(1));
    // The worker's name, as its entries carry it.
    let mut raw = support::raw_connection(&server.url()).await;
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(&mut raw)
        .await
        .unwrap();
    let group = field_of(&groups[0], "name");
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&stream)
        .arg(&group)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(consumers.len(), 1, "{consumers:?}");
    let producer = field_of(&consumers[0], "name");
    let plant_late = async |seq: u64| {
        let mut raw = support::raw_connection(&server.url()).await;
        let late = serde_json::to_vec(&Write {
            ispb: "a".into(),
            seq,
        })
        .unwrap();
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("k")
            .arg(KeyBuilder::new().metrics("a").as_str())
            .arg("r")
            .arg(late)
            .arg("p")
            .arg(&producer)
            .arg("n")
            .arg(seq)
            .query_async(&mut raw)
            .await
            .unwrap();
    };
    // The number of a write is its place among this queue's writes: `seq` here.
    let written_directly = async |seq: u64| {
        server.pause(true);
        let probe = Key::new("probe").unwrap();
        assert!(
            tower_caching::store::Store::get(&store, &probe)
                .await
                .is_err()
        );
        server.pause(false);
        write(seq).await.unwrap(); // the circuit is open: not queued, written directly
        assert_eq!(db.metrics("a"), Some(seq));
        support::within(Duration::from_secs(10), async || !store.is_open()).await;
    };

    // In the same round as the newer write 3.
    written_directly(2).await;
    write(3).await.unwrap();
    plant_late(2).await;
    cache.flush_pending_writes().await.unwrap();
    assert_eq!(db.metrics("a"), Some(3), "the late write 2 went over 3");

    // After the newer write 5 was written.
    written_directly(4).await;
    write(5).await.unwrap();
    cache.flush_pending_writes().await.unwrap();
    assert_eq!(db.metrics("a"), Some(5));
    plant_late(4).await;
    cache.flush_pending_writes().await.unwrap();
    assert_eq!(db.metrics("a"), Some(5), "the late write 4 went over 5");
    assert!(db.reordered().is_empty(), "{:?}", db.reordered());

    // And the late entries are acknowledged, not retried for ever.
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg(&group)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(pending.first(), Some(&redis::Value::Int(0)), "{pending:?}");
}

/// A field of an `XINFO` reply (a flat list of names and values).
fn field_of(reply: &redis::Value, name: &str) -> String {
    let redis::Value::Array(fields) = reply else {
        panic!("not an XINFO entry: {reply:?}");
    };
    fields
        .chunks(2)
        .find(|pair| {
            redis::from_redis_value_ref::<String>(&pair[0])
                .ok()
                .as_deref()
                == Some(name)
        })
        .and_then(|pair| redis::from_redis_value_ref::<String>(&pair[1]).ok())
        .unwrap_or_else(|| panic!("no `{name}` in {reply:?}"))
}

/// A direct write waits for the worker's write of its key in flight: the worker's older
/// write, slower, would otherwise land after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_write_waits_for_the_workers_older_write_in_flight() {
    let server = RedisServer::spawn();
    let store = breaker_on(&server, Duration::from_secs(2)).await;
    let queue = StreamQueue::new(&store, &support::unique_prefix("in-flight"));
    let db = Db::default();
    let (_cache, service) = layered_every(&db, queue, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let write = |seq| {
        service.clone().oneshot(Write {
            ispb: "a".into(),
            seq,
        })
    };
    // Write 1 is queued; the worker takes it and its write takes 600 ms.
    db.latency_ms.store(600, Ordering::SeqCst);
    write(1).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while db.writes() == 0 {
        assert!(Instant::now() < deadline, "the worker never took write 1");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Now the circuit opens and write 2, fast, is written directly.
    server.pause(true);
    let probe = tower_caching::Key::new("probe").unwrap();
    assert!(
        tower_caching::store::Store::get(&store, &probe)
            .await
            .is_err()
    );
    server.pause(false);
    db.latency_ms.store(0, Ordering::SeqCst);
    write(2).await.unwrap();
    // Past the end of the worker's write of 1.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(db.metrics("a"), Some(2), "the older write landed last");
    assert!(db.reordered().is_empty(), "{:?}", db.reordered());
}

/// A read that timed out after Redis ran it delivered entries this consumer never saw: it
/// reads its own pending entries back at its next round, not after the 60 s claim period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_delivered_by_a_read_that_timed_out_are_written_at_the_next_round() {
    use support::proxy::Proxy;
    let server = RedisServer::spawn();
    let proxy = Proxy::start(server.addr()).await;
    let store = RedisStore::connect(
        RedisConfig::new(proxy.url()).command_timeout(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    // The default claim period (60 s): a stuck entry would wait that long.
    let queue = StreamQueue::new(&store, &support::unique_prefix("unsure"));
    let db = Db::default();
    let (cache, service) = layered_every(&db, queue, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(300)).await;
    service
        .clone()
        .oneshot(Write {
            ispb: "a".into(),
            seq: 1,
        })
        .await
        .unwrap();
    // The round's read reaches Redis, which delivers the entry; its answer comes too late.
    proxy.latency(Duration::from_millis(300));
    assert!(cache.flush_pending_writes().await.is_err());
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.latency(Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(5);
    while db.metrics("a") != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the delivered entry was never written"
        );
        let _ = cache.flush_pending_writes().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A batch costs Redis a fixed number of commands however many writes it holds: one script
/// takes every lease (and acknowledges what the batch supersedes), one records every
/// version and acknowledges every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_its_leases_and_records_its_writes_in_one_script_each() {
    let server = RedisServer::spawn();
    let queue = redis_queue(&server, "scripts").await;
    let stream = queue.stream_key();
    let db = Db::default();
    let (cache, service) = layered_every(&db, queue, Duration::from_millis(300));
    support::reset_command_stats(&server.url()).await;
    // The database holds the first batch's writes, so the rest gather in the stream and
    // leave in full batches: 100 keys, each written twice (the second write supersedes the
    // first in its batch, or replaces it in the next).
    db.hold();
    for seq in 1..=2 {
        for i in 0..100 {
            service
                .clone()
                .oneshot(Write {
                    ispb: format!("s{i}"),
                    seq,
                })
                .await
                .unwrap();
        }
    }
    db.release();
    tokio::time::timeout(Duration::from_secs(20), cache.flush_pending_writes())
        .await
        .expect("the flush did not finish")
        .unwrap();
    assert!((0..100).all(|i| db.metrics(&format!("s{i}")) == Some(2)));
    let evals = support::command_calls(&server.url(), "eval").await;
    let rounds = support::command_calls(&server.url(), "xreadgroup").await;
    // At most two scripts a round, not two a write; and, the writes gathered, few rounds.
    assert!(
        evals <= 2 * rounds && evals <= 20,
        "{evals} scripts for 200 writes in {rounds} rounds"
    );
    // Every entry, written or superseded, acknowledged and deleted.
    let mut raw = support::raw_connection(&server.url()).await;
    let left: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(left, 0, "entries left in the stream");
}
