//! Compression of large values, against a real redis-server: what Redis holds is smaller,
//! reads are unchanged, compressed and plain values coexist, and a compressed value that
//! would expand past the cache's limit (or does not expand at all) is a typed error and a
//! miss that the next load replaces.
#![cfg(all(feature = "redis", feature = "http"))]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use http_body_util::BodyExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use support::RedisServer;
use tower::ServiceExt;
use tower_caching::http::{CachedResponse, HttpCacheLayer};
use tower_caching::key::Key;
use tower_caching::store::{RedisConfig, RedisStore};
use tower_caching::{Cache, CacheError, CacheLayer};
use tower_layer::Layer;

/// Byte 2 of a frame: its kind, high bit set when the payload is compressed.
const COMPRESSED: u8 = 0x80;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    id: String,
    key: String,
    key_type: String,
    ispb: String,
    owner_name: String,
    status: String,
}

fn page(entries: usize) -> Vec<Entry> {
    (0..entries)
        .map(|i| Entry {
            id: format!("e{i}"),
            key: format!("+5511{:09}", i * 7919 % 1_000_000_000),
            key_type: "PHONE".into(),
            ispb: format!("{:08}", 10_000_000 + i % 300),
            owner_name: format!("Owner Number {i} da Silva"),
            status: "ACTIVE".into(),
        })
        .collect()
}

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .unwrap()
}

async fn raw_get(server: &RedisServer, key: &str) -> Vec<u8> {
    let mut raw = support::raw_connection(&server.url()).await;
    raw.get(key).await.unwrap()
}

async fn raw_set(server: &RedisServer, key: &str, bytes: &[u8]) {
    let mut raw = support::raw_connection(&server.url()).await;
    let () = raw.set(key, bytes).await.unwrap();
}

#[tokio::test]
async fn large_values_are_stored_compressed_and_read_back_unchanged() {
    let server = RedisServer::spawn();
    let cache: Cache<Vec<Entry>, _> = Cache::new(store(&server).await);
    let json_len = |v: &Vec<Entry>| serde_json::to_vec(v).unwrap().len();

    let big = page(30);
    let key = Key::new("page:30").unwrap();
    cache.set(&key, &big, None).await.unwrap();
    let held = raw_get(&server, key.as_str()).await;
    assert_ne!(held[2] & COMPRESSED, 0, "not compressed");
    assert!(
        held.len() * 3 < json_len(&big),
        "{} bytes held for {} of JSON",
        held.len(),
        json_len(&big)
    );
    assert_eq!(cache.get(&key).await.unwrap(), Some(big));

    // At most the threshold: stored as it was, byte for byte after the header.
    let small = page(1);
    assert!(json_len(&small) <= 1024);
    let key = Key::new("page:1").unwrap();
    cache.set(&key, &small, None).await.unwrap();
    let held = raw_get(&server, key.as_str()).await;
    assert_eq!(held[2] & COMPRESSED, 0);
    assert_eq!(&held[23..], serde_json::to_vec(&small).unwrap());
    assert_eq!(cache.get(&key).await.unwrap(), Some(small));
}

#[tokio::test]
async fn compressed_and_plain_values_coexist_whatever_the_reader_is_set_to() {
    let server = RedisServer::spawn();
    let redis = store(&server).await;
    let compressing: Cache<Vec<Entry>, _> = Cache::builder(redis.clone()).build();
    let plain: Cache<Vec<Entry>, _> = Cache::builder(redis.clone()).no_compression().build();
    let eager: Cache<Vec<Entry>, _> = Cache::builder(redis).compress_above(64).build();
    let (a, b, c) = (
        Key::new("by:compressing").unwrap(),
        Key::new("by:plain").unwrap(),
        Key::new("by:eager").unwrap(),
    );
    compressing.set(&a, &page(30), None).await.unwrap();
    plain.set(&b, &page(30), None).await.unwrap();
    eager.set(&c, &page(2), None).await.unwrap();
    assert_ne!(raw_get(&server, a.as_str()).await[2] & COMPRESSED, 0);
    assert_eq!(raw_get(&server, b.as_str()).await[2] & COMPRESSED, 0);
    assert_ne!(raw_get(&server, c.as_str()).await[2] & COMPRESSED, 0);
    for reader in [&compressing, &plain, &eager] {
        assert_eq!(reader.get(&a).await.unwrap(), Some(page(30)));
        assert_eq!(reader.get(&b).await.unwrap(), Some(page(30)));
        assert_eq!(reader.get(&c).await.unwrap(), Some(page(2)));
    }
}

