//! Strategy-level costs, in memory so that the strategy, not the network, is measured:
//!
//! - `miss_storm/{coalesced,hand_written}`: 1000 concurrent requests for one cold key, a 5 ms
//!   loader; the time until all are answered. The hand-written cache-aside (look up, load on
//!   a miss, store) has no coalescing. Loader calls are printed.
//! - `writes/{write_behind,write_through}`: acknowledgement latency with a 1 ms writer; the
//!   p99 over 2000 writes is printed.
//! - `write_behind_keys/{per_write,per_batch}/{10,1000000}`: acknowledgements per second,
//!   64 producers at once, spread over 10 or 1,000,000 distinct keys (no coalescing then),
//!   into a database of 4 connections and 1 ms a statement: a writer called once per write
//!   (batches of 100, the default), or once per batch of up to 1000 (`writes_batches`).
//!
//! Run: `cargo bench --bench strategies`.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Service, ServiceExt};
use tower_caching::key::KeyBuilder;
use tower_caching::{Cache, CacheLayer};
use tower_layer::Layer;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn slow_loader(
    calls: Arc<AtomicU64>,
) -> impl Service<u64, Response = u64, Error = Infallible, Future = impl Send> + Clone {
    tower::service_fn(move |id: u64| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, Infallible>(id)
        }
    })
}

fn miss_storm(c: &mut Criterion) {
    let rt = runtime();
    let keys = KeyBuilder::new();
    let mut group = c.benchmark_group("miss_storm");
    group.sample_size(10);
    let coalesced_calls = Arc::new(AtomicU64::new(0));
    let mut runs = 0u64;
    group.bench_function("coalesced", |b| {
        b.to_async(&rt).iter(|| {
            runs += 1;
            let cache: Cache<u64> = Cache::in_memory();
            let keys = keys.clone();
            let service = CacheLayer::cache_aside(cache)
                .key(move |id: &u64| keys.entry(&id.to_string()))
                .layer(slow_loader(coalesced_calls.clone()));
            async move {
                let all = (0..1000).map(|_| service.clone().oneshot(7));
                black_box(futures_util::future::join_all(all).await)
            }
        })
    });
    let naive_calls = Arc::new(AtomicU64::new(0));
    let mut naive_runs = 0u64;
    group.bench_function("hand_written", |b| {
        b.to_async(&rt).iter(|| {
            naive_runs += 1;
            let cache: Cache<u64> = Cache::in_memory();
            let key = keys.entry("7");
            let loader = slow_loader(naive_calls.clone());
            async move {
                let all = (0..1000).map(|_| {
                    let (cache, key, loader) = (cache.clone(), key.clone(), loader.clone());
                    async move {
                        if let Ok(Some(value)) = cache.get(&key).await {
                            return value;
                        }
                        let value = loader.oneshot(7).await.unwrap();
                        let _ = cache.set(&key, &value, None).await;
                        value
                    }
                });
                black_box(futures_util::future::join_all(all).await)
            }
        })
    });
    group.finish();
    println!(
        "miss_storm: loader calls per storm of 1000 requests: coalesced {:.1}, hand-written {:.1}",
        coalesced_calls.load(Ordering::Relaxed) as f64 / runs.max(1) as f64,
        naive_calls.load(Ordering::Relaxed) as f64 / naive_runs.max(1) as f64,
    );
}

