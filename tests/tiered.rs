//! Two-tier L1/L2 caching: two stores on one redis-server act as two app instances; a write
//! on one is invisible in the other's L1 within 100 ms, pattern deletes propagate, and a
//! lost backplane connection clears L1.
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use support::RedisServer;
use tower_caching::Cache;
use tower_caching::key::KeyBuilder;
use tower_caching::store::{MemoryStore, RedisConfig, RedisStore, Store, TieredStore};

async fn instance(
    config: &RedisConfig,
    channel: &str,
) -> (Cache<String, TieredStore>, MemoryStore, TieredStore) {
    let l1 = MemoryStore::new();
    let l2 = RedisStore::connect(config.clone()).await.unwrap();
    let store = TieredStore::with_channel(l1.clone(), l2, config, Duration::from_secs(60), channel)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store.is_coherent() {
        assert!(Instant::now() < deadline, "the backplane never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (Cache::new(store.clone()), l1, store)
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_leaves_no_stale_l1_on_another() {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1));
    let channel = support::unique_prefix("backplane");
    let (a, _, _) = instance(&config, &channel).await;
    let (b, b_l1, _) = instance(&config, &channel).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_backplane_clears_l1() {
    let mut server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_millis(200));
    let channel = support::unique_prefix("backplane");
    let (a, a_l1, store) = instance(&config, &channel).await;
    let key = KeyBuilder::new().entry("e1");
    a.set(&key, &"v1".to_string(), None).await.unwrap();
    assert!(a_l1.get(&key).await.unwrap().is_some());

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidated_on_one_instance_empties_every_l1() {
    use tower_caching::key::Tag;
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1));
    let channel = support::unique_prefix("tags");
    let by_owner = |_: &tower_caching::Key, value: &String| {
        vec![Tag::new(format!("owner:{}", value.split('/').next().unwrap())).unwrap()]
    };
    let (a, _, _) = instance(&config, &channel).await;
    let (b, b_l1, _) = instance(&config, &channel).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_hit_lands_in_l1_typed_and_no_longer_than_it_is_fresh() {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1));
    let channel = support::unique_prefix("promote");
    let (a, _, _) = instance(&config, &channel).await;
    let (b, b_l1, _) = instance(&config, &channel).await;
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_read_racing_an_invalidation_leaves_no_stale_l1() {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(1));
    let channel = support::unique_prefix("race");
    let (a, _, _) = instance(&config, &channel).await;
    let (b, b_l1, _) = instance(&config, &channel).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_a_pattern_delete_leave_nothing_in_l1() {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url()).command_timeout(Duration::from_secs(2));
    let channel = support::unique_prefix("race");
    let (a, a_l1, _a_store) = instance(&config, &channel).await;
    let (b, _, _b_store) = instance(&config, &channel).await;
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

async fn pubsub_clients(url: &str) -> usize {
    let mut raw = support::raw_connection(url).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut raw)
        .await
        .unwrap();
    list.lines().filter(|line| !line.is_empty()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_tiered_store_closes_its_subscription() {
    let server = RedisServer::spawn();
    let config = RedisConfig::new(server.url());
    let (cache, l1, store) = instance(&config, &support::unique_prefix("drop")).await;
    assert_eq!(pubsub_clients(&server.url()).await, 1);
    drop((cache, l1, store));
    let gone = within(Duration::from_secs(5), async || {
        pubsub_clients(&server.url()).await == 0
    })
    .await;
    assert!(gone.is_some(), "the subscriber outlived its store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_backplane_is_noticed_and_l1_cleared() {
    use support::proxy::{Fault, Proxy};
    let server = RedisServer::spawn();
    let proxy = Proxy::start(server.addr()).await;
    let config = RedisConfig::new(proxy.url()).command_timeout(Duration::from_millis(100));
    let (cache, l1, store) = instance(&config, &support::unique_prefix("silent")).await;
    let key = KeyBuilder::new().entry("e1");
    cache.set(&key, &"v1".to_string(), None).await.unwrap();
    assert!(l1.get(&key).await.unwrap().is_some());
    // Half-open: connections stay up, nothing gets through, nobody reports an error.
    proxy.set(Fault::BlackHole);
    let noticed = within(Duration::from_secs(15), async || !store.is_coherent()).await;
    assert!(noticed.is_some(), "a silent backplane went unnoticed");
    assert!(l1.get(&key).await.unwrap().is_none(), "L1 kept entries");
    proxy.set(Fault::Pass);
    let back = within(Duration::from_secs(10), async || store.is_coherent()).await;
    assert!(back.is_some(), "the backplane never came back");
}
