//! Auto-recovery and per-key errors against a real redis-server, through a fault-injecting
//! relay: a write Redis missed while slow or unreachable is repaired when it answers again,
//! no read serves a value older than the database's meanwhile, and one bad key (a wrong
//! type, an oversized or undecodable value, a full server) never opens the circuit.
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::RedisServer;
use support::db::{CreateEntry, Db, Entry, GetEntry, entry};
use support::proxy::{Fault, Proxy};
use tower::ServiceExt;
use tower_caching::key::{Key, KeyBuilder, Pattern, Tag};
use tower_caching::store::{CircuitBreaker, RedisConfig, RedisStore, Store, StoreValue};
use tower_caching::{Cache, CacheLayer};
use tower_layer::Layer;

const COMMAND_TIMEOUT: Duration = Duration::from_millis(50);

async fn breaker(url: String, failures: u32) -> CircuitBreaker<RedisStore> {
    let store = RedisStore::connect(
        RedisConfig::new(url)
            .command_timeout(COMMAND_TIMEOUT)
            .connect_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    CircuitBreaker::builder(store)
        .failures(failures)
        .open_for(Duration::from_millis(300))
        .build()
}

/// What Redis itself holds under `key`, read past the cache.
async fn raw_get(server: &RedisServer, key: &Key) -> Option<Vec<u8>> {
    let mut raw = support::raw_connection(&server.url()).await;
    raw.get(key.as_str()).await.unwrap()
}

/// Waits until `done` holds, for at most `within`.
async fn eventually(within: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The reproduction: e1=v1 cached; Redis turns 2 s slow; reads time out; e1=v2's
/// SET times out (it lands late) and opens the circuit; e1=v3's is refused; Redis heals.
/// No read may answer anything but what the database holds, and Redis must end with v3 or
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_redis_missed_while_slow_are_repaired_and_never_served_stale() {
    let server = RedisServer::spawn();
    let proxy = Proxy::start(server.addr()).await;
    let store = breaker(proxy.url(), 3).await;
    let db = Db::default();
    db.insert(entry("e1", "v1"));
    let reads: Cache<Option<Entry>, _> = Cache::new(store.clone());
    let writes: Cache<Entry, _> = reads.typed();
    let reader = CacheLayer::cache_aside(reads.clone()).layer(db.clone());
    let writer = CacheLayer::write_through(writes.clone()).layer(db.clone());
    let keys = KeyBuilder::new();
    let read = || {
        reader.clone().oneshot(GetEntry {
            keys: keys.clone(),
            id: "e1".into(),
        })
    };
    let write = |owner: &str| {
        writer.clone().oneshot(CreateEntry {
            keys: keys.clone(),
            entry: entry("e1", owner),
        })
    };
    let owner = |found: Option<Entry>| found.map(|e| e.owner_name);

    assert_eq!(owner(read().await.unwrap()).as_deref(), Some("v1"));
    assert_eq!(owner(read().await.unwrap()).as_deref(), Some("v1"), "a hit");

    proxy.latency(Duration::from_secs(2));
    // Two reads time out (of other keys: a key whose read timed out is not read again
    // while its value is looked at).
    for id in ["e2", "e3"] {
        let found = reader
            .clone()
            .oneshot(GetEntry {
                keys: keys.clone(),
                id: id.into(),
            })
            .await
            .unwrap();
        assert_eq!(found, None);
    }
    assert!(!store.is_open(), "two failures of three");
    write("v2").await.unwrap(); // its SET times out: the third failure
    assert!(store.is_open());
    write("v3").await.unwrap(); // refused by the open circuit
    assert!(store.repairs_owed() >= 1);
    proxy.latency(Duration::ZERO);

    // From now on every read must answer v3, while the late SET of v2 lands and the
    // repair runs.
    let key = keys.entry("e1");
    let healed = Instant::now();
    let repaired = eventually(Duration::from_secs(5), async || {
        assert_eq!(owner(read().await.unwrap()).as_deref(), Some("v3"));
        store.repairs_owed() == 0 && !store.is_open()
    })
    .await;
    assert!(repaired, "still owed: {}", store.repairs_owed());
    // The late SET of v2 has landed by now (it left the relay 2 s after it was sent).
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(healed.elapsed())).await;
    for _ in 0..5 {
        assert_eq!(owner(read().await.unwrap()).as_deref(), Some("v3"));
    }
    let held = raw_get(&server, &key).await;
    if let Some(bytes) = held {
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("v3"), "redis holds an older value: {text}");
    }
}

