//! `MemoryStore`'s byte bound is true: what its weigher counts for an entry is within 20 %
//! of what the entry costs the process (resident memory, measured over a million entries).
//! Its own test binary, so that no other test allocates meanwhile.

use serde::{Deserialize, Serialize};
use tower_caching::key::KeyBuilder;
use tower_caching::store::MemoryStore;
use tower_caching::Cache;

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

#[tokio::test(flavor = "current_thread")]
async fn the_byte_bound_counts_what_an_entry_really_costs() {
    const ENTRIES: usize = 1_000_000;
    let store = MemoryStore::builder().max_bytes(64 << 30).build();
    let cache: Cache<Entry, MemoryStore> = Cache::new(store.clone());
    let keys = KeyBuilder::new();
    let before = resident_bytes();
    for i in 0..ENTRIES {
        let id = format!("e{i}");
        let entry = Entry {
            key: format!("+55119{i:08}"),
            key_type: "PHONE".into(),
            ispb: "12345678".into(),
            owner_name: format!("owner {i}"),
            id: id.clone(),
        };
        cache.set(&keys.entry(&id), &entry, None).await.unwrap();
    }
    let _ = store.entry_count();
    let after = resident_bytes();
    let real = (after - before) as f64 / ENTRIES as f64;
    let counted = store.weighted_size() as f64 / store.entry_count() as f64;
    println!(
        "per entry: {real:.0} B resident, {counted:.0} B counted ({:.2})",
        counted / real
    );
    assert_eq!(store.entry_count(), ENTRIES as u64);
    assert!(
        (counted / real - 1.0).abs() <= 0.2,
        "the weigher counts {counted:.0} B for an entry that costs {real:.0} B"
    );
}
