//! Two-tier L1/L2 caching: two stores on one redis-server act as two app instances; a write
//! on one is invisible in the other's L1 within 100 ms, pattern deletes propagate, and a
//! lost coherence connection clears L1. Every such test runs twice: with the pub/sub
//! backplane, and with Redis's own invalidations (`CLIENT TRACKING`), which also see writes
//! made by other clients.
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use support::RedisServer;
use tower_caching::Cache;
use tower_caching::key::KeyBuilder;
use tower_caching::store::{
    Coherence, MemoryStore, RedisConfig, RedisStore, Store, TieredStore, Tracking,
};

/// How the instances of a test keep their L1 coherent.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Backplane,
    Tracking,
}

impl Mode {
    /// The coherence of one test's instances: a channel of its own, or every key.
    fn coherence(self, channel: &str) -> Coherence {
        match self {
            Mode::Backplane => Coherence::from(channel),
            Mode::Tracking => Tracking::all_keys().into(),
        }
    }
}

async fn instance(
    config: &RedisConfig,
    coherence: impl Into<Coherence>,
) -> (Cache<String, TieredStore>, MemoryStore, TieredStore) {
    let l1 = MemoryStore::new();
    let l2 = RedisStore::connect(config.clone()).await.unwrap();
    let store =
        TieredStore::with_coherence(l1.clone(), l2, config, Duration::from_secs(60), coherence)
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store.is_coherent() {
        assert!(Instant::now() < deadline, "L1 coherence never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (Cache::new(store.clone()), l1, store)
}

/// Both modes of each listed test, as `backplane::name` and `tracking::name`.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod backplane {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::Backplane).await
                }
            )*
        }
        mod tracking {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::Tracking).await
                }
            )*
        }
    };
}

in_both_modes!(
    a_write_on_one_instance_leaves_no_stale_l1_on_another,
    a_lost_coherence_connection_clears_l1,
    a_tag_invalidated_on_one_instance_empties_every_l1,
    an_l2_hit_lands_in_l1_typed_and_no_longer_than_it_is_fresh,
    an_l2_read_racing_an_invalidation_leaves_no_stale_l1,
    writes_racing_on_two_instances_leave_no_stale_l1,
    reads_racing_a_pattern_delete_leave_nothing_in_l1,
    a_dropped_tiered_store_closes_its_connection,
    a_silent_coherence_connection_is_noticed_and_l1_cleared,
);

/// Reads `key` through `cache` until its L1 holds it: a read that raced an invalidation
/// of the key (even the writer's own message, arriving late) leaves L1 alone, and a later
/// read fills it.
async fn read_into_l1<
    V: tower_caching::Cacheable + serde::Serialize + serde::de::DeserializeOwned,
>(
    cache: &Cache<V, TieredStore>,
    l1: &MemoryStore,
    key: &tower_caching::Key,
) {
    for _ in 0..100 {
        cache.get(key).await.unwrap();
        if l1.get(key).await.unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{key} never reached L1");
}

/// How long until `check` holds, polling every millisecond (at most `limit`).
async fn within(limit: Duration, check: impl AsyncFn() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

async fn a_write_on_one_instance_leaves_no_stale_l1_on_another(mode: Mode) {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1));
    let channel = support::unique_prefix("backplane");
    let (a, _, _) = instance(&config, mode.coherence(&channel)).await;
    let (b, b_l1, _) = instance(&config, mode.coherence(&channel)).await;
    let keys = KeyBuilder::new();
    let key = keys.entry("e1");

    a.set(&key, &"v1".to_string(), None).await.unwrap();
    assert_eq!(b.get(&key).await.unwrap().as_deref(), Some("v1"));
    // Now in B's L1: served without Redis.
    read_into_l1(&b, &b_l1, &key).await;

    let mut delays = Vec::new();
    for round in 2..12 {
        let value = format!("v{round}");
        a.set(&key, &value, None).await.unwrap();
        let seen = within(Duration::from_millis(100), async || {
            b.get(&key).await.unwrap().as_deref() == Some(value.as_str())
        })
        .await;
        delays.push(seen.unwrap_or_else(|| {
            panic!("B still served a stale value after 100 ms (round {round})")
        }));
    }
    delays.sort();
    println!(
        "tiered: invalidation seen by the other instance after {:?} (median), {:?} (max)",
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );

    // Pattern deletes reach the other L1 too.
    for id in ["1", "2", "3"] {
        a.set(&keys.build("vsync", id), &id.to_string(), None)
            .await
            .unwrap();
        read_into_l1(&b, &b_l1, &keys.build("vsync", id)).await;
    }
    a.delete_pattern(&keys.pattern("vsync")).await.unwrap();
    let gone = within(Duration::from_millis(100), async || {
        b_l1.get(&keys.build("vsync", "2")).await.unwrap().is_none()
    })
    .await;
    assert!(gone.is_some(), "pattern invalidation did not reach B's L1");
    assert_eq!(b.get(&keys.build("vsync", "2")).await.unwrap(), None);
}

