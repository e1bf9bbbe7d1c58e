//! Redis Cluster under failover: a primary killed under load, its replica promoted; requests
//! keep succeeding (from the loader while the slot map changes), and caching resumes.
#![cfg(all(feature = "cluster", feature = "metrics"))]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::RedisCluster;
use support::db::{Db, Entry, GetEntry, entry};
use tower::ServiceExt;
use tower_caching::key::KeyBuilder;
use tower_caching::metrics::Metrics;
use tower_caching::store::{CircuitBreaker, RedisClusterConfig, RedisClusterStore};
use tower_caching::{Cache, CacheLayer};
use tower_layer::Layer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_fails_over_under_load_and_caching_resumes() {
    let mut cluster = RedisCluster::spawn(3, 1);
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder().register(&registry).unwrap();
    let store = RedisClusterStore::connect(
        RedisClusterConfig::new(cluster.addrs())
            .connect_timeout(Duration::from_millis(300))
            .command_timeout(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    let store = CircuitBreaker::builder(store)
        .failures(5)
        .open_for(Duration::from_millis(300))
        .metrics(&metrics)
        .build();
    let db = Db::default();
    for id in 0..100 {
        db.insert(entry(&id.to_string(), "v"));
    }
    let cache: Cache<Option<Entry>, _> = Cache::builder(store).metrics(metrics).build();
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
                let read = reader
                    .clone()
                    .oneshot(GetEntry {
                        keys: keys.clone(),
                        id,
                    })
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                if read.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // `redis-cli --cluster create` makes the first nodes the primaries.
    let killed_port = cluster.nodes[0].port();
    cluster.nodes[0].kill();
    let killed = Instant::now();
    // The cluster is kept (and dropped, killing its nodes) only at the end of the test.
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_for_failover(killed_port);
        cluster
    })
    .await
    .unwrap();
    let failed_over = killed.elapsed();
    // Caching resumes once the client has the new slot map.
    let hits_before = support::hits(&registry);
    let deadline = Instant::now() + Duration::from_secs(15);
    while support::hits(&registry) < hits_before + 200.0 {
        assert!(
            Instant::now() < deadline,
            "caching did not resume after the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    // Every key is cached again, the failed primary's slots included: a second pass over
    // all of them is all hits.
    let keys = KeyBuilder::new();
    for _ in 0..2 {
        for id in 0..100 {
            let get = GetEntry {
                keys: keys.clone(),
                id: id.to_string(),
            };
            reader.clone().oneshot(get).await.unwrap();
        }
    }
    let reads = db.reads();
    for id in 0..100 {
        let get = GetEntry {
            keys: keys.clone(),
            id: id.to_string(),
        };
        reader.clone().oneshot(get).await.unwrap();
    }
    assert_eq!(
        db.reads(),
        reads,
        "some keys are no longer cached after the failover"
    );
    println!(
        "cluster failover: requests {}, failed {}, cluster ok again after {failed_over:?}, \
         caching resumed after {resumed:?}, cache hits {}",
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        support::hits(&registry),
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    drop(cluster);
}

/// A builder's hash tag puts its keys in one slot; without one, user parts never choose the
/// slot (their braces are escaped), and keys spread over the primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_tags_come_from_the_key_builder_only() {
    let nodes = support::shared_cluster();
    let mut raw = support::raw_connection(&format!("redis://{}", nodes[0])).await;
    let slot = async |raw: &mut redis::aio::MultiplexedConnection, key: &str| -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(raw)
            .await
            .unwrap()
    };
    let tagged = KeyBuilder::new().prefix("payments").hash_tag("12345678");
    let mut slots = std::collections::HashSet::new();
    for id in 0..20 {
        slots.insert(slot(&mut raw, tagged.entry(&id.to_string()).as_str()).await);
    }
    slots.insert(slot(&mut raw, tagged.metrics("12345678").as_str()).await);
    assert_eq!(slots.len(), 1, "one hash tag, several slots");

    let untagged = KeyBuilder::new().prefix("payments");
    let mut slots = std::collections::HashSet::new();
    for id in 0..20 {
        // Users asking for one slot with braces in their ids do not get it.
        slots.insert(slot(&mut raw, untagged.entry(&format!("{{same}}{id}")).as_str()).await);
    }
    assert!(slots.len() > 1, "braces in user parts chose the slot");

    // Multi-key operations over tagged keys run on one node; spread keys are split by slot.
    let store = support::shared_cluster_store().await;
    let cache: Cache<u32, RedisClusterStore> = Cache::new(store);
    for keys in [&tagged, &untagged] {
        let entries: Vec<_> = (0..20u32)
            .map(|i| (keys.entry(&format!("m{i}")), i))
            .collect();
        cache.set_many(&entries, None).await.unwrap();
        let found = cache
            .get_many(&entries.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(found, (0..20u32).map(Some).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_the_applications_own_cluster_connection() {
    let nodes: Vec<String> = support::shared_cluster()
        .iter()
        .map(|addr| format!("redis://{addr}"))
        .collect();
    let client = redis::cluster::ClusterClient::new(nodes).unwrap();
    let connection = client.get_async_connection().await.unwrap();
    let store = RedisClusterStore::with_connection(connection, Duration::from_secs(2));
    let cache: Cache<String, RedisClusterStore> = Cache::new(store);
    let key = KeyBuilder::new()
        .prefix(&support::unique_prefix("byo"))
        .entry("e1");
    cache.set(&key, &"v".to_string(), None).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("v"));
}
