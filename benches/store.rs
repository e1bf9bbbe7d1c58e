//! Store-level costs, each against its baseline in the same run:
//!
//! - `memory_get/*`: `Store::get` on `MemoryStore` as the named `Ready` future vs. the same
//!   call boxed (what a `BoxFuture` per hit would cost), vs. a raw moka lookup of the typed
//!   value, vs. the typed `Cache::get` (decoded fast path) and a JSON decode per hit.
//! - `redis_get/*`: a hand-written redis-rs GET on a `ConnectionManager` vs. `RedisStore::get`
//!   (boxed future, command timeout) vs. `Cache::get` (frame + JSON decode).
//!
//! - `layer_hit/*`: the cache-aside layer's hit path on `MemoryStore`, metrics off and on,
//!   beside a hand-written `moka::future::Cache::get` that builds the same key.
//!
//! - `redis_set/*`: `Cache::set` on Redis, untagged vs. filed under one tag (the tag index
//!   costs one more round trip).
//! - `durable_enqueue/*`: a raw redis-rs `XADD` of the same payload vs. the write-behind
//!   acknowledgement on a `StreamQueue` (encode, `XADD`, in-memory cache update).
//!
//! Run: `cargo bench --bench store` (spawns its own redis-server).

#[path = "../tests/support/mod.rs"]
mod support;

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tower_caching::Cache;
use tower_caching::codec::{Codec, Json};
use tower_caching::key::Key;
use tower_caching::store::{MemoryStore, RedisConfig, RedisStore, Store, StoreError, StoreValue};

/// About 200 bytes of JSON, like the original service's entry.
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

type BoxedGet = Pin<Box<dyn Future<Output = Result<Option<StoreValue>, StoreError>> + Send>>;

fn memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = Key::new("entry:0b9d6b0e").unwrap();
    let store = MemoryStore::new();
    let cache: Cache<Entry> = Cache::new(store.clone());
    rt.block_on(cache.set(&key, &entry(), None)).unwrap();
    let raw: moka::sync::Cache<String, Entry> = moka::sync::Cache::new(10_000);
    raw.insert(key.as_str().to_owned(), entry());
    let bytes_only = MemoryStore::new();
    let mut framed = Vec::new();
    Json.encode_into(&entry(), &mut framed).unwrap();
    rt.block_on(bytes_only.set(&key, StoreValue::from(framed), None))
        .unwrap();

    let mut group = c.benchmark_group("memory_get");
    group.bench_function("raw_moka_typed", |b| {
        b.iter(|| black_box(raw.get(black_box(key.as_str()))))
    });
    group.bench_function("store_get_named_future", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.get(black_box(&key)).await) })
    });
    group.bench_function("store_get_boxed_future", |b| {
        b.to_async(&rt).iter(|| async {
            let boxed: BoxedGet = Box::pin(store.get(black_box(&key)));
            black_box(boxed.await)
        })
    });
    group.bench_function("cache_get_typed", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.get(black_box(&key)).await) })
    });
    group.bench_function("store_get_then_json_decode", |b| {
        b.to_async(&rt).iter(|| async {
            let value = bytes_only.get(black_box(&key)).await.unwrap().unwrap();
            black_box(Codec::<Entry>::decode(&Json, value.bytes()).unwrap())
        })
    });
    group.finish();
}

fn redis(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = support::shared_redis();
    let key = Key::new("entry:0b9d6b0e").unwrap();
    let store = rt
        .block_on(RedisStore::connect(RedisConfig::new(url)))
        .unwrap();
    let cache: Cache<Entry, RedisStore> = Cache::new(store.clone());
    rt.block_on(cache.set(&key, &entry(), None)).unwrap();
    let raw = rt.block_on(async {
        redis::Client::open(url)
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap()
    });

    let mut group = c.benchmark_group("redis_get");
    group.bench_function("raw_redis_get", |b| {
        b.to_async(&rt).iter(|| async {
            let mut connection = raw.clone();
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(key.as_str())
                .query_async(&mut connection)
                .await
                .unwrap();
            black_box(value)
        })
    });
    group.bench_function("store_get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.get(black_box(&key)).await.unwrap()) })
    });
    group.bench_function("cache_get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.get(black_box(&key)).await.unwrap()) })
    });
    group.finish();
}

/// The cache-aside layer's hit path on the in-memory store, with metrics off and on, beside
/// a hand-written moka lookup of the same value.
fn layer_hit(c: &mut Criterion) {
    use tower::ServiceExt;
    use tower_caching::CacheLayer;
    use tower_layer::Layer;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let loader = tower::service_fn(|_: u32| async { Ok::<_, std::convert::Infallible>(entry()) });
    let key = |id: &u32| tower_caching::key::KeyBuilder::new().entry(&id.to_string());

    let plain: Cache<Entry> = Cache::new(MemoryStore::new());
    let registry = prometheus::Registry::new();
    let metrics = tower_caching::metrics::Metrics::builder()
        .register(&registry)
        .unwrap();
    let measured: Cache<Entry> = Cache::builder(MemoryStore::new()).metrics(metrics).build();
    let without = CacheLayer::cache_aside(plain).key(key).layer(loader);
    let with = CacheLayer::cache_aside(measured).key(key).layer(loader);
    rt.block_on(without.clone().oneshot(1)).unwrap();
    rt.block_on(with.clone().oneshot(1)).unwrap();
    let raw: moka::future::Cache<String, Entry> = moka::future::Cache::new(10_000);
    rt.block_on(raw.insert("entry:1".to_owned(), entry()));

    let mut group = c.benchmark_group("layer_hit");
    group.bench_function("raw_moka_future", |b| {
        b.to_async(&rt).iter(|| async {
            let key = format!("entry:{}", black_box(1u32));
            black_box(raw.get(&key).await)
        })
    });
    group.bench_function("metrics_off", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(without.clone().oneshot(black_box(1)).await) })
    });
    group.bench_function("metrics_on", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(with.clone().oneshot(black_box(1)).await) })
    });
    group.finish();
}

