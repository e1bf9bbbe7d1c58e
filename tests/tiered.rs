//! Two-tier L1/L2 caching: two stores on one redis-server act as two app instances; a write
//! on one is invisible in the other's L1 within 100 ms, pattern deletes propagate, and a
//! lost backplane connection clears L1.
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use support::RedisServer;
use tower_caching::key::KeyBuilder;
use tower_caching::store::{MemoryStore, RedisConfig, RedisStore, Store, TieredStore};
use tower_caching::Cache;

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
async fn read_into_l1<V: tower_caching::Cacheable>(
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
        a.set(&keys.vsync(id), &id.to_string(), None).await.unwrap();
        read_into_l1(&b, &b_l1, &keys.vsync(id)).await;
    }
    a.delete_pattern(&keys.vsyncs()).await.unwrap();
    let gone = within(Duration::from_millis(100), async || {
        b_l1.get(&keys.vsync("2")).await.unwrap().is_none()
    })
    .await;
    assert!(gone.is_some(), "pattern invalidation did not reach B's L1");
    assert_eq!(b.get(&keys.vsync("2")).await.unwrap(), None);
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
    println!("tiered: tag invalidation seen by the other instance's L1 after {seen:?} ({:?} after the call began)", started.elapsed());
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
        Some(Duration::from_millis(300)),
    )
    .await
    .unwrap();

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
    tokio::time::sleep(Duration::from_millis(450)).await;
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