async fn a_lost_coherence_connection_clears_l1(mode: Mode) {
    let mut server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_millis(200));
    let channel = support::unique_prefix("backplane");
    let (a, a_l1, store) = instance(&config, mode.coherence(&channel)).await;
    let key = KeyBuilder::new().entry("e1");
    a.set(&key, &"v1".to_string(), None).await.unwrap();
    read_into_l1(&a, &a_l1, &key).await;

    server.kill();
    let cleared = within(Duration::from_secs(2), async || {
        a_l1.get(&key).await.unwrap().is_none()
    })
    .await;
    assert!(
        cleared.is_some(),
        "L1 kept entries after losing the backplane"
    );
    assert!(!store.is_coherent());
    // Without a backplane, L1 is not used: reads go to L2 (down now, so an error).
    assert!(a.get(&key).await.is_err());

    server.restart();
    let back = within(Duration::from_secs(10), async || store.is_coherent()).await;
    assert!(back.is_some(), "the backplane never came back");
}

async fn a_tag_invalidated_on_one_instance_empties_every_l1(mode: Mode) {
    use tower_caching::key::Tag;
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1));
    let channel = support::unique_prefix("tags");
    let by_owner = |_: &tower_caching::Key, value: &String| {
        vec![Tag::new(format!("owner:{}", value.split('/').next().unwrap())).unwrap()]
    };
    let (a, _, _) = instance(&config, mode.coherence(&channel)).await;
    let (b, b_l1, _) = instance(&config, mode.coherence(&channel)).await;
    let (a, b) = (a.tag_with(by_owner), b.tag_with(by_owner));
    let keys = KeyBuilder::new();
    for id in 0..50 {
        let owner = if id % 2 == 0 { "ana" } else { "bia" };
        a.set(&keys.entry(&id.to_string()), &format!("{owner}/{id}"), None)
            .await
            .unwrap();
    }
    for id in 0..50 {
        read_into_l1(&b, &b_l1, &keys.entry(&id.to_string())).await;
    }

    let started = Instant::now();
    assert_eq!(
        a.invalidate_tag(&Tag::new("owner:ana").unwrap())
            .await
            .unwrap(),
        25
    );
    let seen = within(Duration::from_millis(100), async || {
        b_l1.get(&keys.entry("48")).await.unwrap().is_none()
    })
    .await
    .expect("B's L1 still held a tagged entry 100 ms after the invalidation");
    println!(
        "tiered: tag invalidation seen by the other instance's L1 after {seen:?} ({:?} after the call began)",
        started.elapsed()
    );
    for id in 0..50 {
        let found = b.get(&keys.entry(&id.to_string())).await.unwrap();
        assert_eq!(found.is_some(), id % 2 == 1, "entry {id}");
    }
}

