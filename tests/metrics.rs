//! The registry, read back after each strategy's hits, misses, errors, flushes and retries.
#![cfg(feature = "metrics")]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};
use support::db::{CreateEntry, Db, Entry, GetEntry, UpdateMetrics, entry};
use tower::{Service, ServiceExt};
use tower_caching::key::KeyBuilder;
use tower_caching::metrics::Metrics;
use tower_caching::store::{MemoryStore, Store, StoreValue};
use tower_caching::strategy::Invalidation;
use tower_caching::{Cache, CacheLayer};
use tower_layer::Layer;

type Labels = BTreeMap<String, String>;

/// The metrics' text exposition, parsed: `name` → [(labels, value)].
struct Scrape(BTreeMap<String, Vec<(Labels, f64)>>);

fn scrape(registry: &Registry) -> Scrape {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    let mut samples: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for line in String::from_utf8(text).unwrap().lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        samples
            .entry(name.to_string())
            .or_default()
            .push((labels, value.parse().unwrap()));
    }
    Scrape(samples)
}

impl Scrape {
    /// The sum of `name` over the samples carrying every label of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .get(name)
            .map(|samples| {
                samples
                    .iter()
                    .filter(|(have, _)| {
                        labels
                            .iter()
                            .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
                    })
                    .map(|(_, value)| value)
                    .sum()
            })
            .unwrap_or(0.0)
    }
}

fn setup() -> (Registry, Metrics) {
    let registry = Registry::new();
    let metrics = Metrics::builder()
        .namespace("conn_dict")
        .register(&registry)
        .unwrap();
    (registry, metrics)
}

fn cache<V: tower_caching::Cacheable + serde::Serialize + serde::de::DeserializeOwned, S: Store>(
    store: S,
    metrics: &Metrics,
) -> Cache<V, S> {
    Cache::builder(store).metrics(metrics.clone()).build()
}

fn get(id: &str) -> GetEntry {
    GetEntry {
        keys: KeyBuilder::new(),
        id: id.into(),
    }
}

const HITS: &str = "conn_dict_cache_hits_total";
const MISSES: &str = "conn_dict_cache_misses_total";
const ERRORS: &str = "conn_dict_cache_errors_total";
const DURATION_COUNT: &str = "conn_dict_cache_operation_duration_seconds_count";

#[tokio::test]
async fn cache_aside_counts_hits_misses_coalescing_and_latency() {
    let (registry, metrics) = setup();
    let db = Db::default();
    db.insert(entry("e1", "v"));
    db.latency_ms.store(50, Ordering::SeqCst);
    let service = CacheLayer::cache_aside(cache::<Option<Entry>, _>(MemoryStore::new(), &metrics))
        .layer(db.clone());

    let results =
        futures_util::future::join_all((0..10).map(|_| service.clone().oneshot(get("e1")))).await;
    assert!(results.iter().all(Result::is_ok));
    service.clone().oneshot(get("e1")).await.unwrap();

    let m = scrape(&registry);
    let ca = [("strategy", "cache_aside")];
    assert_eq!(m.value(MISSES, &ca), 10.0);
    assert_eq!(m.value("conn_dict_cache_coalesced_waiters_total", &ca), 9.0);
    assert_eq!(m.value(HITS, &ca), 1.0);
    assert_eq!(
        m.value(
            DURATION_COUNT,
            &[("operation", "get"), ("strategy", "cache_aside")]
        ),
        11.0
    );
    assert_eq!(
        m.value(
            DURATION_COUNT,
            &[("operation", "set"), ("strategy", "cache_aside")]
        ),
        1.0
    );
    assert_eq!(m.value(ERRORS, &[]), 0.0);
    // Nothing else moved.
    assert_eq!(m.value(HITS, &[]), 1.0);
    assert_eq!(db.reads(), 1);
}

#[tokio::test]
async fn read_through_counts_refreshes_and_negative_hits() {
    let (registry, metrics) = setup();
    let db = Db::default();
    db.insert(entry("cfg", "v"));
    let entries = cache::<Option<Entry>, _>(MemoryStore::new(), &metrics);
    let service = CacheLayer::read_through(entries.clone())
        .ttl(Duration::from_millis(2000))
        .refresh_ahead(0.5)
        .not_found(Option::is_none)
        .negative_ttl(Duration::from_secs(60))
        .layer(db.clone());
    service.clone().oneshot(get("cfg")).await.unwrap();
    // In the refresh window (1-2 s), 0.8 s from its end.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    service.clone().oneshot(get("cfg")).await.unwrap(); // in the refresh window
    service.clone().oneshot(get("absent")).await.unwrap(); // cached as not found
    service.clone().oneshot(get("absent")).await.unwrap(); // negative hit
    let refreshes = |registry| {
        scrape(registry).value(
            "conn_dict_cache_refreshes_total",
            &[("strategy", "read_through")],
        )
    };
    support::within(Duration::from_secs(5), async || refreshes(&registry) == 1.0).await;

    let m = scrape(&registry);
    let rt = [("strategy", "read_through")];
    assert_eq!(m.value("conn_dict_cache_refreshes_total", &rt), 1.0);
    assert_eq!(m.value("conn_dict_cache_negative_hits_total", &rt), 1.0);
    assert_eq!(m.value(HITS, &rt), 2.0);
    assert_eq!(m.value(MISSES, &rt), 2.0);
    assert_eq!(m.value(MISSES, &[("strategy", "cache_aside")]), 0.0);
}

