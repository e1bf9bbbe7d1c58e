//! Arbitrary bytes under a key: `Cache::get` answers an error or a value, never a panic —
//! through the frame header, both codecs, and the HTTP cached-response format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use tower_caching::codec::MsgPack;
use tower_caching::http::CachedResponse;
use tower_caching::key::Key;
use tower_caching::store::{MemoryStore, Store, StoreValue};
use tower_caching::Cache;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    id: String,
    owner_name: String,
    lookups: u64,
    tags: Vec<String>,
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let store = MemoryStore::new();
        let key = Key::new("fuzz").unwrap();
        store.set(&key, StoreValue::from(data.to_vec()), None).await.unwrap();
        let json: Cache<Entry> = Cache::new(store.clone());
        let _ = json.get(&key).await;
        let msgpack: Cache<Entry, _, _> = Cache::builder(store.clone()).codec(MsgPack).build();
        let _ = msgpack.get(&key).await;
        let responses: Cache<CachedResponse> = Cache::new(store);
        if let Ok(Some(response)) = responses.get(&key).await {
            let _ = response.into_response();
        }
    });
});