/// A write refused while Redis is unreachable (connections reset, then refused) is
/// repaired once Redis is reachable again, before the key is trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_while_unreachable_are_repaired_on_reconnect() {
    let server = RedisServer::spawn();
    let proxy = Proxy::start(server.addr()).await;
    let store = breaker(proxy.url(), 2).await;
    let db = Db::default();
    db.insert(entry("e1", "v1"));
    let reads: Cache<Option<Entry>, _> = Cache::new(store.clone());
    let writes: Cache<Entry, _> = reads.typed();
    let reader = CacheLayer::read_through(reads.clone()).layer(db.clone());
    let writer = CacheLayer::write_through(writes.clone()).layer(db.clone());
    let keys = KeyBuilder::new();
    let read = || {
        reader.clone().oneshot(GetEntry {
            keys: keys.clone(),
            id: "e1".into(),
        })
    };
    assert_eq!(read().await.unwrap().unwrap().owner_name, "v1");

    proxy.set(Fault::Reset);
    proxy.set(Fault::Refuse);
    writer
        .clone()
        .oneshot(CreateEntry {
            keys: keys.clone(),
            entry: entry("e1", "v2"),
        })
        .await
        .unwrap();
    assert!(store.repairs_owed() >= 1);
    assert_eq!(read().await.unwrap().unwrap().owner_name, "v2");
    proxy.set(Fault::Pass);

    let repaired = eventually(Duration::from_secs(5), async || {
        assert_eq!(read().await.unwrap().unwrap().owner_name, "v2");
        store.repairs_owed() == 0
    })
    .await;
    assert!(repaired);
    // Redis holds v2 (the read after the repair stored it) or nothing; never v1.
    if let Some(bytes) = raw_get(&server, &keys.entry("e1")).await {
        assert!(String::from_utf8_lossy(&bytes).contains("v2"));
    }
}

/// Pattern deletes and tag invalidations the store missed are owed too: matching keys (and,
/// for a tag, every key) are bypassed until they are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_pattern_deletes_and_tag_invalidations_are_applied_on_recovery() {
    let server = RedisServer::spawn();
    let proxy = Proxy::start(server.addr()).await;
    let store = breaker(proxy.url(), 1).await;
    let cache: Cache<u32, _> = Cache::new(store.clone())
        .tag_with(|key, _| vec![Tag::new(format!("t:{}", &key.as_str()[..1])).unwrap()]);
    let (a1, a2, b1) = (
        Key::new("a1").unwrap(),
        Key::new("a2").unwrap(),
        Key::new("b1").unwrap(),
    );
    for key in [&a1, &a2, &b1] {
        cache.set(key, &1, None).await.unwrap();
    }

    proxy.set(Fault::BlackHole);
    assert!(cache.delete_pattern(&Pattern::prefix("a")).await.is_err());
    assert!(
        cache
            .invalidate_tag(&Tag::new("t:b").unwrap())
            .await
            .is_err()
    );
    assert_eq!(store.repairs_owed(), 2);
    proxy.set(Fault::Pass);
    // While owed, nothing is trusted: a tag's keys are unknown here.
    assert_eq!(cache.get(&a1).await.unwrap(), None);
    assert_eq!(cache.get(&b1).await.unwrap(), None);

    let repaired = eventually(Duration::from_secs(5), async || store.repairs_owed() == 0).await;
    assert!(repaired);
    for key in [&a1, &a2, &b1] {
        assert_eq!(raw_get(&server, key).await, None, "{key}");
    }
}

/// A LIST where the cache expects a string is the store answering, not failing: a miss,
/// the load replaces it, and the circuit stays closed however often the key is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_typed_key_is_a_miss_that_its_load_repairs_and_never_opens_the_circuit() {
    let server = RedisServer::spawn();
    let store = breaker(server.url(), 2).await;
    let db = Db::default();
    db.insert(entry("wt", "good"));
    let keys = KeyBuilder::new();
    let key = keys.entry("wt");
    let reads: Cache<Option<Entry>, _> = Cache::new(store.clone());
    let reader = CacheLayer::cache_aside(reads.clone()).layer(db.clone());

    let mut raw = support::raw_connection(&server.url()).await;
    for round in 0..3 {
        let _: () = raw.del(key.as_str()).await.unwrap();
        let _: () = raw.lpush(key.as_str(), "a list").await.unwrap();
        for _ in 0..12 {
            let found = reader
                .clone()
                .oneshot(GetEntry {
                    keys: keys.clone(),
                    id: "wt".into(),
                })
                .await
                .unwrap();
            assert_eq!(found.unwrap().owner_name, "good");
            assert!(!store.is_open(), "round {round}");
        }
        let kind: String = redis::cmd("TYPE")
            .arg(key.as_str())
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(kind, "string", "the load replaced the list");
        assert_eq!(
            reads.get(&key).await.unwrap().flatten().unwrap().owner_name,
            "good"
        );
    }
    // The store's own typed error, for a direct get of a wrong-typed key.
    let _: () = raw.del(key.as_str()).await.unwrap();
    let _: () = raw.lpush(key.as_str(), "a list").await.unwrap();
    let error = store.get(&key).await.unwrap_err();
    assert_eq!(error.kind(), "rejected");
    assert!(!error.is_unhealthy());
}

