//! The read engine and the supervised background work, under panics, cancellation and
//! races: each test puts the fault exactly where an earlier version broke.

#[macro_use]
mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use support::faulty::{CpuHog, Faulty};
use tower::{Service, ServiceExt, service_fn};
use tower_caching::key::{Key, KeyBuilder};
use tower_caching::store::{CircuitBreaker, MemoryStore, Store};
use tower_caching::strategy::Invalidation;
use tower_caching::ttl::Jitter;
use tower_caching::{Cache, CacheLayer, LoadError};
use tower_layer::Layer;

fn key(name: &str) -> Key {
    Key::new(name).unwrap()
}

// ---------------------------------------------------------------------------------------
// Panics fail only the requests that waited for them.

/// A loader that panics on its first call, then answers `"v"`.
fn panics_once(
    calls: Arc<AtomicU32>,
) -> impl Service<String, Response = String, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(move |_: String| {
        let calls = calls.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("loader bug");
            }
            Ok::<_, Infallible>("v".to_string())
        }
    })
}

async fn a_panicking_loader_fails_its_waiters_and_the_next_request_loads<S: Store>(
    store: S,
    prefix: &str,
) {
    let cache: Cache<String, S> = Cache::new(store);
    let keys = KeyBuilder::new().prefix(prefix);
    let calls = Arc::new(AtomicU32::new(0));
    let service = CacheLayer::cache_aside(cache.clone())
        .key(move |id: &String| keys.entry(id))
        .layer(panics_once(calls.clone()));
    let first: Vec<_> =
        futures_util::future::join_all((0..20).map(|_| service.clone().oneshot("e1".to_string())))
            .await;
    assert!(
        first.iter().all(|r| r == &Err(LoadError::Panicked)),
        "{first:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the waiters shared one load"
    );
    // The key is not wedged: the next request loads again, and then it is cached.
    assert_eq!(service.clone().oneshot("e1".into()).await.unwrap(), "v");
    assert_eq!(service.oneshot("e1".into()).await.unwrap(), "v");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

async fn a_panicking_ttl_policy_or_predicate_fails_only_its_request<S: Store>(
    store: S,
    prefix: &str,
) {
    let cache: Cache<String, S> = Cache::new(store);
    let keys = KeyBuilder::new().prefix(prefix);
    let explode = Arc::new(AtomicBool::new(true));
    let service = CacheLayer::read_through(cache)
        .key(move |id: &String| keys.entry(id))
        .ttl({
            let explode = explode.clone();
            move |_: &Key, _: &String| {
                if explode.swap(false, Ordering::SeqCst) {
                    panic!("ttl policy bug");
                }
                Some(Duration::from_secs(60))
            }
        })
        .cache_if(|value: &String| {
            assert!(value != "boom", "predicate bug");
            true
        })
        .layer(service_fn(
            |id: String| async move { Ok::<_, Infallible>(id) },
        ));
    assert_eq!(
        service.clone().oneshot("e1".into()).await,
        Err(LoadError::Panicked)
    );
    assert_eq!(service.clone().oneshot("e1".into()).await.unwrap(), "e1");
    assert_eq!(
        service.clone().oneshot("boom".into()).await,
        Err(LoadError::Panicked)
    );
    assert_eq!(service.oneshot("e2".into()).await.unwrap(), "e2");
}

#[tokio::test]
async fn get_or_load_survives_a_panicking_loader() {
    let cache: Cache<String> = Cache::in_memory();
    let key = key("k");
    let panicked = cache
        .get_or_load(&key, None, || async {
            panic!("loader bug");
            #[allow(unreachable_code)]
            Ok::<String, std::io::Error>(String::new())
        })
        .await;
    assert!(matches!(panicked, Err(LoadError::Panicked)));
    let value = cache
        .get_or_load(&key, None, || async {
            Ok::<_, std::io::Error>("v".to_string())
        })
        .await
        .unwrap();
    assert_eq!(value, "v");
}

#[tokio::test]
async fn a_key_extractor_that_panics_fails_only_that_call() {
    let cache: Cache<String> = Cache::in_memory();
    let service = CacheLayer::cache_aside(cache)
        .key(|id: &String| {
            assert!(id != "boom", "key extractor bug");
            Key::new(format!("e:{id}")).ok()
        })
        .layer(service_fn(
            |id: String| async move { Ok::<_, Infallible>(id) },
        ));
    let crashed = tokio::spawn(service.clone().oneshot("boom".to_string())).await;
    assert!(crashed.unwrap_err().is_panic());
    assert_eq!(service.oneshot("ok".into()).await.unwrap(), "ok");
}

#[cfg(feature = "http")]
#[tokio::test]
async fn a_panicking_http_handler_answers_500_and_the_next_request_is_served() {
    use tower_caching::http::{CachedResponse, HttpCacheLayer};
    let calls = Arc::new(AtomicU32::new(0));
    let handler = {
        let calls = calls.clone();
        service_fn(move |_: http::Request<String>| {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("handler bug");
                }
                Ok::<_, Infallible>(http::Response::new("fine".to_string()))
            }
        })
    };
    let service = HttpCacheLayer::new(Cache::<CachedResponse>::in_memory()).layer(handler);
    let request = || http::Request::get("/x").body(String::new()).unwrap();
    let first = service.clone().oneshot(request()).await.unwrap();
    assert_eq!(first.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    let second = service.clone().oneshot(request()).await.unwrap();
    assert_eq!(second.status(), http::StatusCode::OK);
    let third = service.oneshot(request()).await.unwrap();
    assert_eq!(third.headers()["x-cache"], "HIT");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_write_behind_writer_that_panics_once_does_not_stop_the_queue() {
    let cache: Cache<u64> = Cache::in_memory();
    let written = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = {
        let written = written.clone();
        service_fn(move |n: u64| {
            let written = written.clone();
            async move {
                assert!(n != 13, "writer bug");
                written.lock().unwrap().push(n);
                Ok::<_, Infallible>(())
            }
        })
    };
    let service = CacheLayer::write_behind(cache.clone())
        .key(|n: &u64| Key::new(format!("n:{n}")).ok())
        .max_attempts(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(2))
        .batch_interval(Duration::from_millis(10))
        .layer(writer);
    for n in [1, 13, 2, 3] {
        service.clone().oneshot(n).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), cache.flush_pending_writes())
        .await
        .expect("flush returned")
        .unwrap();
    assert_eq!(service.queue_depth(), 0);
    let mut written = written.lock().unwrap().clone();
    written.sort_unstable();
    assert_eq!(written, vec![1, 2, 3]);
    // And writes after the panic are still written.
    service.clone().oneshot(4).await.unwrap();
    cache.flush_pending_writes().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), cache.close())
        .await
        .expect("close returned")
        .unwrap();
}