#[tokio::test]
async fn the_size_limit_is_on_the_value_uncompressed() {
    let server = RedisServer::spawn();
    let cache: Cache<Vec<Entry>, _> = Cache::builder(store(&server).await)
        .max_value_size(8 * 1024)
        .build();
    let key = Key::new("limited").unwrap();
    // About 29 KiB of JSON that compresses to well under the 8 KiB limit: still refused,
    // as every reader would have to expand it past its limit.
    let error = cache.set(&key, &page(200), None).await.unwrap_err();
    assert!(
        matches!(error, CacheError::ValueTooLarge { size, max: 8192 } if size > 20_000),
        "{error:?}"
    );
    let mut raw = support::raw_connection(&server.url()).await;
    assert!(!raw.exists::<_, bool>(key.as_str()).await.unwrap());
}

/// A frame header as the crate writes it, with the compressed flag and no expiry.
fn compressed_frame(claimed: u32, block: &[u8]) -> Vec<u8> {
    let mut frame = vec![0xCA, 1, COMPRESSED];
    frame.extend_from_slice(&0u64.to_le_bytes()); // stored at
    frame.extend_from_slice(&0u64.to_le_bytes()); // fresh until: never expires
    frame.extend_from_slice(&0u32.to_le_bytes()); // load time
    frame.extend_from_slice(&claimed.to_le_bytes());
    frame.extend_from_slice(block);
    frame
}

#[tokio::test]
async fn a_compressed_value_that_would_expand_past_the_limit_is_a_typed_error_and_a_miss() {
    let server = RedisServer::spawn();
    let cache: Cache<Vec<Entry>, _> = Cache::new(store(&server).await);
    let bomb = Key::new("bomb").unwrap();
    let broken = Key::new("broken").unwrap();
    // 4 GiB claimed in 40 bytes: refused by the claim alone, nothing allocated.
    raw_set(
        &server,
        bomb.as_str(),
        &compressed_frame(u32::MAX, &[0x1f; 13]),
    )
    .await;
    // A claim the block does not live up to: corrupt.
    raw_set(
        &server,
        broken.as_str(),
        &compressed_frame(100, &[0xff; 13]),
    )
    .await;
    assert!(matches!(
        cache.get(&bomb).await,
        Err(CacheError::ValueTooLarge { max: 1_048_576, .. })
    ));
    assert!(matches!(
        cache.get(&broken).await,
        Err(CacheError::Corrupt { .. })
    ));
    // Through a layer: a miss, loaded once, and the load replaces the bad value.
    let loads = Arc::new(AtomicU32::new(0));
    let service = CacheLayer::cache_aside(cache.clone())
        .key(|name: &String| Key::new(name.clone()).ok())
        .layer(tower::service_fn({
            let loads = loads.clone();
            move |_: String| {
                loads.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(page(30)) }
            }
        }));
    for name in ["bomb", "broken"] {
        for _ in 0..3 {
            let value = service.clone().oneshot(name.to_string()).await.unwrap();
            assert_eq!(value, page(30));
        }
    }
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert_eq!(cache.get(&bomb).await.unwrap(), Some(page(30)));
    assert_eq!(cache.get(&broken).await.unwrap(), Some(page(30)));
}

#[tokio::test]
async fn http_responses_are_compressed_in_redis_and_served_byte_for_byte() {
    let server = RedisServer::spawn();
    let cache: Cache<CachedResponse, _> = Cache::new(store(&server).await);
    let body = serde_json::to_string(&page(40)).unwrap();
    let served = body.clone();
    let app = Router::new().route(
        "/entries",
        get(move || {
            let served = served.clone();
            async move { ([("content-type", "application/json")], served) }
        })
        .layer(HttpCacheLayer::new(cache)),
    );
    for expected in ["MISS", "HIT"] {
        let response = app
            .clone()
            .oneshot(Request::get("/entries").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.headers()["x-cache"], expected);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, body.as_bytes());
    }
    let mut raw = support::raw_connection(&server.url()).await;
    let keys: Vec<String> = raw.keys("*").await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let held = raw_get(&server, &keys[0]).await;
    assert_ne!(held[2] & COMPRESSED, 0);
    assert!(
        held.len() * 3 < body.len(),
        "{} for {}",
        held.len(),
        body.len()
    );
}
