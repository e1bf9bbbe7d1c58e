//! Redis Sentinel: a store that follows the primary the sentinels name, through a failover
//! under load (no request fails; caching resumes on the promoted replica), a manual
//! failover it follows before any command fails, a dead sentinel, and its background
//! watcher stopping with the last clone of the store.
#![cfg(all(feature = "redis", feature = "metrics"))]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::db::{Db, Entry, GetEntry, entry};
use support::sentinel::{MASTER, Sentinels, named_by};
use tower::ServiceExt;
use tower_caching::key::KeyBuilder;
use tower_caching::metrics::Metrics;
use tower_caching::store::{CircuitBreaker, RedisStore, SentinelConfig, Store, StoreValue};
use tower_caching::{Cache, CacheLayer, Key};
use tower_layer::Layer;

fn value(text: &str) -> StoreValue {
    StoreValue::from(Bytes::copy_from_slice(text.as_bytes()))
}

/// How the primary goes away.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// SIGKILL: connections drop at once.
    Killed,
    /// SIGSTOP: it stalls silently, every command times out.
    Stalled,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_over_under_load_and_no_request_fails() {
    fail_over_under_load(Outage::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_primary_fails_over_under_load_and_no_request_fails() {
    fail_over_under_load(Outage::Stalled).await;
}

async fn fail_over_under_load(outage: Outage) {
    let mut set = Sentinels::spawn(Some("pw"));
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder().register(&registry).unwrap();
    let store = RedisStore::connect_sentinel(
        SentinelConfig::new(set.addrs(), MASTER)
            .password("pw")
            .connect_timeout(Duration::from_millis(300))
            .command_timeout(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    // The probe below writes past the breaker, which would add up to its open time.
    let raw = store.clone();
    let store = CircuitBreaker::builder(store)
        .failures(5)
        .open_for(Duration::from_millis(300))
        .metrics(&metrics)
        .build();
    let db = Db::default();
    for id in 0..100 {
        db.insert(entry(&id.to_string(), "v"));
    }
    let cache: Cache<Option<Entry>, _> = Cache::builder(store.clone()).metrics(metrics).build();
    let reader = CacheLayer::cache_aside(cache).layer(db.clone());

    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (reader, sent, failed, stop) =
            (reader.clone(), sent.clone(), failed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let keys = KeyBuilder::new();
            while !stop.load(Ordering::Relaxed) {
                let id = fastrand::u32(0..100).to_string();
                let get = GetEntry {
                    keys: keys.clone(),
                    id,
                };
                sent.fetch_add(1, Ordering::Relaxed);
                if reader.clone().oneshot(get).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let promoted = set.replica.port();
    match outage {
        Outage::Killed => set.primary.kill(),
        Outage::Stalled => set.primary.pause(true),
    }
    let killed = Instant::now();
    // When the sentinels name the new primary, to tell their part of the outage from ours.
    let sentinel = set.sentinels[0].port();
    let named = std::thread::spawn(move || {
        while named_by(sentinel) != Some(promoted) {
            assert!(killed.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(5));
        }
        killed.elapsed()
    });

    // Writes succeed again once the store follows the promoted replica (the only node left
    // that can answer, so an acknowledged write can only have gone there).
    let probe = Key::new("sentinel:probe").unwrap();
    let mut written = 0u64;
    let first_write = loop {
        written += 1;
        if raw
            .set(&probe, value(&written.to_string()), None)
            .await
            .is_ok()
        {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no write succeeded after the failover"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (set, named) = tokio::task::spawn_blocking(move || {
        set.wait_for_primary(promoted);
        (set, named.join().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(
        set.cli(promoted, &["get", "sentinel:probe"]).trim(),
        written.to_string(),
        "the acknowledged write is not on the promoted replica"
    );

    let hits_before = support::hits(&registry);
    let deadline = Instant::now() + Duration::from_secs(15);
    while support::hits(&registry) < hits_before + 200.0 {
        assert!(
            Instant::now() < deadline,
            "caching did not resume after the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    // Every key is cached on the new primary: after two passes, a third is all hits.
    let keys = KeyBuilder::new();
    let read_all = async || {
        for id in 0..100 {
            let get = GetEntry {
                keys: keys.clone(),
                id: id.to_string(),
            };
            reader.clone().oneshot(get).await.unwrap();
        }
    };
    read_all().await;
    read_all().await;
    let reads = db.reads();
    read_all().await;
    assert_eq!(
        db.reads(),
        reads,
        "some keys are not cached after the failover"
    );
    println!(
        "sentinel failover ({outage:?}): requests {}, failed {}, sentinels named the new \
         primary after {named:?}, first write on it after {first_write:?}, caching resumed \
         after {resumed:?}",
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

/// A manual `SENTINEL FAILOVER` demotes the primary, which stays up and would refuse
/// writes (`READONLY`) and serve stale reads: the store moves on the sentinels'
/// announcement, before any command of its own has failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_failover_is_followed_before_any_command_fails() {
    let set = Sentinels::spawn(None);
    let store = RedisStore::connect_sentinel(
        SentinelConfig::new(set.addrs(), MASTER)
            .command_timeout(Duration::from_millis(500))
            // Only the announcement can move the store within this test.
            .check_interval(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let before = Key::new("sentinel:before").unwrap();
    store.set(&before, value("old"), None).await.unwrap();
    let (old, new) = (set.primary.port(), set.replica.port());
    assert!(
        format!("{store:?}").contains(&format!(":{old}")),
        "{store:?}"
    );

    let answer = set.cli(set.sentinels[0].port(), &["sentinel", "failover", MASTER]);
    assert!(answer.starts_with("OK"), "SENTINEL FAILOVER: {answer}");
    let set = tokio::task::spawn_blocking(move || {
        set.wait_for_primary(new);
        set
    })
    .await
    .unwrap();
    // The store says which node it follows; no command runs until it follows the new one.
    support::within(Duration::from_secs(10), async || {
        format!("{store:?}").contains(&format!(":{new}"))
    })
    .await;
    let after = Key::new("sentinel:after").unwrap();
    store.set(&after, value("new"), None).await.unwrap();
    assert_eq!(set.cli(new, &["get", "sentinel:after"]).trim(), "new");
    let read = store
        .get(&before)
        .await
        .unwrap()
        .expect("replicated before the failover");
    assert_eq!(read.bytes().as_ref(), b"old");
    // (The sentinels turn the demoted node into a replica, which refuses writes, only at
    // their next look at it, up to 10 s later: not waited for here.)
}

/// The sentinel connections of a store (its query connection and its `+switch-master`
/// subscription): those of `CLIENT LIST` that are not the sentinels' own links or this
/// `redis-cli`.
fn store_clients(set: &Sentinels, sentinel: u16) -> usize {
    set.cli(sentinel, &["client", "list"])
        .lines()
        .filter(|line| !line.contains("name=sentinel-") && !line.contains("cmd=client"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sentinel_is_skipped_and_the_watcher_stops_with_the_store() {
    let mut set = Sentinels::spawn(None);
    set.sentinels[0].kill();
    let live = set.sentinels[1].port();
    let idle = store_clients(&set, live);
    let store = RedisStore::connect_sentinel(
        SentinelConfig::new(set.addrs(), MASTER)
            .connect_timeout(Duration::from_millis(500))
            // Stopped with the store, not at its next check.
            .check_interval(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let key = Key::new("sentinel:k").unwrap();
    store.set(&key, value("v"), None).await.unwrap();
    let read = store.get(&key).await.unwrap().expect("written");
    assert_eq!(read.bytes().as_ref(), b"v");
    // The watcher asks the live sentinel and listens to it.
    support::within(Duration::from_secs(5), async || {
        store_clients(&set, live) == idle + 2
    })
    .await;
    let clone = store.clone();
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store_clients(&set, live),
        idle + 2,
        "a clone still uses the watcher"
    );
    drop(clone);
    support::within(Duration::from_secs(5), async || {
        store_clients(&set, live) == idle
    })
    .await;
}

/// No sentinel knows the name: a typed error within the connect timeout, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_master_name_is_a_connect_error() {
    let set = Sentinels::spawn(None);
    let started = Instant::now();
    let error = RedisStore::connect_sentinel(
        SentinelConfig::new(set.addrs(), "no-such-master")
            .connect_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, tower_caching::store::StoreError::Connect { .. }),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A lazily connected store starts while no sentinel answers, fails each command at once
/// meanwhile, and follows the primary as soon as the sentinels are up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_store_starts_before_the_sentinels_and_finds_the_primary_later() {
    let mut set = Sentinels::spawn(None);
    for sentinel in &mut set.sentinels {
        sentinel.kill();
    }
    let store = RedisStore::connect_sentinel_lazy(
        SentinelConfig::new(set.addrs(), MASTER).command_timeout(Duration::from_millis(200)),
    )
    .unwrap();
    let key = Key::new("sentinel:lazy").unwrap();
    let started = Instant::now();
    assert!(store.set(&key, value("v"), None).await.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    for sentinel in &mut set.sentinels {
        sentinel.restart();
    }
    support::within(Duration::from_secs(10), async || {
        store.set(&key, value("v"), None).await.is_ok()
    })
    .await;
    assert_eq!(
        set.cli(set.primary.port(), &["get", "sentinel:lazy"])
            .trim(),
        "v"
    );
}

/// Two instances on two tiers over a Sentinel-managed L2: one's write drops the other's L1
/// copy, before a failover and after it (the backplane moves to the promoted primary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiered_backplane_follows_the_primary_through_a_failover() {
    tiered_coherence_through_a_failover("sentinel-test".into()).await;
}

/// The same with `CLIENT TRACKING` coherence: the tracking connection moves to the promoted
/// primary, and a foreign write there (by `redis-cli`) still drops the L1 copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_tracking_follows_the_primary_through_a_failover() {
    tiered_coherence_through_a_failover(tower_caching::store::Tracking::all_keys().into()).await;
}

async fn tiered_coherence_through_a_failover(coherence: tower_caching::store::Coherence) {
    use tower_caching::store::{Coherence, TieredStore};

    let tracking = matches!(coherence, Coherence::Tracking(_));
    let mut set = Sentinels::spawn(None);
    let tiered = async || {
        let l2 = RedisStore::connect_sentinel(
            SentinelConfig::new(set.addrs(), MASTER).command_timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap();
        let l1 = tower_caching::MemoryStore::new();
        let store =
            TieredStore::over_sentinels(l1.clone(), l2, Duration::from_secs(60), coherence.clone())
                .unwrap();
        support::within(Duration::from_secs(5), async || store.is_coherent()).await;
        (store, l1)
    };
    let ((a, _), (b, b_l1)) = (tiered().await, tiered().await);
    let key = Key::new("sentinel:tiered").unwrap();
    // Written by A, then copied into B's L1 by a read; A's rewrite must reach B's L1.
    let rewrite_seen_by_b = async |text: &str| {
        a.set(&key, value("first"), None).await.unwrap();
        support::within(Duration::from_secs(5), async || {
            b.get(&key)
                .await
                .ok()
                .flatten()
                .is_some_and(|v| v.bytes().as_ref() == b"first")
        })
        .await;
        a.set(&key, value(text), None).await.unwrap();
        support::within(Duration::from_secs(5), async || {
            b.get(&key)
                .await
                .ok()
                .flatten()
                .is_some_and(|v| v.bytes().as_ref() == text.as_bytes())
        })
        .await;
    };
    rewrite_seen_by_b("before").await;

    let promoted = set.replica.port();
    set.primary.kill();
    let set = tokio::task::spawn_blocking(move || {
        set.wait_for_primary(promoted);
        set
    })
    .await
    .unwrap();
    // Both backplanes subscribed again, on the promoted primary (the only node left).
    support::within(Duration::from_secs(15), async || {
        a.set(&key, value("probe"), None).await.is_ok() && a.is_coherent() && b.is_coherent()
    })
    .await;
    rewrite_seen_by_b("after").await;
    if tracking {
        // B's L1 holds the key (it is read until it does), then another client rewrites it.
        support::within(Duration::from_secs(5), async || {
            b.get(&key).await.is_ok() && b_l1.get(&key).await.ok().flatten().is_some()
        })
        .await;
        set.cli(promoted, &["set", "sentinel:tiered", "foreign"]);
        support::within(Duration::from_secs(2), async || {
            b.get(&key)
                .await
                .ok()
                .flatten()
                .is_some_and(|v| v.bytes().as_ref() == b"foreign")
        })
        .await;
    }
    drop(set);
}
