//! The hit path against what a user would write by hand or pick instead, in one run on one
//! spawned redis-server, with the same ~200-byte value:
//!
//! - `hit_path/raw_moka`: `moka::future::Cache::get` of the typed value, key built per call;
//! - `hit_path/layer_memory`: the cache-aside layer on `MemoryStore`;
//! - `hit_path/raw_redis`: redis-rs `GET` + `serde_json` decode on a `ConnectionManager`;
//! - `hit_path/layer_redis`: the cache-aside layer on `RedisStore`;
//! - `hit_path/cached_redis`: the `cached` crate's `AsyncRedisCache` (msgpack) on the same
//!   server.
//!
//! `concurrency/{raw_redis,layer_redis}/N`: throughput of hits with N requests in flight on
//! one connection.
//!
//! `interleaved/N`: the same two, alternating within every sample (raw batch, layer batch,
//! in turn), so that the machine's drift between two groups run in sequence does not enter
//! the ratio; criterion reports the layer's throughput, and the bench prints the layer / raw
//! throughput ratio of each sample as min / median / max.
//!
//! `batched/N`: the same, with the layer on a `RedisStore` that batches its lookups
//! (`RedisStore::batch_lookups`), against the same raw redis-rs `GET`s.
//!
//! Run: `cargo bench --bench hit_path` (see BENCHMARKS.md).

#[path = "../tests/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use cached::ConcurrentCachedAsync;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use tower_caching::key::KeyBuilder;
use tower_caching::store::{RedisConfig, RedisStore};
use tower_caching::{Cache, CacheLayer, MemoryStore};
use tower_layer::Layer;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    id: String,
    key: String,
    key_type: String,
    ispb: String,
    owner_name: String,
    created_at: String,
    status: String,
}

fn entry() -> Entry {
    Entry {
        id: "0b9d6b0e-6f1c-4a51-9d0e-3a0c2c7a1f42".into(),
        key: "+5511987654321".into(),
        key_type: "PHONE".into(),
        ispb: "12345678".into(),
        owner_name: "Ana Beatriz de Souza Oliveira".into(),
        created_at: "2025-10-27T12:00:00Z".into(),
        status: "ACTIVE".into(),
    }
}

const ID: &str = "0b9d6b0e";