#[tokio::test]
async fn undecodable_values_count_as_decode_errors_and_misses() {
    let (registry, metrics) = setup();
    let store = MemoryStore::new();
    let db = Db::default();
    db.insert(entry("e1", "v"));
    store
        .set(
            &KeyBuilder::new().entry("e1"),
            StoreValue::from_static(b"garbage"),
            None,
        )
        .await
        .unwrap();
    let service =
        CacheLayer::cache_aside(cache::<Option<Entry>, _>(store, &metrics)).layer(db.clone());
    assert_eq!(
        service.oneshot(get("e1")).await.unwrap(),
        Some(entry("e1", "v"))
    );
    let m = scrape(&registry);
    assert_eq!(
        m.value(ERRORS, &[("operation", "get"), ("error_type", "decode")]),
        1.0
    );
    assert_eq!(m.value(MISSES, &[("strategy", "cache_aside")]), 1.0);
}

#[tokio::test]
async fn write_through_counts_cache_writes_and_their_failures() {
    let (registry, metrics) = setup();
    let db = Db::default();
    let entries: Cache<Entry> = Cache::builder(MemoryStore::new())
        .metrics(metrics.clone())
        .max_value_size(200)
        .build();
    let writer = CacheLayer::write_through(entries).layer(db.clone());
    let keys = KeyBuilder::new();
    writer
        .clone()
        .oneshot(CreateEntry {
            keys: keys.clone(),
            entry: entry("e1", "Ana"),
        })
        .await
        .unwrap();
    writer
        .oneshot(CreateEntry {
            keys,
            entry: entry("e1", &"x".repeat(300)),
        })
        .await
        .unwrap();
    let m = scrape(&registry);
    let wt = [("strategy", "write_through")];
    assert_eq!(m.value(DURATION_COUNT, &[("operation", "set"), wt[0]]), 2.0);
    assert_eq!(
        m.value(ERRORS, &[("operation", "set"), ("error_type", "too_large")]),
        1.0
    );
    assert_eq!(
        m.value(DURATION_COUNT, &[("operation", "delete"), wt[0]]),
        1.0
    );
}

#[tokio::test]
async fn write_behind_reports_queue_flushes_retries_and_dead_letters() {
    let (registry, metrics) = setup();
    let db = Db::default();
    *db.poison_ispb.lock().unwrap() = Some("poison".into());
    let counters = cache::<u64, _>(MemoryStore::new(), &metrics);
    let mut service = CacheLayer::write_behind(counters.clone())
        .value(|r: &UpdateMetrics| Some(r.seq))
        .batch_interval(Duration::from_secs(60))
        .max_attempts(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(2))
        .layer(db.clone());
    for ispb in ["a", "b", "poison"] {
        let request = UpdateMetrics {
            keys: KeyBuilder::new(),
            ispb: ispb.into(),
            seq: 1,
        };
        service.ready().await.unwrap().call(request).await.unwrap();
    }
    let m = scrape(&registry);
    assert_eq!(m.value("conn_dict_cache_write_behind_queue_size", &[]), 3.0);
    assert_eq!(
        m.value(
            DURATION_COUNT,
            &[("operation", "set"), ("strategy", "write_behind")]
        ),
        3.0
    );

    assert_eq!(counters.flush_pending_writes().await.unwrap(), 2);
    let m = scrape(&registry);
    assert_eq!(m.value("conn_dict_cache_write_behind_queue_size", &[]), 0.0);
    assert_eq!(
        m.value("conn_dict_cache_write_behind_retries_total", &[]),
        2.0
    );
    assert_eq!(
        m.value("conn_dict_cache_write_behind_dead_letters_total", &[]),
        1.0
    );
    assert_eq!(
        m.value(
            ERRORS,
            &[
                ("operation", "write_behind_flush"),
                ("error_type", "writer")
            ]
        ),
        3.0
    );
    // One batch for a and b and the first try of poison, then one per retry.
    assert_eq!(
        m.value(
            "conn_dict_cache_write_behind_flush_duration_seconds_count",
            &[]
        ),
        3.0
    );
}