fn writes(c: &mut Criterion) {
    let rt = runtime();
    let writer = tower::service_fn(|_: (u64, u64)| async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok::<_, Infallible>((0u64, 0u64))
    });
    let keys = KeyBuilder::new();
    let behind_cache: Cache<u64> = Cache::in_memory();
    let behind = {
        let keys = keys.clone();
        rt.block_on(async {
            CacheLayer::write_behind(behind_cache.clone())
                .key(move |w: &(u64, u64)| keys.metrics(&w.0.to_string()))
                .value(|w: &(u64, u64)| Some(w.1))
                .acknowledge(|w: &(u64, u64)| *w)
                .batch_interval(Duration::from_millis(100))
                .layer(writer)
        })
    };
    let through = CacheLayer::write_through(Cache::<(u64, u64)>::in_memory())
        .key(move |w: &(u64, u64)| keys.metrics(&w.0.to_string()))
        .layer(writer);

    let mut group = c.benchmark_group("writes");
    group.bench_function("write_behind", |b| {
        b.to_async(&rt).iter(|| {
            let mut service = behind.clone();
            async move {
                black_box(
                    service
                        .ready()
                        .await
                        .unwrap()
                        .call((fastrand::u64(0..100), 1))
                        .await,
                )
            }
        })
    });
    group.bench_function("write_through", |b| {
        b.to_async(&rt)
            .iter(|| through.clone().oneshot((fastrand::u64(0..100), 1)))
    });
    group.finish();

    let p99 = |mut latencies: Vec<Duration>| {
        latencies.sort();
        latencies[latencies.len() * 99 / 100]
    };
    let (behind_p99, through_p99) = rt.block_on(async {
        let mut behind_latencies = Vec::new();
        let mut through_latencies = Vec::new();
        for i in 0..2000u64 {
            let started = Instant::now();
            let mut service = behind.clone();
            service
                .ready()
                .await
                .unwrap()
                .call((i % 100, i))
                .await
                .unwrap();
            behind_latencies.push(started.elapsed());
            let started = Instant::now();
            through.clone().oneshot((i % 100, i)).await.unwrap();
            through_latencies.push(started.elapsed());
        }
        (p99(behind_latencies), p99(through_latencies))
    });
    rt.block_on(behind_cache.close()).unwrap();
    println!(
        "writes: p99 acknowledgement latency over 2000 writes: write-behind {behind_p99:?}, write-through {through_p99:?}"
    );
}

fn write_behind_keys(c: &mut Criterion) {
    let rt = runtime();
    // A database of 4 connections, 1 ms a statement, whatever its rows.
    let connections = Arc::new(tokio::sync::Semaphore::new(4));
    let statement = move || {
        let connections = connections.clone();
        async move {
            let _connection = connections.acquire().await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok::<_, Infallible>(())
        }
    };
    let per_write = {
        let statement = statement.clone();
        tower::service_fn(move |_: (u64, u64)| statement())
    };
    let per_batch = tower::service_fn(move |_: Vec<(u64, u64)>| statement());
    let keys = KeyBuilder::new();
    let mut group = c.benchmark_group("write_behind_keys");
    let batch = 4096u64;
    group.throughput(criterion::Throughput::Elements(batch));
    for (name, distinct, batched) in [
        ("per_write/10", 10u64, false),
        ("per_write/1000000", 1_000_000, false),
        ("per_batch/10", 10, true),
        ("per_batch/1000000", 1_000_000, true),
    ] {
        let cache: Cache<u64> = Cache::in_memory();
        let layer = {
            let keys = keys.clone();
            CacheLayer::write_behind(cache.clone())
                .key(move |w: &(u64, u64)| keys.metrics(&w.0.to_string()))
                .value(|w: &(u64, u64)| Some(w.1))
                .batch_interval(Duration::from_millis(10))
        };
        let service = rt.block_on(async {
            if batched {
                // One statement for up to 1000 rows.
                tower::util::BoxCloneSyncService::new(
                    layer
                        .max_batch(1000)
                        .writes_batches()
                        .layer(per_batch.clone()),
                )
            } else {
                tower::util::BoxCloneSyncService::new(layer.layer(per_write.clone()))
            }
        });
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let service = service.clone();
                async move {
                    let writers: Vec<_> = (0..64)
                        .map(|_| {
                            let mut service = service.clone();
                            tokio::spawn(async move {
                                for i in 0..batch / 64 {
                                    let key = fastrand::u64(0..distinct);
                                    service.ready().await.unwrap().call((key, i)).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for writer in writers {
                        writer.await.unwrap();
                    }
                }
            })
        });
        drop(service);
        rt.block_on(cache.close()).unwrap();
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = miss_storm, writes, write_behind_keys
}
criterion_main!(benches);