/// Bytes other software left — too large for the cache's limit, or not a frame — are a
/// miss, and the next load replaces them; the circuit never opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_undecodable_values_are_misses_that_the_next_load_replaces() {
    let server = RedisServer::spawn();
    let store = breaker(server.url(), 2).await;
    let db = Db::default();
    db.insert(entry("big", "good"));
    let keys = KeyBuilder::new();
    let key = keys.entry("big");
    let reads: Cache<Option<Entry>, _> = Cache::builder(store.clone())
        .max_value_size(64 * 1024)
        .build();
    let reader = CacheLayer::cache_aside(reads.clone()).layer(db.clone());
    let mut raw = support::raw_connection(&server.url()).await;
    for planted in [vec![b'x'; 512 * 1024], b"\xff\xfe not a frame".to_vec()] {
        let _: () = raw.set(key.as_str(), planted.as_slice()).await.unwrap();
        let loads = db.reads();
        for _ in 0..10 {
            let found = reader
                .clone()
                .oneshot(GetEntry {
                    keys: keys.clone(),
                    id: "big".into(),
                })
                .await
                .unwrap();
            assert_eq!(found.unwrap().owner_name, "good");
        }
        assert_eq!(db.reads(), loads + 1, "one load replaced it; then hits");
        assert!(!store.is_open());
        let held: Vec<u8> = raw.get(key.as_str()).await.unwrap();
        assert!(held.len() < 1024 && held != planted);
    }
}

/// A value too large to read within the command timeout (50 MiB): the first read times
/// out, the store finds out why and removes it, and the key holds a good value after the
/// next load, without the circuit opening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_large_to_read_in_time_is_removed_and_replaced() {
    let server = RedisServer::spawn();
    let store = breaker(server.url(), 5).await;
    let db = Db::default();
    db.insert(entry("huge", "good"));
    let keys = KeyBuilder::new();
    let key = keys.entry("huge");
    let reads: Cache<Option<Entry>, _> = Cache::new(store.clone());
    let reader = CacheLayer::cache_aside(reads.clone()).layer(db.clone());
    let mut raw = support::raw_connection(&server.url()).await;
    let _: () = redis::cmd("SET")
        .arg(key.as_str())
        .arg(vec![b'x'; 50 << 20])
        .query_async(&mut raw)
        .await
        .unwrap();
    let replaced = eventually(Duration::from_secs(10), async || {
        let found = reader
            .clone()
            .oneshot(GetEntry {
                keys: keys.clone(),
                id: "huge".into(),
            })
            .await
            .unwrap();
        assert_eq!(found.unwrap().owner_name, "good");
        let len: u64 = raw.strlen(key.as_str()).await.unwrap();
        len < 1024
    })
    .await;
    assert!(replaced, "the 50 MiB value is still there");
    assert!(!store.is_open());
}

/// `maxmemory` with `noeviction`: every SET is refused (`OOM`) while reads and deletes work.
/// The circuit stays closed (reads keep hitting), and a write whose SET was refused leaves
/// no old value behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_rejects_sets_without_opening_the_circuit_or_serving_old_values() {
    let server =
        RedisServer::spawn_with(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let store = breaker(server.url(), 2).await;
    let db = Db::default();
    db.insert(entry("e1", "v0"));
    let keys = KeyBuilder::new();
    let reads: Cache<Option<Entry>, _> = Cache::new(store.clone());
    let writes: Cache<Entry, _> = reads.typed();
    let reader = CacheLayer::cache_aside(reads.clone()).layer(db.clone());
    let writer = CacheLayer::write_through(writes.clone()).layer(db.clone());
    let read = || {
        reader.clone().oneshot(GetEntry {
            keys: keys.clone(),
            id: "e1".into(),
        })
    };
    assert_eq!(read().await.unwrap().unwrap().owner_name, "v0");

    let mut raw = support::raw_connection(&server.url()).await;
    let filler = vec![b'f'; 64 * 1024];
    for n in 0.. {
        let set: redis::RedisResult<()> = raw.set(format!("filler:{n}"), filler.as_slice()).await;
        if set.is_err() {
            break;
        }
    }
    let full = store
        .set(
            &Key::new("probe").unwrap(),
            StoreValue::from(vec![1u8; 64 * 1024]),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(full.kind(), "rejected");

    for version in 1..=20 {
        let owner = format!("v{version}");
        writer
            .clone()
            .oneshot(CreateEntry {
                keys: keys.clone(),
                entry: entry("e1", &owner),
            })
            .await
            .unwrap();
        for _ in 0..3 {
            assert_eq!(read().await.unwrap().unwrap().owner_name, owner);
        }
        assert!(!store.is_open(), "version {version}");
    }
}