async fn an_l2_hit_lands_in_l1_typed_and_no_longer_than_it_is_fresh(mode: Mode) {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1));
    let channel = support::unique_prefix("promote");
    let (a, _, _) = instance(&config, mode.coherence(&channel)).await;
    let (b, b_l1, _) = instance(&config, mode.coherence(&channel)).await;
    let keys = KeyBuilder::new();
    let (long, short) = (keys.entry("long"), keys.entry("short"));
    a.set(&long, &"kept".to_string(), None).await.unwrap();
    a.set(
        &short,
        &"brief".to_string(),
        Some(Duration::from_millis(1000)),
    )
    .await
    .unwrap();
    let short_set = std::time::Instant::now();

    // B's first read is an L2 hit: decoded once, and L1 keeps the typed value.
    assert_eq!(b.get(&long).await.unwrap().as_deref(), Some("kept"));
    read_into_l1(&b, &b_l1, &long).await;
    let in_l1 = b_l1.get(&long).await.unwrap().expect("copied into L1");
    let typed = in_l1.decoded().and_then(|d| d.downcast_ref::<String>());
    assert_eq!(
        typed.map(String::as_str),
        Some("kept"),
        "L1 holds bytes only"
    );

    // L1's TTL (60 s here) never outlasts the value's own.
    assert_eq!(b.get(&short).await.unwrap().as_deref(), Some("brief"));
    read_into_l1(&b, &b_l1, &short).await;
    tokio::time::sleep(Duration::from_millis(1150).saturating_sub(short_set.elapsed())).await;
    assert!(
        b_l1.get(&short).await.unwrap().is_none(),
        "L1 served a value past its TTL"
    );
    assert_eq!(b.get(&short).await.unwrap(), None);
}

/// A read on B races writes on A: whatever the interleaving of B's L2 reply and A's
/// invalidation, B's L1 never keeps a value older than the last write once things settle.
async fn an_l2_read_racing_an_invalidation_leaves_no_stale_l1(mode: Mode) {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1));
    let channel = support::unique_prefix("race");
    let (a, _, _) = instance(&config, mode.coherence(&channel)).await;
    let (b, b_l1, _) = instance(&config, mode.coherence(&channel)).await;
    let key = KeyBuilder::new().entry("raced");
    for round in 0..1000u32 {
        let value = round.to_string();
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (b, key) = (b.clone(), key.clone());
                tokio::spawn(async move {
                    for _ in 0..3 {
                        let _ = b.get(&key).await;
                    }
                })
            })
            .collect();
        a.set(&key, &value, None).await.unwrap();
        for reader in readers {
            reader.await.unwrap();
        }
        let settled = within(Duration::from_millis(100), async || {
            match b_l1.get(&key).await.unwrap() {
                None => true,
                Some(_) => b.get(&key).await.unwrap().as_deref() == Some(value.as_str()),
            }
        })
        .await;
        if settled.is_none() {
            let held = b_l1.get(&key).await.unwrap().map(|v| v.bytes().len());
            panic!(
                "round {round}: B's L1 kept {:?} ({held:?} bytes), the last write was {value}",
                b.get(&key).await.unwrap()
            );
        }
    }
}

async fn reads_racing_a_pattern_delete_leave_nothing_in_l1(mode: Mode) {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(2));
    let channel = support::unique_prefix("race");
    let (a, a_l1, _a_store) = instance(&config, mode.coherence(&channel)).await;
    let (b, _, _b_store) = instance(&config, mode.coherence(&channel)).await;
    let keys = KeyBuilder::new();
    // Written by the other instance: in L2, not in this one's L1.
    let entries: Vec<_> = (0..3000)
        .map(|i| (keys.entry(&i.to_string()), format!("v{i}")))
        .collect();
    b.set_many(&entries, None).await.unwrap();
    let deleting = tokio::spawn({
        let a = a.clone();
        let pattern = keys.entries();
        async move { a.delete_pattern(&pattern).await.unwrap() }
    });
    // Reads that overlap the SCAN and UNLINK rounds: each may copy an L2 value into L1.
    while !deleting.is_finished() {
        let reads = (0..50).map(|_| {
            let key = &entries[fastrand::usize(..entries.len())].0;
            a.get(key)
        });
        futures_util::future::join_all(reads).await;
    }
    assert_eq!(deleting.await.unwrap(), 3000);
    let mut left = 0;
    for (key, _) in &entries {
        if a_l1.get(key).await.unwrap().is_some() {
            left += 1;
        }
    }
    assert_eq!(left, 0, "deleted values copied back into L1");
    assert_eq!(a.get(&entries[0].0).await.unwrap(), None);
}

/// How many connections keep L1s coherent on the server at `url`: subscribers, or tracking
/// connections.
async fn coherence_clients(url: &str, mode: Mode) -> usize {
    let mut raw = support::raw_connection(url).await;
    let mut list = redis::cmd("CLIENT");
    list.arg("LIST");
    if let Mode::Backplane = mode {
        list.arg("TYPE").arg("pubsub");
    }
    let list: String = list.query_async(&mut raw).await.unwrap();
    list.lines()
        .filter(|line| match mode {
            Mode::Backplane => !line.is_empty(),
            Mode::Tracking => line.contains("name=tower-caching:tracking:"),
        })
        .count()
}

