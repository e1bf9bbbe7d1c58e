//! Stampede protection across instances (`share_loads_across_instances`): instances sharing
//! one spawned redis-server make one loader call for a cold key in all. The multi-process
//! tests run this binary again as the instances (the ignored `stampede_instance` test, told
//! what to do by environment variables); the database each instance loads from is a counter
//! in that redis-server, so that the loader calls of every process are counted in one place.
#![cfg(feature = "redis")]

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::RedisServer;
use tower::{Service, ServiceExt};
use tower_caching::key::KeyBuilder;
use tower_caching::store::{RedisConfig, RedisStore};
use tower_caching::{Cache, CacheLayer, LoadError};
use tower_layer::Layer;

const KEY: &str = "cold";

/// The loader calls of every instance, counted in the shared redis-server.
const CALLS: &str = "test:loader-calls";

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    support::raw_connection(url).await
}

async fn counter(url: &str, name: &str) -> u64 {
    let value: Option<u64> = redis::cmd("GET")
        .arg(name)
        .query_async(&mut raw(url).await)
        .await
        .unwrap();
    value.unwrap_or(0)
}

/// A cache-aside service over `store` whose loader counts its calls in the shared server,
/// takes `first_load` on the first call of all (and 100 ms after), and names who loaded.
async fn instance_service(
    url: &str,
    lease: Duration,
    first_load: Duration,
) -> impl Service<String, Response = String, Error = LoadError<std::io::Error>, Future: Send>
+ Clone
+ Send
+ use<> {
    let store = RedisStore::connect(RedisConfig::new(url).command_timeout(Duration::from_secs(2)))
        .await
        .unwrap();
    let database = raw(url).await;
    let loader = tower::service_fn(move |id: String| {
        let mut database = database.clone();
        async move {
            let call: u64 = redis::cmd("INCR")
                .arg(CALLS)
                .query_async(&mut database)
                .await
                .map_err(std::io::Error::other)?;
            let took = if call == 1 {
                first_load
            } else {
                Duration::from_millis(100)
            };
            tokio::time::sleep(took).await;
            Ok::<_, std::io::Error>(format!("{id}: call {call} by {}", std::process::id()))
        }
    });
    CacheLayer::cache_aside(Cache::<String, RedisStore>::new(store))
        .key(|id: &String| KeyBuilder::new().entry(id))
        .share_loads_across_instances(lease)
        .layer(loader)
}