#[tokio::test]
async fn a_panicking_write_through_value_invalidates_instead_of_failing() {
    let cache: Cache<u64> = Cache::in_memory();
    cache.set(&key("n:1"), &0, None).await.unwrap();
    let service = CacheLayer::write_through(cache.clone())
        .key(|n: &u64| Key::new(format!("n:{}", n % 10)).ok())
        .ttl(|_: &Key, n: &u64| {
            assert!(*n != 11, "ttl bug");
            Some(Duration::from_secs(60))
        })
        .layer(service_fn(|n: u64| async move { Ok::<_, Infallible>(n) }));
    // The write succeeded: its response comes back, and the old value is not served.
    assert_eq!(service.clone().oneshot(11).await.unwrap(), 11);
    assert_eq!(cache.get(&key("n:1")).await.unwrap(), None);
    assert_eq!(service.oneshot(21).await.unwrap(), 21);
    assert_eq!(cache.get(&key("n:1")).await.unwrap(), Some(21));
}

// ---------------------------------------------------------------------------------------
// Cancellation: steps that must finish once a write succeeded.

#[tokio::test]
async fn a_write_around_invalidation_survives_a_caller_that_goes_away() {
    let store = Faulty::new(MemoryStore::new());
    let cache: Cache<u64, _> = Cache::new(store.clone());
    cache.set(&key("n:1"), &1, None).await.unwrap();
    store
        .faults
        .delete_delays
        .lock()
        .unwrap()
        .push(Duration::from_millis(1000));
    let service = CacheLayer::write_around(cache.clone())
        .invalidate(|_: &u64| Invalidation::new().key(key("n:1")))
        .layer(service_fn(|n: u64| async move { Ok::<_, Infallible>(n) }));
    // The client gives up while the invalidation is in flight.
    let gave_up = tokio::time::timeout(Duration::from_millis(50), service.oneshot(2)).await;
    assert!(gave_up.is_err());
    support::within(Duration::from_secs(5), async || {
        cache.get(&key("n:1")).await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn a_write_through_update_survives_a_caller_that_goes_away() {
    let store = Faulty::new(MemoryStore::new());
    let cache: Cache<u64, _> = Cache::new(store.clone());
    cache.set(&key("n:1"), &1, None).await.unwrap();
    store
        .faults
        .set_delays
        .lock()
        .unwrap()
        .push(Duration::from_millis(1000));
    let service = CacheLayer::write_through(cache.clone())
        .key(|_: &u64| Some(key("n:1")))
        .layer(service_fn(|n: u64| async move { Ok::<_, Infallible>(n) }));
    let gave_up = tokio::time::timeout(Duration::from_millis(50), service.oneshot(2)).await;
    assert!(gave_up.is_err());
    support::within(Duration::from_secs(5), async || {
        cache.get(&key("n:1")).await.unwrap() == Some(2)
    })
    .await;
}

#[tokio::test]
async fn a_dropped_half_open_probe_does_not_keep_the_breaker_open() {
    let store = Faulty::new(MemoryStore::new());
    let breaker = CircuitBreaker::builder(store.clone())
        .failures(2)
        .open_for(Duration::from_millis(50))
        .build();
    store.faults.failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        assert!(breaker.get(&key("k")).await.is_err());
    }
    assert!(breaker.is_open());
    tokio::time::sleep(Duration::from_millis(80)).await;
    // The probe is slow, and its caller gives up on it.
    store.faults.failing.store(false, Ordering::SeqCst);
    store.faults.get_delay_ms.store(500, Ordering::SeqCst);
    let probe = tokio::time::timeout(Duration::from_millis(20), breaker.get(&key("k"))).await;
    assert!(probe.is_err());
    store.faults.get_delay_ms.store(0, Ordering::SeqCst);
    // The next operation is the new probe, and it closes the circuit.
    assert!(breaker.get(&key("k")).await.is_ok());
    assert!(!breaker.is_open());
    assert!(breaker.exists(&key("k")).await.is_ok());
}

async fn huge_ttls_and_grace_periods_do_not_overflow<S: Store>(store: S, prefix: &str) {
    let cache: Cache<String, S> = Cache::new(store.clone());
    let keys = KeyBuilder::new().prefix(prefix);
    let service = CacheLayer::read_through(cache.clone())
        .key({
            let keys = keys.clone();
            move |id: &String| keys.entry(id)
        })
        .ttl(Jitter::new(Duration::MAX, 0.5))
        .fail_safe(Duration::MAX, Duration::MAX)
        .refresh_ahead(0.5)
        .layer(service_fn(
            |id: String| async move { Ok::<_, Infallible>(id) },
        ));
    for _ in 0..3 {
        assert_eq!(service.clone().oneshot("k".into()).await.unwrap(), "k");
    }
    assert!(cache.exists(&keys.entry("k")).await.unwrap());
    let direct: Cache<u8, S> = Cache::new(store);
    direct
        .set(&keys.entry("d"), &1, Some(Duration::MAX))
        .await
        .unwrap();
    assert_eq!(direct.get(&keys.entry("d")).await.unwrap(), Some(1));
}

// ---------------------------------------------------------------------------------------
// Coalescing and consistency.

/// 2000 concurrent requests for each of 25 cold keys, next to two spinning threads: one
/// loader call per key, however late a request's lookup comes back.
async fn coalescing_holds_under_cpu_pressure<S: Store>(store: S, prefix: &str) {
    let _hog = CpuHog::start(2);
    let cache: Cache<String, S> = Cache::new(store);
    let keys = KeyBuilder::new().prefix(prefix);
    let calls = Arc::new(AtomicU32::new(0));
    let loader = {
        let calls = calls.clone();
        service_fn(move |id: String| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, Infallible>(format!("value of {id}"))
            }
        })
    };
    let service = CacheLayer::cache_aside(cache)
        .key(move |id: &String| keys.entry(id))
        .layer(loader);
    let tasks: Vec<_> = (0..2)
        .map(|half| {
            let service = service.clone();
            tokio::spawn(async move {
                let requests = (0..25_000).map(|i| {
                    let id = format!("k{}", (i + half) % 25);
                    let service = service.clone();
                    async move {
                        let value = service.oneshot(id.clone()).await.unwrap();
                        assert_eq!(value, format!("value of {id}"));
                    }
                });
                futures_util::future::join_all(requests).await;
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 25);
}

/// While the store cannot keep what is loaded (it fails, or times out under load), later
/// misses of a key whose lookups fail too share the last load's value until its TTL or a
/// write, instead of calling the loader again each: the loader is spared a stampede by the
/// store's outage; once a lookup succeeds, misses load and store again.
#[tokio::test]
async fn misses_share_a_value_the_store_could_not_keep_until_its_ttl_or_a_write() {
    let store = Faulty::new(MemoryStore::new());
    store.faults.failing.store(true, Ordering::SeqCst);
    let cache: Cache<String, _> = Cache::new(store.clone());
    let calls = Arc::new(AtomicU32::new(0));
    let loader = {
        let calls = calls.clone();
        service_fn(move |id: String| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, Infallible>(format!("{id} #{n}")) }
        })
    };
    let service = CacheLayer::cache_aside(cache.clone())
        .key(|id: &String| KeyBuilder::new().entry(id))
        .ttl(Duration::from_millis(300))
        .layer(loader);
    let read = || service.clone().oneshot("k".to_string());
    assert_eq!(read().await.unwrap(), "k #1");
    assert_eq!(
        read().await.unwrap(),
        "k #1",
        "the store failed: the last load answers"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A write of the key (it fails in the store, but supersedes the load) ends that.
    let _ = cache.delete(&KeyBuilder::new().entry("k")).await;
    assert_eq!(read().await.unwrap(), "k #2");
    assert_eq!(read().await.unwrap(), "k #2");
    // So does its TTL (300 ms; checked a second later).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(read().await.unwrap(), "k #3");
    // Once the store answers again, a miss loads and stores anew: caching resumes.
    store.faults.failing.store(false, Ordering::SeqCst);
    assert_eq!(read().await.unwrap(), "k #4");
    assert_eq!(read().await.unwrap(), "k #4");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(cache.exists(&KeyBuilder::new().entry("k")).await.unwrap());
}

/// A load that read the old row before a write-through committed does not overwrite the
/// written value when it finishes after it.
async fn a_load_in_flight_does_not_overwrite_a_write_through<S: Store>(store: S, prefix: &str) {
    let cache: Cache<String, S> = Cache::new(store);
    let keys = KeyBuilder::new().prefix(prefix);
    let row = Arc::new(std::sync::Mutex::new("old".to_string()));
    let (selected_tx, selected_rx) = tokio::sync::oneshot::channel::<()>();
    let (committed_tx, committed_rx) = tokio::sync::oneshot::channel::<()>();
    let gates = Arc::new(std::sync::Mutex::new(Some((selected_tx, committed_rx))));
    let reader = {
        let (row, gates) = (row.clone(), gates.clone());
        service_fn(move |_: String| {
            let (row, gates) = (row.clone(), gates.clone());
            async move {
                let read = row.lock().unwrap().clone();
                let gate = gates.lock().unwrap().take();
                if let Some((selected, committed)) = gate {
                    let _ = selected.send(());
                    let _ = committed.await;
                }
                Ok::<_, Infallible>(read)
            }
        })
    };
    let read = CacheLayer::cache_aside(cache.clone())
        .key({
            let keys = keys.clone();
            move |id: &String| keys.entry(id)
        })
        .layer(reader);
    let writer = {
        let row = row.clone();
        service_fn(move |value: String| {
            let row = row.clone();
            async move {
                *row.lock().unwrap() = value.clone();
                Ok::<_, Infallible>(value)
            }
        })
    };
    let write = CacheLayer::write_through(cache.clone())
        .key({
            let keys = keys.clone();
            move |_: &String| keys.entry("e1")
        })
        .layer(writer);
    let slow_read = tokio::spawn(read.clone().oneshot("e1".to_string()));
    selected_rx.await.unwrap();
    write.oneshot("new".to_string()).await.unwrap();
    committed_tx.send(()).unwrap();
    assert_eq!(slow_read.await.unwrap().unwrap(), "old");
    assert_eq!(
        cache.get(&keys.entry("e1")).await.unwrap().as_deref(),
        Some("new")
    );
    assert_eq!(read.oneshot("e1".to_string()).await.unwrap(), "new");
}

#[tokio::test]
async fn write_behind_caches_two_writes_of_a_key_in_queue_order() {
    let store = Faulty::new(MemoryStore::new());
    // The first write's cache step is slow: it would land after the second's.
    store
        .faults
        .set_delays
        .lock()
        .unwrap()
        .push(Duration::from_millis(100));
    let cache: Cache<u64, _> = Cache::new(store);
    let written = Arc::new(AtomicU32::new(0));
    let service = CacheLayer::write_behind(cache.clone())
        .key(|_: &u64| Some(key("counter")))
        .layer({
            let written = written.clone();
            service_fn(move |n: u64| {
                let written = written.clone();
                async move {
                    written.store(n as u32, Ordering::SeqCst);
                    Ok::<_, Infallible>(())
                }
            })
        });
    let first = tokio::spawn(service.clone().oneshot(10));
    tokio::time::sleep(Duration::from_millis(10)).await;
    service.clone().oneshot(20).await.unwrap();
    first.await.unwrap().unwrap();
    cache.flush_pending_writes().await.unwrap();
    assert_eq!(written.load(Ordering::SeqCst), 20);
    assert_eq!(cache.get(&key("counter")).await.unwrap(), Some(20));
}

on_every_store!(
    huge_ttls_and_grace_periods_do_not_overflow,
    a_panicking_loader_fails_its_waiters_and_the_next_request_loads,
    a_panicking_ttl_policy_or_predicate_fails_only_its_request,
    coalescing_holds_under_cpu_pressure,
    a_load_in_flight_does_not_overwrite_a_write_through,
);

// ---------------------------------------------------------------------------------------
// Ownership: what a layer makes, and what outlives it.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_layers_spawn_nothing_until_used_and_end_with_their_services() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let cache: Cache<u64> = Cache::in_memory();
    let layer = CacheLayer::write_behind(cache.clone())
        .key(|n: &u64| Key::new(format!("n:{n}")).ok())
        .batch_interval(Duration::from_secs(3600));
    let written = Arc::new(AtomicU32::new(0));
    let writer = {
        let written = written.clone();
        service_fn(move |_: u64| {
            let written = written.clone();
            async move {
                written.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(())
            }
        })
    };
    let services: Vec<_> = (0..100).map(|_| layer.layer(writer.clone())).collect();
    assert_eq!(metrics.num_alive_tasks(), before, "layer() spawned tasks");
    assert_eq!(cache.flush_pending_writes().await.unwrap(), 0);
    for (n, service) in services.iter().enumerate().take(10) {
        service.clone().oneshot(n as u64).await.unwrap();
    }
    drop(services);
    // Dropped with writes queued (the batch interval is an hour): written, then gone.
    support::within(Duration::from_secs(10), async || {
        written.load(Ordering::SeqCst) == 10 && metrics.num_alive_tasks() == before
    })
    .await;
}

#[cfg(feature = "config")]
#[tokio::test]
async fn a_literal_route_wins_over_a_parameter_route_whatever_their_names() {
    use tower_caching::config::CacheConfig;
    use tower_caching::http::CachedResponse;
    let config = CacheConfig::from_toml(
        r#"
        [routes.a_any]
        path = "/entries/{id}"
        strategy = "cache_aside"
        key = "entry:{id}"
        ttl = "1m"
        [routes.z_special]
        path = "/entries/special"
        strategy = "cache_aside"
        key = "special:one"
        ttl = "1m"
        "#,
    )
    .unwrap();
    let cache: Cache<CachedResponse> = Cache::in_memory();
    let service = config.layer(cache.clone()).unwrap().layer(service_fn(
        |request: http::Request<String>| async move {
            Ok::<_, Infallible>(http::Response::new(request.uri().path().to_string()))
        },
    ));
    let response = service
        .oneshot(
            http::Request::get("/entries/special")
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert!(cache.exists(&key("special:one")).await.unwrap());
    assert!(!cache.exists(&key("entry:special")).await.unwrap());
}

/// A writer that panics on 13 and echoes anything else.
fn panics_on_13()
-> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone + Send + Sync + 'static
{
    service_fn(|n: u64| async move {
        assert!(n != 13, "writer bug");
        Ok::<_, Infallible>(n)
    })
}

#[tokio::test]
async fn a_panicking_write_through_or_write_around_writer_fails_only_its_request() {
    let cache: Cache<u64> = Cache::in_memory();
    let through = CacheLayer::write_through(cache.clone())
        .key(|n: &u64| Key::new(format!("n:{n}")).ok())
        .layer(panics_on_13());
    let around = CacheLayer::write_around(cache.clone())
        .invalidate(|n: &u64| Invalidation::new().key(Key::new(format!("n:{n}")).unwrap()))
        .layer(panics_on_13());
    let crashed = tokio::spawn(through.clone().oneshot(13)).await;
    assert!(crashed.unwrap_err().is_panic());
    assert_eq!(through.oneshot(7).await.unwrap(), 7);
    assert_eq!(cache.get(&key("n:7")).await.unwrap(), Some(7));
    let crashed = tokio::spawn(around.clone().oneshot(13)).await;
    assert!(crashed.unwrap_err().is_panic());
    assert_eq!(around.oneshot(7).await.unwrap(), 7);
    assert_eq!(cache.get(&key("n:7")).await.unwrap(), None);
}

#[tokio::test]
async fn after_close_a_write_behind_service_that_never_ran_writes_directly() {
    let cache: Cache<u64> = Cache::in_memory();
    let written = Arc::new(AtomicU32::new(0));
    let service = CacheLayer::write_behind(cache.clone())
        .key(|n: &u64| Key::new(format!("n:{n}")).ok())
        .batch_interval(Duration::from_secs(3600))
        .layer({
            let written = written.clone();
            service_fn(move |_: u64| {
                let written = written.clone();
                async move {
                    written.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(())
                }
            })
        });
    cache.close().await.unwrap();
    service.clone().oneshot(1).await.unwrap();
    assert_eq!(
        written.load(Ordering::SeqCst),
        1,
        "queued behind a closed cache"
    );
}