async fn a_dropped_tiered_store_closes_its_connection(mode: Mode) {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url());
    let (cache, l1, store) =
        instance(&config, mode.coherence(&support::unique_prefix("drop"))).await;
    assert_eq!(coherence_clients(&server.url(), mode).await, 1);
    drop((cache, l1, store));
    let gone = within(Duration::from_secs(5), async || {
        coherence_clients(&server.url(), mode).await == 0
    })
    .await;
    assert!(gone.is_some(), "the subscriber outlived its store");
}

async fn a_silent_coherence_connection_is_noticed_and_l1_cleared(mode: Mode) {
    use support::proxy::{Fault, Proxy};
    let server = RedisServer::spawn();
    let proxy = Proxy::start(server.addr()).await;
    let config = RedisConfig::new(proxy.url()).command_timeout(Duration::from_millis(100));
    let (cache, l1, store) =
        instance(&config, mode.coherence(&support::unique_prefix("silent"))).await;
    let key = KeyBuilder::new().entry("e1");
    cache.set(&key, &"v1".to_string(), None).await.unwrap();
    read_into_l1(&cache, &l1, &key).await;
    // Half-open: connections stay up, nothing gets through, nobody reports an error.
    proxy.set(Fault::BlackHole);
    let noticed = within(Duration::from_secs(15), async || !store.is_coherent()).await;
    assert!(noticed.is_some(), "a silent backplane went unnoticed");
    assert!(l1.get(&key).await.unwrap().is_none(), "L1 kept entries");
    proxy.set(Fault::Pass);
    let back = within(Duration::from_secs(10), async || store.is_coherent()).await;
    assert!(back.is_some(), "the backplane never came back");
}

/// Two instances write one key at once, again and again: whichever write lands last in L2,
/// neither L1 keeps the other value once things settle (a write's L1 copy must not hide a
/// newer write whose invalidation arrived before the copy was made).
async fn writes_racing_on_two_instances_leave_no_stale_l1(mode: Mode) {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1));
    let channel = support::unique_prefix("write-race");
    let (a, a_l1, _a_store) = instance(&config, mode.coherence(&channel)).await;
    let (b, b_l1, _b_store) = instance(&config, mode.coherence(&channel)).await;
    let l2_only: Cache<String, RedisStore> =
        Cache::new(RedisStore::connect(config.clone()).await.unwrap());
    let key = KeyBuilder::new().entry("contended");
    for round in 0..500u32 {
        let (to_a, to_b) = (format!("a{round}"), format!("b{round}"));
        let (wrote_a, wrote_b) = tokio::join!(a.set(&key, &to_a, None), b.set(&key, &to_b, None));
        wrote_a.unwrap();
        wrote_b.unwrap();
        let last = l2_only.get(&key).await.unwrap().expect("written");
        for (name, cache, l1) in [("A", &a, &a_l1), ("B", &b, &b_l1)] {
            let settled = within(Duration::from_millis(200), async || {
                l1.get(&key).await.unwrap().is_none()
                    || cache.get(&key).await.unwrap().as_deref() == Some(last.as_str())
            })
            .await;
            assert!(
                settled.is_some(),
                "round {round}: {name}'s L1 kept {:?}, L2 holds {last}",
                cache.get(&key).await.unwrap()
            );
        }
    }
}