fn key_of(id: &str) -> String {
    format!("entry:{id}")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn loader()
-> impl tower::Service<String, Response = Entry, Error = Infallible, Future = impl Send> + Clone {
    tower::service_fn(|_: String| async { Ok::<_, Infallible>(entry()) })
}

fn hit_path(c: &mut Criterion) {
    let rt = runtime();
    let url = support::shared_redis();
    let keys = KeyBuilder::new();
    let by_id = move |id: &String| keys.entry(id);
    let keys = KeyBuilder::new();

    let moka: moka::future::Cache<String, Entry> = moka::future::Cache::new(10_000);
    rt.block_on(moka.insert(key_of(ID), entry()));

    let memory = CacheLayer::cache_aside(Cache::<Entry>::new(MemoryStore::new()))
        .key(by_id.clone())
        .layer(loader());
    rt.block_on(memory.clone().oneshot(ID.to_string())).unwrap();

    let redis_store = rt
        .block_on(RedisStore::connect(
            RedisConfig::new(url).command_timeout(Duration::from_secs(1)),
        ))
        .unwrap();
    let layered = CacheLayer::cache_aside(Cache::<Entry, _>::new(redis_store))
        .key(by_id)
        .layer(loader());
    rt.block_on(layered.clone().oneshot(ID.to_string()))
        .unwrap();

    let raw = rt.block_on(async {
        let mut connection = redis::Client::open(url)
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg("raw:entry:0b9d6b0e")
            .arg(serde_json::to_vec(&entry()).unwrap())
            .query_async(&mut connection)
            .await
            .unwrap();
        connection
    });

    let cached_redis = rt.block_on(async {
        let cache: cached::AsyncRedisCache<String, Entry> =
            cached::AsyncRedisCache::builder("bench")
                .connection_string(url)
                .connection_manager(true)
                .ttl(Duration::from_secs(3600))
                .build()
                .await
                .unwrap();
        cache.async_cache_set(key_of(ID), entry()).await.unwrap();
        cache
    });

    let mut group = c.benchmark_group("hit_path");
    group.bench_function("raw_moka", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(moka.get(&key_of(black_box(ID))).await) })
    });
    group.bench_function("layer_memory", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(memory.clone().oneshot(black_box(ID).to_string()).await) })
    });
    group.bench_function("raw_redis", |b| {
        b.to_async(&rt).iter(|| async {
            let mut connection = raw.clone();
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("raw:{}", key_of(black_box(ID))))
                .query_async(&mut connection)
                .await
                .unwrap();
            black_box(serde_json::from_slice::<Entry>(&bytes.unwrap()).unwrap())
        })
    });
    group.bench_function("layer_redis", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(layered.clone().oneshot(black_box(ID).to_string()).await) })
    });
    group.bench_function("cached_redis", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(cached_redis.async_cache_get(&key_of(black_box(ID))).await)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("concurrency");
    for in_flight in [1usize, 16, 64, 256] {
        let batch = 2048;
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("raw_redis", in_flight),
            &in_flight,
            |b, &n| {
                b.to_async(&rt).iter_custom(|iterations| {
                    let raw = raw.clone();
                    async move {
                        let started = Instant::now();
                        for _ in 0..iterations {
                            run_in_flight(n, batch, || raw_hit(raw.clone())).await;
                        }
                        started.elapsed()
                    }
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("layer_redis", in_flight),
            &in_flight,
            |b, &n| {
                b.to_async(&rt).iter_custom(|iterations| {
                    let layered = layered.clone();
                    async move {
                        let started = Instant::now();
                        for _ in 0..iterations {
                            run_in_flight(n, batch, || layer_hit(layered.clone())).await;
                        }
                        started.elapsed()
                    }
                })
            },
        );
    }
    group.finish();

    interleaved(c, &rt, "interleaved", &raw, &layered);
    let batched_store = rt
        .block_on(RedisStore::connect(
            RedisConfig::new(url).command_timeout(Duration::from_secs(1)),
        ))
        .unwrap()
        .batch_lookups();
    let batched = CacheLayer::cache_aside(Cache::<Entry, _>::new(batched_store))
        .key(move |id: &String| keys.entry(id))
        .layer(loader());
    interleaved(c, &rt, "batched", &raw, &batched);
}

/// Layer and raw hits at each depth, alternating within every sample; prints the layer /
/// raw ratio of the samples.
fn interleaved<S>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    raw: &redis::aio::ConnectionManager,
    layered: &S,
) where
    S: tower::Service<String, Response = Entry> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut group = c.benchmark_group(name);
    for in_flight in [1usize, 16, 64, 256] {
        let batch = 2048;
        group.throughput(Throughput::Elements(batch as u64));
        // (layer, raw) time of each sample, for the ratio printed after the group.
        let samples = std::cell::RefCell::new(Vec::new());
        group.bench_with_input(
            BenchmarkId::from_parameter(in_flight),
            &in_flight,
            |b, &n| {
                b.to_async(rt).iter_custom(|iterations| {
                    let (raw, layered, samples) = (raw.clone(), layered.clone(), &samples);
                    async move {
                        let (mut layer_took, mut raw_took) = (Duration::ZERO, Duration::ZERO);
                        for _ in 0..iterations {
                            let started = Instant::now();
                            run_in_flight(n, batch, || raw_hit(raw.clone())).await;
                            raw_took += started.elapsed();
                            let started = Instant::now();
                            run_in_flight(n, batch, || layer_hit(layered.clone())).await;
                            layer_took += started.elapsed();
                        }
                        samples.borrow_mut().push((layer_took, raw_took));
                        layer_took
                    }
                })
            },
        );
        let samples = samples.into_inner();
        let (layer_total, raw_total) = samples.iter().fold((0.0, 0.0), |(l, r), (layer, raw)| {
            (l + layer.as_secs_f64(), r + raw.as_secs_f64())
        });
        let mut ratios: Vec<f64> = samples
            .iter()
            .map(|(layer, raw)| raw.as_secs_f64() / layer.as_secs_f64())
            .collect();
        if !ratios.is_empty() {
            ratios.sort_by(f64::total_cmp);
            println!(
                "{name}/{in_flight}: layer / raw hits per second {:.3} over all samples; per sample min {:.3} median {:.3} max {:.3} ({} samples)",
                raw_total / layer_total,
                ratios[0],
                ratios[ratios.len() / 2],
                ratios[ratios.len() - 1],
                ratios.len()
            );
        }
    }
    group.finish();
}

/// One hit by hand: redis-rs `GET` and `serde_json` decode.
async fn raw_hit(mut connection: redis::aio::ConnectionManager) {
    let bytes: Option<Vec<u8>> = redis::cmd("GET")
        .arg("raw:entry:0b9d6b0e")
        .query_async(&mut connection)
        .await
        .unwrap();
    black_box(serde_json::from_slice::<Entry>(&bytes.unwrap()).unwrap());
}

/// One hit through the layer.
async fn layer_hit<S>(service: S)
where
    S: tower::Service<String, Response = Entry>,
    S::Error: std::fmt::Debug,
{
    black_box(service.oneshot(ID.to_string()).await.unwrap());
}

/// Runs `total` calls of `call`, keeping `in_flight` of them running at once.
async fn run_in_flight<F, Fut>(in_flight: usize, total: usize, call: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut running = FuturesUnordered::new();
    let mut started = 0;
    while started < total.min(in_flight) {
        running.push(call());
        started += 1;
    }
    while running.next().await.is_some() {
        if started < total {
            running.push(call());
            started += 1;
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = hit_path
}
criterion_main!(benches);