/// One instance, run by the tests below as a child process: waits for the `test:go` key,
/// then sends `STAMPEDE_MISSES` concurrent requests for the cold key, and reports what they
/// got (`RPUSH test:results "{ok} {distinct values} {slowest ms} {value}"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an instance that the multi-process tests start; not a test on its own"]
async fn stampede_instance() {
    let url = std::env::var("STAMPEDE_REDIS").expect("run by the stampede tests");
    let misses: usize = std::env::var("STAMPEDE_MISSES").unwrap().parse().unwrap();
    let first_load = Duration::from_millis(
        std::env::var("STAMPEDE_FIRST_LOAD_MS")
            .unwrap()
            .parse()
            .unwrap(),
    );
    let lease = Duration::from_millis(std::env::var("STAMPEDE_LEASE_MS").unwrap().parse().unwrap());
    let service = instance_service(&url, lease, first_load).await;
    let mut control = raw(&url).await;
    let _: () = redis::cmd("INCR")
        .arg("test:ready")
        .query_async(&mut control)
        .await
        .unwrap();
    loop {
        let go: bool = redis::cmd("EXISTS")
            .arg("test:go")
            .query_async(&mut control)
            .await
            .unwrap();
        if go {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let requests = (0..misses).map(|_| {
        let service = service.clone();
        tokio::spawn(async move {
            let result = service.oneshot(KEY.to_string()).await;
            (result.ok(), started.elapsed())
        })
    });
    let answers = futures_util::future::join_all(requests).await;
    let values: Vec<String> = answers
        .iter()
        .filter_map(|a| a.as_ref().unwrap().0.clone())
        .collect();
    let mut distinct = values.clone();
    distinct.sort();
    distinct.dedup();
    let slowest = answers.iter().map(|a| a.as_ref().unwrap().1).max().unwrap();
    let report = format!(
        "{} {} {} {}",
        values.len(),
        distinct.len(),
        slowest.as_millis(),
        distinct.first().cloned().unwrap_or_default()
    );
    let _: () = redis::cmd("RPUSH")
        .arg("test:results")
        .arg(report)
        .query_async(&mut control)
        .await
        .unwrap();
}

/// This test binary, run as one more instance.
fn spawn_instance(url: &str, misses: usize, first_load_ms: u64, lease_ms: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stampede_instance",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("STAMPEDE_REDIS", url)
        .env("STAMPEDE_MISSES", misses.to_string())
        .env("STAMPEDE_FIRST_LOAD_MS", first_load_ms.to_string())
        .env("STAMPEDE_LEASE_MS", lease_ms.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test binary runs again")
}

/// Waits for `child` to end well; its stderr if not.
fn finished(mut child: Child, limit: Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            assert!(status.success(), "an instance failed: {stderr}");
            return;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("an instance did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn wait_for(url: &str, name: &str, value: u64, limit: Duration) {
    let started = Instant::now();
    while counter(url, name).await < value {
        assert!(started.elapsed() < limit, "{name} never reached {value}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn results(url: &str) -> Vec<(usize, usize, u64, String)> {
    let lines: Vec<String> = redis::cmd("LRANGE")
        .arg("test:results")
        .arg(0)
        .arg(-1)
        .query_async(&mut raw(url).await)
        .await
        .unwrap();
    lines
        .iter()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            (
                parts.next().unwrap().parse().unwrap(),
                parts.next().unwrap().parse().unwrap(),
                parts.next().unwrap().parse().unwrap(),
                parts.next().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_with_500_misses_each_make_one_loader_call() {
    let server = RedisServer::spawn();
    let url = server.url();
    let instances: Vec<Child> = (0..4)
        .map(|_| spawn_instance(&url, 500, 200, 2000))
        .collect();
    wait_for(&url, "test:ready", 4, Duration::from_secs(60)).await;
    let _: () = redis::cmd("SET")
        .arg("test:go")
        .arg(1)
        .query_async(&mut raw(&url).await)
        .await
        .unwrap();
    for instance in instances {
        tokio::task::spawn_blocking(move || finished(instance, Duration::from_secs(60)))
            .await
            .unwrap();
    }
    assert_eq!(
        counter(&url, CALLS).await,
        1,
        "loader calls across the four instances"
    );
    let results = results(&url).await;
    assert_eq!(results.len(), 4);
    let value = &results[0].3;
    for (ok, distinct, slowest, seen) in &results {
        assert_eq!(
            (*ok, *distinct),
            (500, 1),
            "every request of every instance answered once"
        );
        assert_eq!(seen, value, "two instances served different values");
        println!(
            "stampede: an instance's 500 misses all answered after {slowest} ms (a load takes 200 ms)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_is_replaced_by_exactly_one_load() {
    let server = RedisServer::spawn();
    let url = server.url();
    // The first instance takes the lease and loads for a minute: it is killed meanwhile.
    let mut holder = spawn_instance(&url, 50, 60_000, 1000);
    wait_for(&url, "test:ready", 1, Duration::from_secs(60)).await;
    let _: () = redis::cmd("SET")
        .arg("test:go")
        .arg(1)
        .query_async(&mut raw(&url).await)
        .await
        .unwrap();
    wait_for(&url, CALLS, 1, Duration::from_secs(30)).await;
    // Three more instances miss the same key while the holder loads: they wait.
    let waiters: Vec<Child> = (0..3)
        .map(|_| spawn_instance(&url, 200, 60_000, 1000))
        .collect();
    wait_for(&url, "test:ready", 4, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        counter(&url, CALLS).await,
        1,
        "a waiter loaded while the holder was alive"
    );
    let killed = Instant::now();
    holder.kill().unwrap();
    holder.wait().unwrap();
    for waiter in waiters {
        tokio::task::spawn_blocking(move || finished(waiter, Duration::from_secs(60)))
            .await
            .unwrap();
    }
    println!(
        "stampede: the killed holder's waiters all answered {:?} after the kill (lease 1 s)",
        killed.elapsed()
    );
    assert_eq!(
        counter(&url, CALLS).await,
        2,
        "loads in all: the killed one and exactly one replacement"
    );
    let results = results(&url).await;
    assert_eq!(results.len(), 3);
    for (ok, distinct, _, seen) in &results {
        assert_eq!((*ok, *distinct), (200, 1));
        assert!(seen.contains("call 2"), "served {seen}");
    }
}

/// Waits until a loader counted in `calls` began its `n`th load: the first instance holds
/// the lease from then on.
async fn loading(calls: &AtomicU64, n: u64) {
    let started = Instant::now();
    while calls.load(Ordering::SeqCst) < n {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the load never began"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Two instances in this process, each on its own connection and flight table.
async fn two_instances(url: &str) -> [(Cache<String, RedisStore>, Arc<AtomicU64>); 2] {
    let make = async || {
        let store =
            RedisStore::connect(RedisConfig::new(url).command_timeout(Duration::from_secs(2)))
                .await
                .unwrap();
        (
            Cache::<String, RedisStore>::new(store),
            Arc::new(AtomicU64::new(0)),
        )
    };
    [make().await, make().await]
}

/// A layer over `cache` whose loader runs `load` (counted in `calls`).
fn layered<F, Fut>(
    cache: &Cache<String, RedisStore>,
    calls: &Arc<AtomicU64>,
    lease: Duration,
    load: F,
) -> impl Service<String, Response = String, Error = LoadError<std::io::Error>, Future: Send>
+ Clone
+ use<F, Fut>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<String, std::io::Error>> + Send + 'static,
{
    let calls = calls.clone();
    let loader = tower::service_fn(move |_: String| {
        let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
        load(call)
    });
    CacheLayer::cache_aside(cache.clone())
        .key(|id: &String| KeyBuilder::new().entry(id))
        .share_loads_across_instances(lease)
        .layer(loader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_the_load_is_not_overwritten_by_the_holder() {
    let server = RedisServer::spawn();
    let lease = Duration::from_secs(2);
    let [(a, a_calls), (b, _)] = two_instances(&server.url()).await;
    let service = layered(&a, &a_calls, lease, |_| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok("read before the write".to_string())
    });
    let read = tokio::spawn(service.oneshot("e1".to_string()));
    loading(&a_calls, 1).await;
    // Another instance writes the key while A's holder loads.
    let key = KeyBuilder::new().entry("e1");
    b.set(&key, &"written".to_string(), None).await.unwrap();
    assert_eq!(read.await.unwrap().unwrap(), "read before the write");
    assert_eq!(
        a.get(&key).await.unwrap().as_deref(),
        Some("written"),
        "the holder overwrote a newer write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_panicking_holder_gives_the_lease_up_at_once() {
    let server = RedisServer::spawn();
    // A long lease: a waiter that had to wait for it to expire would take 10 s.
    let lease = Duration::from_secs(10);
    let [(a, a_calls), (b, b_calls)] = two_instances(&server.url()).await;
    for (round, failure) in [(0, "error"), (1, "panic")] {
        let id = format!("e-{failure}");
        let failing = layered(&a, &a_calls, lease, move |_| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if failure == "panic" {
                panic!("the loader panics");
            }
            Err(std::io::Error::other("the database is down"))
        });
        let working = layered(&b, &b_calls, lease, |call| async move {
            Ok(format!("loaded by B, call {call}"))
        });
        let first = tokio::spawn(failing.oneshot(id.clone()));
        loading(&a_calls, round + 1).await;
        let started = Instant::now();
        let second = tokio::spawn(working.oneshot(id.clone()));
        assert!(first.await.unwrap().is_err());
        let value = second.await.unwrap().unwrap();
        assert!(value.starts_with("loaded by B"), "{failure}: {value}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{failure}: B waited {:?}, for the lease to expire",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_answered_by_the_holders_value_without_loading() {
    let server = RedisServer::spawn();
    let lease = Duration::from_secs(2);
    let [(a, a_calls), (b, b_calls)] = two_instances(&server.url()).await;
    let slow = layered(&a, &a_calls, lease, |_| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok("from A".to_string())
    });
    let other = layered(&b, &b_calls, lease, |_| async { Ok("from B".to_string()) });
    let first = tokio::spawn(slow.oneshot("e1".to_string()));
    loading(&a_calls, 1).await;
    let waited = Instant::now();
    let second = other.oneshot("e1".to_string()).await.unwrap();
    let waited = waited.elapsed();
    assert_eq!(first.await.unwrap().unwrap(), "from A");
    assert_eq!(second, "from A");
    assert_eq!(
        (
            a_calls.load(Ordering::SeqCst),
            b_calls.load(Ordering::SeqCst)
        ),
        (1, 0)
    );
    println!(
        "stampede: a waiter on another instance answered {waited:?} after its miss (the load, begun just before, takes 300 ms)"
    );
    // Reloads are each instance's own: a cached key takes no lease (the layers read it).
    let again = layered(&b, &b_calls, lease, |_| async { Ok("from B".to_string()) });
    assert_eq!(again.oneshot("e1".to_string()).await.unwrap(), "from A");
    assert_eq!(b_calls.load(Ordering::SeqCst), 0);

    // Waiters are woken by a subscription per store, which ends with the store.
    let subscribers = async || {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut raw(&server.url()).await)
            .await
            .unwrap();
        list.lines().filter(|line| !line.is_empty()).count()
    };
    assert_eq!(
        subscribers().await,
        2,
        "each instance subscribes once, at its first wait"
    );
    drop((a, b));
    let started = Instant::now();
    while subscribers().await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the subscriber outlived its store"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A cache-aside service on any store, sharing its loads, whose loader answers `answer`
/// after `took`, counted in `calls`.
fn on_store<S: tower_caching::store::Store>(
    store: S,
    calls: Arc<AtomicU64>,
    took: Duration,
    answer: &'static str,
) -> impl Service<String, Response = String, Error = LoadError<std::io::Error>, Future: Send> + Clone
{
    let loader = tower::service_fn(move |_: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(took).await;
            Ok::<_, std::io::Error>(answer.to_string())
        }
    });
    CacheLayer::cache_aside(Cache::<String, S>::new(store))
        .key(|id: &String| KeyBuilder::new().entry(id))
        .share_loads_across_instances(Duration::from_secs(2))
        .layer(loader)
}

/// The lease is the Redis store's, reached through a circuit breaker and through two tiers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_are_shared_through_a_circuit_breaker_and_two_tiers() {
    use tower_caching::store::{CircuitBreaker, MemoryStore, TieredStore};
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(2));
    let breaker =
        CircuitBreaker::builder(RedisStore::connect(config.clone()).await.unwrap()).build();
    let l2 = RedisStore::connect(config.clone()).await.unwrap();
    let tiered =
        TieredStore::new(MemoryStore::new(), l2, &config, Duration::from_secs(30)).unwrap();
    let (a_calls, b_calls) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let a = on_store(
        breaker,
        a_calls.clone(),
        Duration::from_millis(300),
        "from A",
    );
    let b = on_store(tiered, b_calls.clone(), Duration::ZERO, "from B");
    let first = tokio::spawn(a.oneshot("e1".to_string()));
    loading(&a_calls, 1).await;
    assert_eq!(b.oneshot("e1".to_string()).await.unwrap(), "from A");
    assert_eq!(first.await.unwrap().unwrap(), "from A");
    assert_eq!(
        (
            a_calls.load(Ordering::SeqCst),
            b_calls.load(Ordering::SeqCst)
        ),
        (1, 0)
    );
}

/// Without a shared store there is nothing to share: each in-process cache loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_memory_store_each_instance_loads_on_its_own() {
    use tower_caching::store::MemoryStore;
    let (a_calls, b_calls) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let a = on_store(
        MemoryStore::new(),
        a_calls.clone(),
        Duration::from_millis(100),
        "from A",
    );
    let b = on_store(
        MemoryStore::new(),
        b_calls.clone(),
        Duration::ZERO,
        "from B",
    );
    let first = tokio::spawn(a.oneshot("e1".to_string()));
    assert_eq!(b.oneshot("e1".to_string()).await.unwrap(), "from B");
    assert_eq!(first.await.unwrap().unwrap(), "from A");
}

/// A delete on another instance while the holder loads (write-around: the database was
/// written, the cached copy dropped) voids the lease: the holder, which read the row before
/// that write, does not cache it; the next read loads anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_during_the_load_keeps_the_holders_older_value_out() {
    use tower_caching::key::Tag;
    let server = RedisServer::spawn();
    let lease = Duration::from_secs(2);
    let [(a, a_calls), (b, _)] = two_instances(&server.url()).await;
    let tagged = a
        .clone()
        .tag_with(|_: &tower_caching::Key, _: &String| vec![Tag::new("ana").unwrap()]);
    for (round, how) in ["delete", "delete_many", "invalidate_tag"]
        .into_iter()
        .enumerate()
    {
        let id = format!("e-{how}");
        let service = layered(&tagged, &a_calls, lease, |_| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok("read before the write".to_string())
        });
        let read = tokio::spawn(service.oneshot(id.clone()));
        loading(&a_calls, round as u64 + 1).await;
        let key = KeyBuilder::new().entry(&id);
        match how {
            "delete" => {
                b.delete(&key).await.unwrap();
            }
            "delete_many" => {
                b.delete_many(std::slice::from_ref(&key)).await.unwrap();
            }
            _ => {
                // Filed under the tag (as a tagged write files it); the tag's invalidation
                // drops it.
                redis::cmd("ZADD")
                    .arg("tower-caching:tag:ana")
                    .arg("+inf")
                    .arg(key.as_str())
                    .query_async::<()>(&mut raw(&server.url()).await)
                    .await
                    .unwrap();
                b.invalidate_tag(&Tag::new("ana").unwrap()).await.unwrap();
            }
        }
        assert_eq!(read.await.unwrap().unwrap(), "read before the write");
        assert_eq!(
            a.get(&key).await.unwrap(),
            None,
            "{how}: the holder cached a value read before the write"
        );
    }
}

/// Behind a circuit breaker, the holder's fenced put is a write like any other: one that
/// times out (it may still land later) owes its key a repair, so that the value it may leave
/// behind is deleted once the store answers, and reads miss until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_put_that_times_out_owes_its_key_a_repair() {
    use tower_caching::store::CircuitBreaker;
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_millis(100));
    let breaker = CircuitBreaker::builder(RedisStore::connect(config).await.unwrap()).build();
    let url = server.url();
    // The loader stalls Redis for 600 ms as it answers: the fenced put that follows times out.
    let loader = tower::service_fn(move |_: String| {
        let url = url.clone();
        async move {
            let _: () = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(600)
                .arg("ALL")
                .query_async(&mut raw(&url).await)
                .await
                .unwrap();
            Ok::<_, std::io::Error>("loaded".to_string())
        }
    });
    let service = CacheLayer::cache_aside(Cache::<String, _>::new(breaker.clone()))
        .key(|id: &String| KeyBuilder::new().entry(id))
        .share_loads_across_instances(Duration::from_secs(2))
        .layer(loader);
    let began = Instant::now();
    assert_eq!(service.oneshot("e1".to_string()).await.unwrap(), "loaded");
    assert!(
        began.elapsed() < Duration::from_millis(550),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(
        breaker.repairs_owed(),
        1,
        "the timed-out put owes no repair"
    );
    // The pause ends: the put lands late, and the repair after it takes it out again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while breaker.repairs_owed() > 0 {
        assert!(Instant::now() < deadline, "the repair never landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Option<Vec<u8>> = redis::cmd("GET")
        .arg("entry:e1")
        .query_async(&mut raw(&server.url()).await)
        .await
        .unwrap();
    assert_eq!(left, None, "the late put outlived its repair");
}

/// While the circuit is open, a key that owes a repair misses without asking Redis, and its
/// cold miss does not take a lease either: it loads alone, and no lease command is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_refuses_the_lease_of_a_key_owing_a_repair() {
    use support::monitor::Monitor;
    use tower_caching::store::CircuitBreaker;
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_millis(100));
    let breaker = CircuitBreaker::builder(RedisStore::connect(config).await.unwrap())
        .failures(1)
        .open_for(Duration::from_secs(30))
        .build();
    let cache = Cache::<String, _>::new(breaker.clone());
    // A set that times out under a stall owes its key a repair, and opens the circuit.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(300)
        .arg("ALL")
        .query_async(&mut raw(&server.url()).await)
        .await
        .unwrap();
    let key = KeyBuilder::new().entry("e1");
    assert!(cache.set(&key, &"old".to_string(), None).await.is_err());
    assert_eq!(breaker.repairs_owed(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;

    let loader =
        tower::service_fn(|_: String| async { Ok::<_, std::io::Error>("loaded".to_string()) });
    let service = CacheLayer::cache_aside(cache)
        .key(|id: &String| KeyBuilder::new().entry(id))
        .share_loads_across_instances(Duration::from_secs(2))
        .layer(loader);
    let monitor = Monitor::start(&server);
    let (answer, commands) = monitor.during(service.oneshot("e1".to_string())).await;
    assert_eq!(answer.unwrap(), "loaded");
    assert!(
        !commands.iter().any(|c| c.contains("tower-caching:lease:")),
        "a lease command passed the open circuit: {commands:?}"
    );
}