/// A writer that is not this crate: the `redis-cli` binary, run as another process.
fn redis_cli(server: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the crate itself stored under `key`, as raw bytes (a frame another writer can copy).
async fn stored_bytes(server: &RedisServer, key: &tower_caching::Key) -> Vec<u8> {
    let mut raw = support::raw_connection(&server.url()).await;
    redis::cmd("GET")
        .arg(key.as_str())
        .query_async(&mut raw)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_write_drops_a_tracked_l1_copy_but_stays_in_a_backplane_one() {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1));
    let (tracked, tracked_l1, _t) = instance(&config, Tracking::all_keys()).await;
    let (published, published_l1, _p) =
        instance(&config, support::unique_prefix("foreign").as_str()).await;
    let keys = KeyBuilder::new();
    let (key, other) = (keys.entry("e1"), keys.entry("e2"));
    tracked.set(&key, &"old".to_string(), None).await.unwrap();
    tracked.set(&other, &"new".to_string(), None).await.unwrap();
    read_into_l1(&tracked, &tracked_l1, &key).await;
    read_into_l1(&published, &published_l1, &key).await;

    // Another client overwrites the key with a value of its own (a valid frame: a copy).
    let new_frame = stored_bytes(&server, &other).await;
    let mut foreign = support::raw_connection(&server.url()).await;
    let wrote = Instant::now();
    let _: () = redis::cmd("SET")
        .arg(key.as_str())
        .arg(&new_frame)
        .query_async(&mut foreign)
        .await
        .unwrap();
    let seen = within(Duration::from_millis(100), async || {
        tracked.get(&key).await.unwrap().as_deref() == Some("new")
    })
    .await
    .expect("the tracked L1 still served the old value 100 ms after a foreign write");
    println!(
        "tracking: foreign write seen after {seen:?} ({:?} after the write)",
        wrote.elapsed()
    );
    // The backplane never hears of it: L1 serves the old value until `l1_ttl`.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(published.get(&key).await.unwrap().as_deref(), Some("old"));

    // Deleted by `redis-cli`, from another process.
    read_into_l1(&tracked, &tracked_l1, &key).await;
    redis_cli(&server, &["DEL", key.as_str()]);
    within(Duration::from_millis(500), async || {
        tracked.get(&key).await.unwrap().is_none()
    })
    .await
    .expect("a key deleted by redis-cli stayed in the tracked L1");

    // Given another type by a foreign client: dropped, and then a typed miss, not a panic.
    tracked.set(&key, &"v".to_string(), None).await.unwrap();
    read_into_l1(&tracked, &tracked_l1, &key).await;
    redis_cli(&server, &["DEL", key.as_str()]);
    redis_cli(&server, &["HSET", key.as_str(), "f", "v"]);
    within(Duration::from_millis(500), async || {
        tracked_l1.get(&key).await.unwrap().is_none()
    })
    .await
    .expect("a key retyped by redis-cli stayed in the tracked L1");
    assert!(matches!(tracked.get(&key).await, Ok(None) | Err(_)));

    // Expired by Redis: the expiry is a change too.
    tracked
        .set(&other, &"brief".to_string(), None)
        .await
        .unwrap();
    read_into_l1(&tracked, &tracked_l1, &other).await;
    redis_cli(&server, &["PEXPIRE", other.as_str(), "50"]);
    within(Duration::from_secs(2), async || {
        tracked.get(&other).await.unwrap().is_none()
    })
    .await
    .expect("a key Redis expired stayed in the tracked L1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_by_another_client_empties_a_tracked_l1() {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1));
    let (cache, l1, store) = instance(&config, Tracking::all_keys()).await;
    let keys = KeyBuilder::new();
    for id in 0..20 {
        let key = keys.entry(&id.to_string());
        cache.set(&key, &id.to_string(), None).await.unwrap();
        read_into_l1(&cache, &l1, &key).await;
    }
    redis_cli(&server, &["FLUSHALL"]);
    within(Duration::from_millis(500), async || l1.entry_count() == 0)
        .await
        .expect("FLUSHALL left entries in the tracked L1");
    assert!(store.is_coherent(), "a flush is no disconnection");
    assert_eq!(cache.get(&keys.entry("7")).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_foreign_writes_leaves_no_stale_tracked_copy() {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(2));
    let (cache, l1, store) = instance(&config, Tracking::all_keys()).await;
    let keys = KeyBuilder::new();
    let entries: Vec<_> = (0..2000)
        .map(|i| (keys.entry(&i.to_string()), format!("v{i}")))
        .collect();
    cache.set_many(&entries, None).await.unwrap();
    for (key, _) in &entries {
        read_into_l1(&cache, &l1, key).await;
    }
    // One pipeline of 2,000 foreign writes, and keys that are no UTF-8 among them.
    let replacement = stored_bytes(&server, &entries[0].0).await;
    let mut foreign = support::raw_connection(&server.url()).await;
    let mut pipe = redis::pipe();
    for (key, _) in &entries {
        pipe.cmd("SET").arg(key.as_str()).arg(&replacement).ignore();
        pipe.cmd("SET").arg(b"\xff\xfe odd").arg("x").ignore();
    }
    let _: () = pipe.query_async(&mut foreign).await.unwrap();
    within(Duration::from_secs(2), async || l1.entry_count() == 0)
        .await
        .expect("foreign writes left copies in the tracked L1");
    assert!(store.is_coherent());
    assert_eq!(
        cache.get(&entries[1999].0).await.unwrap().as_deref(),
        Some("v0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_outside_the_tracked_prefixes_never_enter_l1() {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1));
    let keys = KeyBuilder::new();
    let (inside, outside) = (keys.entry("e1"), keys.build("participant", "p1"));
    let prefix = inside.as_str().trim_end_matches("e1");
    let (cache, l1, _store) = instance(&config, Tracking::prefix(prefix)).await;
    cache.set(&inside, &"in".to_string(), None).await.unwrap();
    cache.set(&outside, &"out".to_string(), None).await.unwrap();
    read_into_l1(&cache, &l1, &inside).await;
    for _ in 0..5 {
        assert_eq!(cache.get(&outside).await.unwrap().as_deref(), Some("out"));
    }
    assert!(
        l1.get(&outside).await.unwrap().is_none(),
        "an untracked key entered L1, where nothing would invalidate it"
    );
    // So another client's write to it is seen at once.
    redis_cli(&server, &["DEL", outside.as_str()]);
    assert_eq!(cache.get(&outside).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_clears_l1_and_comes_back() {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1));
    let (cache, l1, store) = instance(&config, Tracking::all_keys()).await;
    let key = KeyBuilder::new().entry("e1");
    cache.set(&key, &"v1".to_string(), None).await.unwrap();
    read_into_l1(&cache, &l1, &key).await;

    // An operator (or a proxy, or a server restart) ends the tracking connection.
    let list = redis_cli(&server, &["CLIENT", "LIST"]);
    let id = list
        .lines()
        .find(|line| line.contains("name=tower-caching:tracking:"))
        .and_then(|line| line.split(' ').next())
        .and_then(|id| id.strip_prefix("id="))
        .expect("a named tracking connection");
    assert_eq!(
        redis_cli(&server, &["CLIENT", "KILL", "ID", id]).trim(),
        "1"
    );
    within(Duration::from_secs(2), async || l1.entry_count() == 0)
        .await
        .expect("L1 kept entries after its tracking connection was killed");
    within(Duration::from_secs(10), async || store.is_coherent())
        .await
        .expect("tracking never came back");
    // And it tracks again: a foreign write after the reconnection is seen.
    read_into_l1(&cache, &l1, &key).await;
    redis_cli(&server, &["DEL", key.as_str()]);
    within(Duration::from_millis(500), async || {
        cache.get(&key).await.unwrap().is_none()
    })
    .await
    .expect("a foreign delete after the reconnection stayed in L1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_refused_by_the_server_leaves_l1_bypassed_and_reads_working() {
    let server = RedisServer::spawn();
    // A user that may read and write keys, but not run CLIENT (so not CLIENT TRACKING).
    redis_cli(
        &server,
        &[
            "ACL", "SETUSER", "app", "on", ">secret", "~*", "&*", "+@all", "-client",
        ],
    );
    let config = RedisConfig::new(server.url())
        .username("app")
        .password("secret")
        .command_timeout(Duration::from_secs(1));
    let l1 = MemoryStore::new();
    let l2 = RedisStore::connect(config.clone()).await.unwrap();
    let store = TieredStore::with_coherence(
        l1.clone(),
        l2,
        &config,
        Duration::from_secs(60),
        Tracking::all_keys(),
    )
    .unwrap();
    let cache: Cache<String, TieredStore> = Cache::new(store.clone());
    let key = KeyBuilder::new().entry("e1");
    cache.set(&key, &"v1".to_string(), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("v1"));
    }
    assert!(!store.is_coherent());
    assert_eq!(l1.entry_count(), 0, "L1 used without coherence");
    // Without L1, a foreign write is seen at once.
    redis_cli(&server, &["DEL", key.as_str()]);
    assert_eq!(cache.get(&key).await.unwrap(), None);
}
