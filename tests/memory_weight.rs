//! `MemoryStore`'s byte bound is true: what its weigher counts for an entry is within 20 %
//! of what the entry costs the process (resident memory, measured over 300,000 entries).
//! And an entry costs little more than moka holding the typed value itself.
//! Its own test binary, so that no other test allocates meanwhile.

use serde::{Deserialize, Serialize};
use tower_caching::Cache;
use tower_caching::key::KeyBuilder;
use tower_caching::store::MemoryStore;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    id: String,
    key: String,
    key_type: String,
    ispb: String,
    owner_name: String,
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Fills a fresh store through a typed cache with `count` values made by `value`; what one
/// entry costs in resident memory, and what the store counts for it.
/// (The store is handed back, kept alive: the next measure must not reuse its memory.)
async fn per_entry<V: tower_caching::Cacheable + serde::Serialize + serde::de::DeserializeOwned>(
    count: usize,
    value: impl Fn(usize) -> V,
) -> (f64, f64, MemoryStore) {
    let store = MemoryStore::builder().max_bytes(64 << 30).build();
    let cache: Cache<V, MemoryStore> = Cache::new(store.clone());
    let keys = KeyBuilder::new();
    let before = resident_bytes();
    for i in 0..count {
        cache
            .set(&keys.entry(&format!("e{i}")), &value(i), None)
            .await
            .unwrap();
    }
    assert_eq!(store.entry_count(), count as u64);
    let real = (resident_bytes() - before) as f64 / count as f64;
    let counted = store.weighted_size() as f64 / count as f64;
    (real, counted, store)
}

/// What one entry costs in resident memory when the application keeps the typed value in
/// moka itself, under the same keys: the floor for an in-process cache.
fn raw_moka_per_entry<V: Send + Sync + 'static>(
    count: usize,
    value: impl Fn(usize) -> V,
) -> (f64, moka::sync::Cache<String, std::sync::Arc<V>>) {
    let raw = moka::sync::Cache::builder().max_capacity(u64::MAX).build();
    let keys = KeyBuilder::new();
    let before = resident_bytes();
    for i in 0..count {
        let key = keys.entry(&format!("e{i}")).as_str().to_owned();
        raw.insert(key, std::sync::Arc::new(value(i)));
    }
    raw.run_pending_tasks();
    assert_eq!(raw.entry_count(), count as u64);
    let real = (resident_bytes() - before) as f64 / count as f64;
    (real, raw)
}

#[tokio::test(flavor = "current_thread")]
async fn the_byte_bound_counts_what_an_entry_really_costs() {
    let entry = |i: usize| Entry {
        id: format!("e{i}"),
        key: format!("+55119{i:08}"),
        key_type: "PHONE".into(),
        ispb: "12345678".into(),
        owner_name: format!("owner {i}"),
    };
    let small = per_entry(300_000, entry).await;
    let raw = raw_moka_per_entry(300_000, entry);
    let tiny = per_entry(300_000, |i| i as u64).await;
    let large = per_entry(10_000, |i| format!("{i:>4096}")).await;
    let mut wrong = Vec::new();
    for (shape, (real, counted, _store)) in
        [("entry", &small), ("u64", &tiny), ("4 KiB string", &large)]
    {
        let (real, counted) = (*real, *counted);
        println!(
            "{shape}: {real:.0} B resident, {counted:.0} B counted ({:.2})",
            counted / real
        );
        if (counted / real - 1.0).abs() > 0.2 {
            wrong.push(format!("{shape}: counts {counted:.0} B for {real:.0} B"));
        }
    }
    // The store keeps the decoded value alone (its frame is made again if someone asks for
    // the bytes), so a small entry costs at most a fifth more than in moka by hand.
    let over_raw = small.0 / raw.0;
    println!(
        "entry: {:.0} B resident, {:.0} B in moka holding Arc<Entry> ({over_raw:.2})",
        small.0, raw.0
    );
    if over_raw > 1.2 {
        wrong.push(format!(
            "entry: {:.0} B against {:.0} B in raw moka",
            small.0, raw.0
        ));
    }
    assert!(wrong.is_empty(), "{wrong:?}");
}
