//! What compression costs on a hit and saves in Redis, in one run on one spawned
//! redis-server, for realistic JSON (a payments directory's entries) of about 100 B, 10 KiB
//! and 1 MiB:
//!
//! - `compression/{plain,compressed}/{size}`: `Cache::get` of a value stored without
//!   compression and with the default threshold (1 KiB): GET, expand, decode.
//! - printed before the groups: the stored sizes, and Redis `used_memory` for 10,000
//!   single entries (about 300 B: under the threshold, unchanged) and for 10,000 pages of
//!   10 entries (about 3 KiB each), written each way.
//!
//! Run: `cargo bench --bench compression` (see BENCHMARKS.md).

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tower_caching::Cache;
use tower_caching::key::Key;
use tower_caching::store::{RedisConfig, RedisStore};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    id: String,
    key: String,
    key_type: String,
    ispb: String,
    owner_name: String,
    owner_tax_id: String,
    branch: String,
    account: String,
    created_at: String,
    status: String,
}

fn entry(i: usize) -> Entry {
    Entry {
        id: format!(
            "{:08x}-6f1c-4a51-9d0e-{:012x}",
            i * 2_654_435_761 % (1 << 32),
            i
        ),
        key: format!("+5511{:09}", i * 7919 % 1_000_000_000),
        key_type: ["PHONE", "EMAIL", "CPF", "EVP"][i % 4].into(),
        ispb: format!("{:08}", 10_000_000 + i % 300),
        owner_name: format!("Owner {i} de Souza Oliveira"),
        owner_tax_id: format!("{:011}", i * 104_729 % 100_000_000_000),
        branch: format!("{:04}", i % 9999),
        account: format!("{:010}", i * 31),
        created_at: format!("2025-10-{:02}T12:{:02}:00Z", 1 + i % 28, i % 60),
        status: "ACTIVE".into(),
    }
}

fn page(from: usize, entries: usize) -> Vec<Entry> {
    (from..from + entries).map(entry).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn used_memory(url: &str) -> u64 {
    let mut raw = support::raw_connection(url).await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut raw)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Redis `used_memory` growth for 10,000 values from `value`, written by `cache`.
async fn memory_for(
    url: &str,
    cache: &Cache<Vec<Entry>, RedisStore>,
    value: fn(usize) -> Vec<Entry>,
) -> u64 {
    let mut raw = support::raw_connection(url).await;
    let () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    let before = used_memory(url).await;
    for i in 0..10_000 {
        let key = Key::new(format!("m:{i}")).unwrap();
        cache.set(&key, &value(i), None).await.unwrap();
    }
    let after = used_memory(url).await;
    let () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    after.saturating_sub(before)
}

fn compression(c: &mut Criterion) {
    let rt = runtime();
    let server = support::RedisServer::spawn();
    let url = server.url();
    let (plain, compressed) = rt.block_on(async {
        let store = RedisStore::connect(RedisConfig::new(url.clone()))
            .await
            .unwrap();
        let plain: Cache<Vec<Entry>, _> = Cache::builder(store.clone())
            .no_compression()
            .max_value_size(8 << 20)
            .build();
        let compressed: Cache<Vec<Entry>, _> =
            Cache::builder(store).max_value_size(8 << 20).build();
        (plain, compressed)
    });

    rt.block_on(async {
        let single = |i| page(i, 1);
        let ten = |i| page(i * 10, 10);
        for (what, value) in [
            ("single entries", single as fn(usize) -> Vec<Entry>),
            ("pages of 10", ten),
        ] {
            let without = memory_for(&url, &plain, value).await;
            let with = memory_for(&url, &compressed, value).await;
            println!(
                "used_memory for 10,000 {what}: {without} B plain, {with} B compressed ({:.2})",
                with as f64 / without as f64
            );
        }
    });

    let sizes = [("100B", 0usize), ("10KiB", 30), ("1MiB", 3_000)];
    let mut group = c.benchmark_group("compression");
    for (name, entries) in sizes {
        // 0 entries: one entry's id alone, about 100 bytes of JSON.
        let value = if entries == 0 {
            vec![Entry {
                id: "0b9d6b0e".into(),
                key: "+5511987654321".into(),
                key_type: "PHONE".into(),
                ispb: "12345678".into(),
                owner_name: "Ana".into(),
                owner_tax_id: String::new(),
                branch: String::new(),
                account: String::new(),
                created_at: String::new(),
                status: String::new(),
            }]
        } else {
            page(0, entries)
        };
        let json = serde_json::to_vec(&value).unwrap().len();
        let key = Key::new(format!("bench:{name}")).unwrap();
        let (plain_key, compressed_key) = (
            Key::new(format!("bench:plain:{name}")).unwrap(),
            key.clone(),
        );
        rt.block_on(async {
            plain.set(&plain_key, &value, None).await.unwrap();
            compressed.set(&compressed_key, &value, None).await.unwrap();
            let mut raw = support::raw_connection(&url).await;
            let a: usize = raw.strlen(plain_key.as_str()).await.unwrap();
            let b: usize = raw.strlen(compressed_key.as_str()).await.unwrap();
            println!("{name}: {json} B of JSON, stored {a} B plain, {b} B compressed");
        });
        group.bench_with_input(BenchmarkId::new("plain", name), &plain_key, |b, key| {
            b.to_async(&rt)
                .iter(|| async { plain.get(key).await.unwrap().unwrap() });
        });
        group.bench_with_input(
            BenchmarkId::new("compressed", name),
            &compressed_key,
            |b, key| {
                b.to_async(&rt)
                    .iter(|| async { compressed.get(key).await.unwrap().unwrap() });
            },
        );
    }
    group.finish();
    drop(server);
}

criterion_group!(benches, compression);
criterion_main!(benches);
