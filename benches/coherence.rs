//! How long a change takes to leave another instance's L1 (`l1_invalidation/*`), against a
//! plain Redis round trip in the same run (`l1_invalidation/round_trip`): instance B holds
//! the key in its L1; each iteration changes the key and then reads it on B until B serves
//! the new value.
//!
//! - `backplane_crate_write`: instance A writes through the crate; B is on the pub/sub
//!   backplane (a foreign writer's change is never seen there before `l1_ttl`).
//! - `tracking_crate_write`: the same with `CLIENT TRACKING` coherence.
//! - `tracking_foreign_write`: a plain redis-rs client (not this crate) writes the key;
//!   B is on tracking coherence.
//!
//! Run: `cargo bench --bench coherence` (spawns its own redis-server).

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower_caching::Cache;
use tower_caching::key::Key;
use tower_caching::store::{
    Coherence, MemoryStore, RedisConfig, RedisStore, Store, TieredStore, Tracking,
};

type Instance = Cache<String, TieredStore>;

async fn instance(config: &RedisConfig, coherence: Coherence) -> (Instance, MemoryStore) {
    let l1 = MemoryStore::new();
    let l2 = RedisStore::connect(config.clone()).await.unwrap();
    let store =
        TieredStore::with_coherence(l1.clone(), l2, config, Duration::from_secs(600), coherence)
            .unwrap();
    while !store.is_coherent() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (Cache::new(store), l1)
}

/// Reads `key` on `reader` until its L1 holds it (not timed); the value it holds.
async fn settle(reader: &Instance, l1: &MemoryStore, key: &Key) -> String {
    loop {
        let read = reader.get(key).await.unwrap();
        if let Some(value) = read
            && l1.get(key).await.unwrap().is_some()
        {
            return value;
        }
        tokio::task::yield_now().await;
    }
}

/// Times `write(value)` until `reader` serves `value`, each iteration writing the one of
/// `values` that the key does not hold.
async fn invalidation<W: AsyncFn(&str)>(
    iterations: u64,
    reader: &Instance,
    l1: &MemoryStore,
    key: &Key,
    values: [&str; 2],
    write: W,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        let old = settle(reader, l1, key).await;
        let new = if old == values[0] {
            values[1]
        } else {
            values[0]
        };
        let started = Instant::now();
        write(new).await;
        while reader.get(key).await.unwrap().as_deref() != Some(new) {
            tokio::task::yield_now().await;
        }
        total += started.elapsed();
    }
    total
}

fn l1_invalidation(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = RedisConfig::new(support::shared_redis());
    let values = ["entry-version-a", "entry-version-b"];
    let (backplane_writer, backplane_reader, backplane_l1) = rt.block_on(async {
        let channel = Coherence::from("bench:invalidations");
        let (writer, _) = instance(&config, channel.clone()).await;
        let (reader, l1) = instance(&config, channel).await;
        (writer, reader, l1)
    });
    let (tracking_writer, tracking_reader, tracking_l1) = rt.block_on(async {
        let (writer, _) = instance(&config, Tracking::all_keys().into()).await;
        let (reader, l1) = instance(&config, Tracking::all_keys().into()).await;
        (writer, reader, l1)
    });
    let raw = rt.block_on(support::raw_connection(support::shared_redis()));
    // What the crate stores for each value: the frames a foreign writer copies.
    let frames: Vec<Vec<u8>> = rt.block_on(async {
        let mut frames = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let scratch = Key::new(format!("bench:frame:{i}")).unwrap();
            tracking_writer
                .set(&scratch, &value.to_string(), None)
                .await
                .unwrap();
            let frame: Vec<u8> = redis::cmd("GET")
                .arg(scratch.as_str())
                .query_async(&mut raw.clone())
                .await
                .unwrap();
            frames.push(frame);
        }
        frames
    });
    let (backplane_key, tracking_key, foreign_key) = (
        Key::new("bench:entry:backplane").unwrap(),
        Key::new("bench:entry:tracking").unwrap(),
        Key::new("bench:entry:foreign").unwrap(),
    );
    rt.block_on(async {
        backplane_writer
            .set(&backplane_key, &values[0].to_string(), None)
            .await
            .unwrap();
        tracking_writer
            .set(&tracking_key, &values[0].to_string(), None)
            .await
            .unwrap();
        tracking_writer
            .set(&foreign_key, &values[0].to_string(), None)
            .await
            .unwrap();
    });

    let mut group = c.benchmark_group("l1_invalidation");
    group.bench_function("round_trip", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            let frame = &frames[0];
            async move {
                let _: () = redis::cmd("SET")
                    .arg("bench:round-trip")
                    .arg(black_box(frame))
                    .query_async(&mut raw)
                    .await
                    .unwrap();
            }
        })
    });
    group.bench_function("backplane_crate_write", |b| {
        b.to_async(&rt).iter_custom(|iterations| {
            invalidation(
                iterations,
                &backplane_reader,
                &backplane_l1,
                &backplane_key,
                values,
                async |value| {
                    backplane_writer
                        .set(&backplane_key, &value.to_string(), None)
                        .await
                        .unwrap()
                },
            )
        })
    });
    group.bench_function("tracking_crate_write", |b| {
        b.to_async(&rt).iter_custom(|iterations| {
            invalidation(
                iterations,
                &tracking_reader,
                &tracking_l1,
                &tracking_key,
                values,
                async |value| {
                    tracking_writer
                        .set(&tracking_key, &value.to_string(), None)
                        .await
                        .unwrap()
                },
            )
        })
    });
    group.bench_function("tracking_foreign_write", |b| {
        b.to_async(&rt).iter_custom(|iterations| {
            let (raw, frames, key) = (raw.clone(), &frames, &foreign_key);
            invalidation(
                iterations,
                &tracking_reader,
                &tracking_l1,
                &foreign_key,
                values,
                async move |value| {
                    let frame = &frames[usize::from(value != values[0])];
                    let _: () = redis::cmd("SET")
                        .arg(key.as_str())
                        .arg(frame)
                        .query_async(&mut raw.clone())
                        .await
                        .unwrap();
                },
            )
        })
    });
    group.finish();
}

criterion_group!(benches, l1_invalidation);
criterion_main!(benches);