/// The two-tier store: an L1 hit (typed, in process) against an L2 hit (Redis round trip +
/// decode) for the same value.
fn tiered(c: &mut Criterion) {
    use tower_caching::store::TieredStore;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = RedisConfig::new(support::shared_redis());
    let key = Key::new("tiered:entry:0b9d6b0e").unwrap();
    let (l1_cache, l2_cache) = rt.block_on(async {
        let l2 = RedisStore::connect(config.clone()).await.unwrap();
        let tiered = TieredStore::new(
            MemoryStore::new(),
            l2.clone(),
            &config,
            std::time::Duration::from_secs(600),
        )
        .unwrap();
        while !tiered.is_coherent() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let l1_cache: Cache<Entry, TieredStore> = Cache::new(tiered);
        l1_cache.set(&key, &entry(), None).await.unwrap();
        let l2_cache: Cache<Entry, RedisStore> = Cache::new(l2);
        (l1_cache, l2_cache)
    });
    let mut group = c.benchmark_group("tiered_get");
    group.bench_function("l1_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(l1_cache.get(black_box(&key)).await.unwrap()) })
    });
    group.bench_function("l2_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(l2_cache.get(black_box(&key)).await.unwrap()) })
    });
    group.finish();
}

/// Tag filing on Redis: `set` against `set` with a tag policy.
fn tagged_set(c: &mut Criterion) {
    use tower_caching::key::Tag;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt
        .block_on(RedisStore::connect(RedisConfig::new(
            support::shared_redis(),
        )))
        .unwrap();
    let plain: Cache<Entry, RedisStore> = Cache::new(store.clone());
    let tagged: Cache<Entry, RedisStore> = Cache::new(store)
        .tag_with(|_, entry: &Entry| vec![Tag::new(format!("ispb:{}", entry.ispb)).unwrap()]);
    let ttl = Some(std::time::Duration::from_secs(300));
    let mut group = c.benchmark_group("redis_set");
    group.bench_function("set", |b| {
        b.to_async(&rt).iter(|| async {
            let key = Key::new(format!("set:{}", fastrand::u16(..))).unwrap();
            plain.set(&key, &entry(), ttl).await.unwrap()
        })
    });
    group.bench_function("set_tagged", |b| {
        b.to_async(&rt).iter(|| async {
            let key = Key::new(format!("tagged:{}", fastrand::u16(..))).unwrap();
            tagged.set(&key, &entry(), ttl).await.unwrap()
        })
    });
    group.finish();
}

/// The durable write-behind acknowledgement against the `XADD` it is built on.
fn durable_enqueue(c: &mut Criterion) {
    use tower::{Service, ServiceExt};
    use tower_caching::CacheLayer;
    use tower_caching::strategy::StreamQueue;
    use tower_layer::Layer;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = support::shared_redis();
    let (raw, service, cache) = rt.block_on(async {
        let store = RedisStore::connect(RedisConfig::new(url)).await.unwrap();
        let raw = redis::Client::open(url)
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let cache: Cache<Entry> = Cache::in_memory();
        let writer = tower::service_fn(|_: Entry| async { Ok::<_, std::convert::Infallible>(()) });
        let service = CacheLayer::write_behind(cache.clone())
            .key(|e: &Entry| Key::new(format!("durable:{}", e.id)).ok())
            .batch_interval(std::time::Duration::from_millis(100))
            .durable(StreamQueue::new(&store, "bench"))
            .layer(writer);
        (raw, service, cache)
    });
    let payload = serde_json::to_vec(&entry()).unwrap();
    let mut group = c.benchmark_group("durable_enqueue");
    group.bench_function("raw_xadd", |b| {
        b.to_async(&rt).iter(|| async {
            let mut connection = raw.clone();
            let id: String = redis::cmd("XADD")
                .arg("bench:raw")
                .arg("MAXLEN")
                .arg("~")
                .arg(10_000)
                .arg("*")
                .arg("k")
                .arg("durable:0b9d6b0e")
                .arg("r")
                .arg(&payload)
                .query_async(&mut connection)
                .await
                .unwrap();
            black_box(id)
        })
    });
    group.bench_function("write_behind_durable", |b| {
        b.to_async(&rt).iter(|| {
            let mut service = service.clone();
            async move { service.ready().await.unwrap().call(entry()).await.unwrap() }
        })
    });
    group.finish();
    rt.block_on(cache.close()).unwrap();
}

criterion_group!(
    benches,
    memory,
    redis,
    layer_hit,
    tiered,
    tagged_set,
    durable_enqueue
);
criterion_main!(benches);