#[tokio::test]
async fn write_around_counts_invalidations() {
    let (registry, metrics) = setup();
    let db = Db::default();
    let entries = cache::<Option<Entry>, _>(MemoryStore::new(), &metrics);
    let keys = KeyBuilder::new();
    let bulk_keys = keys.clone();
    let writer = CacheLayer::write_around(entries)
        .invalidate(move |r: &CreateEntry| {
            Invalidation::new()
                .key(bulk_keys.entry(&r.entry.id))
                .pattern(bulk_keys.pattern("vsync"))
        })
        .layer(db);
    writer
        .oneshot(CreateEntry {
            keys,
            entry: entry("e1", "v"),
        })
        .await
        .unwrap();
    let m = scrape(&registry);
    let wa = ("strategy", "write_around");
    assert_eq!(
        m.value(DURATION_COUNT, &[("operation", "delete_many"), wa]),
        1.0
    );
    assert_eq!(
        m.value(DURATION_COUNT, &[("operation", "delete_pattern"), wa]),
        1.0
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn an_unreachable_redis_counts_errors_and_falls_back() {
    use tower_caching::store::{RedisConfig, RedisStore};
    let (registry, metrics) = setup();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let store = RedisStore::connect_lazy(
        RedisConfig::new(dead.to_string())
            .connect_timeout(Duration::from_millis(50))
            .command_timeout(Duration::from_millis(50)),
    )
    .unwrap();
    let db = Db::default();
    db.insert(entry("e1", "v"));
    let service =
        CacheLayer::cache_aside(cache::<Option<Entry>, _>(store, &metrics)).layer(db.clone());
    assert_eq!(
        service.oneshot(get("e1")).await.unwrap(),
        Some(entry("e1", "v"))
    );
    let m = scrape(&registry);
    assert_eq!(m.value(ERRORS, &[("operation", "get")]), 1.0);
    // After a failed lookup the loaded value is not written back: one timeout, not two.
    assert_eq!(m.value(ERRORS, &[("operation", "set")]), 0.0);
    assert_eq!(m.value(MISSES, &[("strategy", "cache_aside")]), 1.0);
}

#[tokio::test]
async fn names_labels_and_registration() {
    let registry = Registry::new();
    let entries = Metrics::builder()
        .namespace("conn_dict")
        .cache_name("entries")
        .register(&registry)
        .unwrap();
    let configs = Metrics::builder()
        .namespace("conn_dict")
        .cache_name("configs")
        .register(&registry)
        .unwrap();
    // The same names and cache label again: a clear error, and nothing half-registered.
    let again = Metrics::builder()
        .namespace("conn_dict")
        .cache_name("entries")
        .register(&registry);
    assert!(
        matches!(again, Err(prometheus::Error::AlreadyReg)),
        "{again:?}"
    );

    let a: Cache<u8> = Cache::builder(MemoryStore::new()).metrics(entries).build();
    let b: Cache<u8> = Cache::builder(MemoryStore::new()).metrics(configs).build();
    let key = KeyBuilder::new().config("x");
    a.get_or_load(&key, None, || async { Ok::<_, String>(1) })
        .await
        .unwrap();
    b.get_or_load(&key, None, || async { Ok::<_, String>(1) })
        .await
        .unwrap();
    b.get_or_load(&key, None, || async { Ok::<_, String>(1) })
        .await
        .unwrap();
    let m = scrape(&registry);
    assert_eq!(m.value(MISSES, &[("cache", "entries")]), 1.0);
    assert_eq!(m.value(HITS, &[("cache", "configs")]), 1.0);
    assert_eq!(
        m.value(
            DURATION_COUNT,
            &[
                ("operation", "get"),
                ("strategy", "cache_aside"),
                ("cache", "configs")
            ]
        ),
        2.0
    );

    // Every series the original dashboards query exists under the namespace.
    let names: Vec<&String> = m.0.keys().collect();
    for name in [
        "conn_dict_cache_operation_duration_seconds_bucket",
        "conn_dict_cache_write_behind_queue_size",
        "conn_dict_cache_write_behind_flush_duration_seconds_count",
    ] {
        assert!(m.0.contains_key(name), "{name} missing from {names:?}");
    }
}

#[test]
fn a_fresh_registry_exports_every_series_an_alert_needs_at_zero() {
    let (registry, _metrics) = setup();
    let m = scrape(&registry);
    for strategy in [
        "cache_aside",
        "read_through",
        "write_through",
        "write_behind",
        "write_around",
    ] {
        for series in ["conn_dict_cache_hits_total", "conn_dict_cache_misses_total"] {
            let samples = m.0.get(series).expect(series);
            assert!(
                samples
                    .iter()
                    .any(|(labels, value)| labels.get("strategy").map(String::as_str)
                        == Some(strategy)
                        && *value == 0.0),
                "{series} has no zero sample for {strategy}"
            );
        }
    }
    let errors =
        m.0.get(ERRORS)
            .expect("no errors_total series before the first error");
    for operation in ["get", "set", "delete"] {
        for kind in ["timeout", "circuit_open", "backend"] {
            assert!(
                errors.iter().any(
                    |(labels, value)| labels.get("operation").map(String::as_str)
                        == Some(operation)
                        && labels.get("error_type").map(String::as_str) == Some(kind)
                        && *value == 0.0
                ),
                "no {operation}/{kind} error series at zero"
            );
        }
    }
}
