//! The cross-instance miss storm (`miss_storm/*`): four instances in one process, each on
//! its own `RedisStore` (its own connection and flight table), all sharing one spawned
//! redis-server; 500 concurrent misses of one cold key on each, 2,000 in all, against a
//! loader that takes 5 ms (a database). Each iteration is a new key. Timed: until every
//! request is answered.
//!
//! - `per_instance`: plain cache-aside, each instance coalesces its own misses: 4 loads.
//! - `shared`: `share_loads_across_instances`: 1 load in all.
//!
//! The loader calls per storm are printed once per group. Run: `cargo bench --bench stampede`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;
use tower_caching::key::KeyBuilder;
use tower_caching::store::{RedisConfig, RedisStore};
use tower_caching::{Cache, CacheLayer, LoadError};
use tower_layer::Layer;

const INSTANCES: usize = 4;
const MISSES: usize = 500;

type Instance = tower::util::BoxCloneSyncService<String, String, LoadError<std::io::Error>>;

async fn instances(shared: bool, calls: &Arc<AtomicU64>) -> Vec<Instance> {
    let mut all = Vec::new();
    for _ in 0..INSTANCES {
        let store = RedisStore::connect(
            RedisConfig::new(support::shared_redis()).command_timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap();
        let calls = calls.clone();
        let loader = tower::service_fn(move |id: String| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, std::io::Error>(format!("value of {id}"))
            }
        });
        let layer = CacheLayer::cache_aside(Cache::<String, RedisStore>::new(store))
            .key(|id: &String| KeyBuilder::new().entry(id));
        let service = if shared {
            Instance::new(
                layer
                    .share_loads_across_instances(Duration::from_secs(2))
                    .layer(loader),
            )
        } else {
            Instance::new(layer.layer(loader))
        };
        all.push(service);
    }
    all
}

/// One storm on a fresh key: every instance's misses at once; until all are answered.
async fn storm(instances: &[Instance], key: String) -> Duration {
    let started = Instant::now();
    let requests = instances.iter().flat_map(|instance| {
        (0..MISSES).map(|_| {
            let (instance, key) = (instance.clone(), key.clone());
            tokio::spawn(async move { instance.oneshot(key).await.unwrap() })
        })
    });
    for answer in futures_util::future::join_all(requests.collect::<Vec<_>>()).await {
        answer.unwrap();
    }
    started.elapsed()
}

fn miss_storm(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("miss_storm");
    group.sample_size(20);
    for (name, shared) in [("per_instance", false), ("shared", true)] {
        let calls = Arc::new(AtomicU64::new(0));
        let services = rt.block_on(instances(shared, &calls));
        let storms = Arc::new(AtomicU64::new(0));
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iterations| {
                let (services, storms) = (&services, storms.clone());
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let n = storms.fetch_add(1, Ordering::Relaxed);
                        total +=
                            storm(services, format!("{name}-{n}-{:x}", fastrand::u64(..))).await;
                    }
                    total
                }
            })
        });
        let storms = storms.load(Ordering::Relaxed).max(1);
        println!(
            "miss_storm/{name}: {:.2} loader calls per storm of {} misses ({} storms)",
            calls.load(Ordering::Relaxed) as f64 / storms as f64,
            INSTANCES * MISSES,
            storms
        );
    }
    group.finish();
}

criterion_group!(benches, miss_storm);
criterion_main!(benches);
