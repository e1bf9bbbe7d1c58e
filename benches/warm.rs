//! Warming 100,000 keys: `Cache::warm` against the loop a user would write without it
//! (load each key, then `Cache::set` it, 16 at a time), in one run, in memory and on one
//! spawned redis-server. The loader answers at once, so what is measured is the cache's
//! own work: one lookup (a miss), the coalesced load, the store.
//!
//! - `warm_100k/{memory,redis}/warm`: `cache.warm(keys, ttl, loader).concurrency(16)`;
//! - `warm_100k/{memory,redis}/hand_written`: the same keys, `buffer_unordered(16)` of
//!   load-then-`set`, which skips the lookup.
//!
//! Each iteration starts cold (a new memory store, `FLUSHDB` on Redis, not timed).
//!
//! - `hot_keys/{untracked,tracked}`: what counting reads for `HotKeys` adds to an in-memory
//!   `get_or_load` hit, over 1,000 keys read in turn (the hottest 100 kept).
//!
//! Run: `cargo bench --bench warm` (see BENCHMARKS.md).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tower_caching::key::Key;
use tower_caching::store::{RedisConfig, RedisStore, Store};
use tower_caching::{Cache, MemoryStore};

const KEYS: usize = 100_000;
const CONCURRENCY: usize = 16;
const TTL: Option<Duration> = Some(Duration::from_secs(300));

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    id: String,
    owner_name: String,
    ispb: String,
}

fn keys() -> Vec<Key> {
    (0..KEYS)
        .map(|i| Key::new(format!("entry:{i:08}")).unwrap())
        .collect()
}

async fn load(key: Key) -> Result<Entry, std::io::Error> {
    Ok(Entry {
        id: key.as_str()[6..].to_owned(),
        owner_name: "Ana de Souza".into(),
        ispb: "12345678".into(),
    })
}

async fn warm<S: Store>(cache: &Cache<Entry, S>, keys: Vec<Key>) {
    let report = cache.warm(keys, TTL, load).concurrency(CONCURRENCY).await;
    assert_eq!(report.loaded as usize, KEYS);
}

async fn hand_written<S: Store>(cache: &Cache<Entry, S>, keys: Vec<Key>) {
    futures_util::stream::iter(keys)
        .map(|key| async move {
            let entry = load(key.clone()).await.unwrap();
            cache.set(&key, &entry, TTL).await.unwrap();
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<()>()
        .await;
}

/// `iterations` warm-ups of 100,000 keys `way`, each on the cold cache `cold` makes (not
/// timed).
fn timed<S: Store>(
    runtime: &tokio::runtime::Runtime,
    iterations: u64,
    way: &str,
    cold: impl Fn() -> Cache<Entry, S>,
) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..iterations {
        let (cache, keys) = (cold(), keys());
        let started = Instant::now();
        runtime.block_on(async {
            match way {
                "warm" => warm(&cache, keys).await,
                _ => hand_written(&cache, keys).await,
            }
        });
        spent += started.elapsed();
    }
    spent
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let runtime = runtime();
    let redis = runtime.block_on(async {
        RedisStore::connect(
            RedisConfig::new(support::shared_redis()).command_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap()
    });
    let url = support::shared_redis().to_owned();
    let flush = || {
        runtime.block_on(async {
            let mut connection = support::raw_connection(&url).await;
            let _: () = redis::cmd("FLUSHDB")
                .query_async(&mut connection)
                .await
                .unwrap();
        })
    };
    let mut group = c.benchmark_group("warm_100k");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for way in ["warm", "hand_written"] {
        group.bench_function(format!("memory/{way}"), |b| {
            b.iter_custom(|iterations| {
                timed(&runtime, iterations, way, || Cache::new(MemoryStore::new()))
            })
        });
    }
    for way in ["warm", "hand_written"] {
        group.bench_function(format!("redis/{way}"), |b| {
            b.iter_custom(|iterations| {
                timed(&runtime, iterations, way, || {
                    flush();
                    Cache::new(redis.clone())
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("hot_keys");
    let untracked: Cache<Entry, MemoryStore> = Cache::new(MemoryStore::new());
    let tracked: Cache<Entry, MemoryStore> = Cache::builder(MemoryStore::new())
        .hot_keys(
            tower_caching::warm::HotKeys::new("bench")
                .top(100)
                .snapshot_every(None),
        )
        .build();
    let keys: Vec<Key> = keys().into_iter().take(1000).collect();
    for (name, cache) in [("untracked", &untracked), ("tracked", &tracked)] {
        runtime.block_on(async {
            for key in &keys {
                cache
                    .set(key, &load(key.clone()).await.unwrap(), None)
                    .await
                    .unwrap();
            }
        });
        let mut next = 0;
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                next = (next + 1) % keys.len();
                let key = &keys[next];
                async move {
                    cache
                        .get_or_load(key, None, || load(key.clone()))
                        .await
                        .unwrap()
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
