//! Warming a cache and preloading its hot keys: bounded concurrency, a budget, cancellation,
//! failures and panics, hostile snapshots, the metric and the progress log; a restarted
//! instance answering its hot set from cache, in process (file snapshot) and on two tiers
//! over a spawned Redis.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tower_caching::store::{Store, StoreValue};
use tower_caching::warm::HotKeys;
use tower_caching::{Cache, CacheError, Key, MemoryStore};

fn key(i: usize) -> Key {
    Key::new(format!("row:{i}")).unwrap()
}

/// A loader that counts its calls and how many run at once, and takes `delay`.
#[derive(Clone, Default)]
struct Loader {
    calls: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
    delay: Duration,
}

impl Loader {
    fn slow(delay: Duration) -> Self {
        Loader {
            delay,
            ..Loader::default()
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn load(
        &self,
    ) -> impl Fn(Key) -> futures_util::future::BoxFuture<'static, Result<String, std::io::Error>>
    + Send
    + Sync
    + 'static {
        let loader = self.clone();
        move |key: Key| {
            let loader = loader.clone();
            Box::pin(async move {
                loader.calls.fetch_add(1, Ordering::SeqCst);
                let now = loader.running.fetch_add(1, Ordering::SeqCst) + 1;
                loader.most_at_once.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(loader.delay).await;
                loader.running.fetch_sub(1, Ordering::SeqCst);
                Ok(format!("value of {key}"))
            })
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_load_once_each_at_most_n_at_a_time_and_cached_ones_not_at_all() {
    let cache: Cache<String> = Cache::in_memory();
    for i in 0..10 {
        cache
            .set(&key(i), &"cached".to_string(), None)
            .await
            .unwrap();
    }
    let loader = Loader::slow(Duration::from_millis(5));
    let report = cache
        .warm(
            (0..100).map(key),
            Some(Duration::from_secs(60)),
            loader.load(),
        )
        .concurrency(4)
        .await;
    assert_eq!((report.cached, report.loaded, report.failed), (10, 90, 0));
    assert!(!report.stopped_at_budget);
    assert_eq!(loader.calls(), 90);
    assert_eq!(loader.most_at_once.load(Ordering::SeqCst), 4);
    assert_eq!(
        cache.get(&key(50)).await.unwrap().as_deref(),
        Some("value of row:50")
    );
    assert_eq!(cache.get(&key(5)).await.unwrap().as_deref(), Some("cached"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_bounds_the_wait_and_started_loads_still_land() {
    let cache: Cache<String> = Cache::in_memory();
    let loader = Loader::slow(Duration::from_millis(300));
    let started = Instant::now();
    let report = cache
        .warm((0..1000).map(key), None, loader.load())
        .concurrency(8)
        .budget(Duration::from_millis(100))
        .await;
    assert!(report.stopped_at_budget);
    assert!(
        started.elapsed() < Duration::from_millis(290),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.done(), 0);
    // The eight loads it had started run on and are cached; no other key was started.
    support::within(Duration::from_secs(5), async || {
        cache.get(&key(0)).await.unwrap().is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(loader.calls(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_warm_up_cancels_what_it_has_not_started() {
    let cache: Cache<String> = Cache::in_memory();
    let loader = Loader::slow(Duration::from_millis(50));
    let warm = tokio::spawn(
        cache
            .warm((0..1000).map(key), None, loader.load())
            .concurrency(2)
            .into_future(),
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    warm.abort();
    let _ = warm.await;
    let calls = loader.calls();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        loader.calls(),
        calls,
        "keys were started after the warm-up was dropped"
    );
    assert!(calls < 20, "{calls} calls");
    assert_eq!(loader.running.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_panicking_loads_count_as_failed_and_the_rest_warms() {
    let cache: Cache<String> = Cache::in_memory();
    let report = cache
        .warm((0..30).map(key), None, |key: Key| async move {
            match key.as_str() {
                "row:3" => panic!("a bug in the loader"),
                k if k.ends_with('7') => Err("no such row"),
                _ => Ok(key.as_str().to_owned()),
            }
        })
        .await;
    assert_eq!((report.loaded, report.failed), (26, 4));
    assert!(cache.get(&key(3)).await.unwrap().is_none());
    // The key whose load panicked loads again on the next read.
    let value = cache
        .get_or_load(&key(3), None, || async {
            Ok::<_, std::io::Error>("ok".to_string())
        })
        .await
        .unwrap();
    assert_eq!(value, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_up_coalesces_with_requests_for_the_same_key() {
    let cache: Cache<String> = Cache::in_memory();
    let loader = Loader::slow(Duration::from_millis(200));
    let warm = tokio::spawn(cache.warm([key(1)], None, loader.load()).into_future());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let requests = Loader::default();
    let load = requests.load();
    let value = cache
        .get_or_load(&key(1), None, || load(key(1)))
        .await
        .unwrap();
    assert_eq!(value, "value of row:1");
    assert_eq!((loader.calls(), requests.calls()), (1, 0));
    assert_eq!(warm.await.unwrap().loaded, 1);
}

fn snapshot_file(test: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}.json", support::unique_prefix(test)))
}

/// The embedded default: a memory store per process, the snapshot in a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_answers_its_hot_set_from_its_first_requests() {
    let path = snapshot_file("restart-file");
    let hot = HotKeys::new("rows").top(20).file(&path);
    let database = Loader::default();
    let first: Cache<String> = Cache::builder(MemoryStore::new())
        .hot_keys(hot.clone())
        .build();
    // Twenty hot rows read ten times each, two hundred cold ones once.
    for round in 0..10 {
        for i in 0..20 {
            let load = database.load();
            first
                .get_or_load(&key(i), None, || load(key(i)))
                .await
                .unwrap();
        }
        for i in 0..20 {
            let cold = 1000 + round * 20 + i;
            let load = database.load();
            first
                .get_or_load(&key(cold), None, || load(key(cold)))
                .await
                .unwrap();
        }
    }
    let mut hottest = first.hot_keys();
    hottest.sort();
    let mut expected: Vec<Key> = (0..20).map(key).collect();
    expected.sort();
    assert_eq!(hottest, expected);
    first.close().await.unwrap();
    drop(first);

    let next: Cache<String> = Cache::builder(MemoryStore::new()).hot_keys(hot).build();
    let warming = Loader::default();
    let report = next.warm_hot_keys(None, warming.load()).await;
    assert_eq!((report.loaded, warming.calls()), (20, 20));
    // Its first requests for the hot set are hits: the database is not asked.
    let before = database.calls();
    for i in 0..20 {
        let load = database.load();
        next.get_or_load(&key(i), None, || load(key(i)))
            .await
            .unwrap();
    }
    assert_eq!(database.calls(), before);
    let _ = std::fs::remove_file(path);
}

/// Two tiers over a spawned Redis: the snapshot is in Redis, the values too; a restarted
/// instance's warm-up fills its empty L1 from L2 without loading, and then its first
/// requests for the hot set do not reach Redis.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_two_tiers_the_warm_up_fills_l1_from_redis_without_loading() {
    use tower_caching::store::{RedisConfig, RedisStore, TieredStore};

    let redis = support::RedisServer::spawn();
    let config = RedisConfig::new(redis.addr()).command_timeout(Duration::from_secs(2));
    let tiered = async || {
        let l2 = RedisStore::connect(config.clone()).await.unwrap();
        let store =
            TieredStore::new(MemoryStore::new(), l2, &config, Duration::from_secs(60)).unwrap();
        support::within(Duration::from_secs(5), async || store.is_coherent()).await;
        store
    };
    let hot = HotKeys::new("rows").top(50);
    let database = Loader::default();
    let first: Cache<String, TieredStore> =
        Cache::builder(tiered().await).hot_keys(hot.clone()).build();
    for _ in 0..5 {
        for i in 0..50 {
            let load = database.load();
            first
                .get_or_load(&key(i), None, || load(key(i)))
                .await
                .unwrap();
        }
    }
    first.close().await.unwrap();
    drop(first);

    let next: Cache<String, TieredStore> = Cache::builder(tiered().await).hot_keys(hot).build();
    let warming = Loader::default();
    let report = next.warm_hot_keys(None, warming.load()).await;
    assert_eq!((report.cached, report.loaded, warming.calls()), (50, 0, 0));
    let gets = || {
        let info = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string(), "info", "commandstats"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&info.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_get:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = (gets(), database.calls());
    for i in 0..50 {
        let load = database.load();
        next.get_or_load(&key(i), None, || load(key(i)))
            .await
            .unwrap();
    }
    assert_eq!(
        (gets(), database.calls()),
        before,
        "the hot set was not in L1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_saved_periodically_until_the_cache_is_dropped() {
    let store = MemoryStore::new();
    let hot = HotKeys::new("rows").snapshot_every(Duration::from_millis(50));
    let snapshot = hot.snapshot_key();
    let cache: Cache<String> = Cache::builder(store.clone()).hot_keys(hot).build();
    cache
        .get_or_load(&key(1), None, || async {
            Ok::<_, std::io::Error>("v".to_string())
        })
        .await
        .unwrap();
    support::within(Duration::from_secs(5), async || {
        store.exists(&snapshot).await.unwrap()
    })
    .await;
    drop(cache);
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.delete(&snapshot).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !store.exists(&snapshot).await.unwrap(),
        "saved after the cache was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_read_nothing_keeps_the_last_snapshot() {
    let store = MemoryStore::new();
    let hot = HotKeys::new("rows").snapshot_every(None);
    let first: Cache<String> = Cache::builder(store.clone()).hot_keys(hot.clone()).build();
    first
        .get_or_load(&key(1), None, || async {
            Ok::<_, std::io::Error>("v".to_string())
        })
        .await
        .unwrap();
    first.close().await.unwrap();
    let idle: Cache<String> = Cache::builder(store.clone()).hot_keys(hot.clone()).build();
    idle.close().await.unwrap();
    let next: Cache<String> = Cache::builder(store).hot_keys(hot).build();
    assert_eq!(next.saved_hot_keys().await.unwrap(), [key(1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_snapshots_are_typed_errors_or_skipped_keys_never_a_panic() {
    let store = MemoryStore::new();
    let hot = HotKeys::new("rows").top(3).snapshot_every(None);
    let snapshot = hot.snapshot_key();
    let cache: Cache<String> = Cache::builder(store.clone()).hot_keys(hot).build();
    let plant = async |bytes: &[u8]| {
        store
            .set(
                &snapshot,
                StoreValue::new(Bytes::copy_from_slice(bytes)),
                None,
            )
            .await
            .unwrap()
    };
    let loader = Loader::default();

    plant(b"\xff\x00 not json").await;
    assert!(matches!(
        cache.saved_hot_keys().await,
        Err(CacheError::Decode(_))
    ));
    let report = cache.warm_hot_keys(None, loader.load()).await;
    assert_eq!((report.done(), loader.calls()), (0, 0));

    plant(br#"{"version":1,"keys":{"not":"a list"}}"#).await;
    assert!(matches!(
        cache.saved_hot_keys().await,
        Err(CacheError::Decode(_))
    ));

    // Keys that do not validate are skipped; no more than `top` are read.
    let long = "x".repeat(5000);
    let planted = format!(
        r#"{{"version":1,"keys":["bad\u0000key","{long}","","row:1","row:2","row:3","row:4"]}}"#
    );
    plant(planted.as_bytes()).await;
    assert_eq!(
        cache.saved_hot_keys().await.unwrap(),
        [key(1), key(2), key(3)]
    );

    // A snapshot far larger than `top` keys can be is refused unread.
    plant(&vec![b' '; 3 * 6200 + 100]).await;
    assert!(matches!(
        cache.saved_hot_keys().await,
        Err(CacheError::ValueTooLarge { .. })
    ));
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metric_counts_each_outcome() {
    let registry = prometheus::Registry::new();
    let metrics = tower_caching::metrics::Metrics::builder()
        .register(&registry)
        .unwrap();
    let cache: Cache<String> = Cache::builder(MemoryStore::new()).metrics(metrics).build();
    cache
        .set(&key(0), &"cached".to_string(), None)
        .await
        .unwrap();
    cache
        .warm((0..5).map(key), None, |key: Key| async move {
            if key == Key::new("row:4").unwrap() {
                Err("gone")
            } else {
                Ok(key.as_str().to_owned())
            }
        })
        .await;
    let counted = |outcome: &str| {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == "tower_caching_cache_warmed_keys_total")
            .flat_map(|f| f.get_metric().to_vec())
            .find(|m| m.get_label().iter().any(|l| l.value() == outcome))
            .map(|m| m.get_counter().get_value())
    };
    assert_eq!(counted("cached"), Some(1.0));
    assert_eq!(counted("loaded"), Some(3.0));
    assert_eq!(counted("failed"), Some(1.0));
}
