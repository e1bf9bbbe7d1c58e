//! The smallest useful program: a typed cache on the embedded in-memory store (no Redis
//! needed), or on Redis when `REDIS_URL` / `REDIS_ADDR` is set.
//!
//! ```text
//! cargo run --example quickstart
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart
//! ```

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tower_caching::key::KeyBuilder;
use tower_caching::store::{RedisConfig, RedisStore, Store};
use tower_caching::{Cache, MemoryStore, ttl};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    id: String,
    owner_name: String,
}

/// Stands in for a database query: slow on purpose.
async fn load_entry(id: String) -> Result<Entry, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(Entry {
        id,
        owner_name: "Ana Souza".into(),
    })
}

async fn demo<S: Store>(cache: Cache<Entry, S>) -> Result<(), Box<dyn std::error::Error>> {
    let keys = KeyBuilder::new();
    for attempt in 1..=3 {
        let started = Instant::now();
        let entry = cache
            .get_or_load(&keys.entry("e1"), Some(ttl::ENTRY), || {
                load_entry("e1".to_string())
            })
            .await?;
        println!(
            "attempt {attempt}: {} owned by {} in {:?}",
            entry.id,
            entry.owner_name,
            started.elapsed()
        );
    }
    let deleted = cache.delete_pattern(&keys.entries()).await?;
    println!("invalidated {deleted} entry key(s)");
    cache.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("REDIS_URL").is_some() || std::env::var_os("REDIS_ADDR").is_some() {
        let config = RedisConfig::from_env()?;
        println!("cache: redis at {config:?}");
        demo(Cache::new(RedisStore::connect(config).await?)).await
    } else {
        println!("cache: in memory (set REDIS_URL to use Redis)");
        demo(Cache::new(MemoryStore::new())).await
    }
}
