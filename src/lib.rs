//! Caching as a tower layer: cache-aside, read-through, write-through, write-behind and
//! write-around around an inner loader or writer service, on Redis or in process.
//!
//! - [`CacheLayer`]: the layer, with one constructor per strategy ([`strategy`] documents
//!   each strategy's guarantees).
//! - [`store`]: where bytes live — [`MemoryStore`] (moka, the embedded
//!   default) and `RedisStore` (feature `redis`).
//! - [`codec`]: how values become bytes — JSON by default, MessagePack (feature `msgpack`),
//!   Protocol Buffers for prost messages (feature `protobuf`).
//! - [`key`]: validated keys, glob-safe patterns, the key builder, key extractors.
//! - [`ttl`]: TTL policies, with jitter.
//! - [`Cache`]: the typed handle over a store.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_caching::{key::KeyBuilder, ttl, Cache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache: Cache<String> = Cache::in_memory();
//! let key = KeyBuilder::new().config("default");
//! let value = cache
//!     .get_or_load(&key, Some(ttl::CONFIG), || async { Ok::<_, std::io::Error>("v1".to_string()) })
//!     .await?;
//! assert_eq!(value, "v1");
//! # Ok(())
//! # }
//! ```
//!
//! # Architecture
//!
//! Lower layers never use higher ones:
//!
//! 1. [`key`], [`codec`], [`ttl`] and the value frame (what a stored value's header says).
//! 2. [`store`]: bytes by key — in memory, on Redis, on Redis Cluster, in two tiers, behind a
//!    circuit breaker.
//! 3. The typed [`Cache`] handle and the read engine beside it: one lookup → coalesced load →
//!    leased store path, with refresh-ahead, fail-safe and stale values, that every read path
//!    drives. Loads run supervised on their own tasks: a panic is [`LoadError::Panicked`]
//!    for the requests that waited, a cancelled caller cancels nothing, and a write or
//!    invalidation of a key voids the lease of its load in flight.
//! 4. Adapters: the five [`strategy`] layers, the HTTP layer (feature `http`), the gRPC layer
//!    (feature `grpc`) and per-route configuration (feature `config`) only say how a request
//!    becomes a key and a response a cacheable value.
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `redis` (default) | [`store::RedisStore`] |
//! | `cluster` | `store::RedisClusterStore` for Redis Cluster |
//! | `tls` | `rediss://` URLs for the Redis store (rustls) |
//! | `msgpack` | [`codec::MsgPack`] |
//! | `protobuf` | `codec::Protobuf`: prost messages (tonic's types) without serde |
//! | `metrics` (default) | Prometheus [`metrics::Metrics`] |
//! | `http` | HTTP response caching and invalidation: `http::HttpCacheLayer` |
//! | `grpc` | caching of unary gRPC calls for tonic: `grpc::GrpcCacheLayer` |
//! | `config` | per-route HTTP caching from TOML / YAML: `config::CacheConfig` |
//! | `full` | all of the above |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
// Type-changing builders (`CacheLayer<WriteBehind<Req, V, St, C, F, A, D>, K, T>`) are the
// point of the API, not an accident of it.
#![allow(clippy::type_complexity)]

pub mod cache;
pub mod codec;
#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod config;
mod engine;
mod frame;
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod key;
mod layer;
mod log;
mod macros;
pub mod metrics;
pub mod store;
pub mod strategy;
mod task;
pub mod ttl;
pub mod warm;

pub use crate::cache::{Cache, CacheBuilder, CacheError, Cacheable};
pub use crate::engine::LoadError;
pub use crate::key::{Key, KeyBuilder, KeyExtractor, Pattern, Tag};
pub use crate::layer::CacheLayer;
pub use crate::store::{MemoryStore, Store, StoreError};

/// A type-erased error, as tower uses.
///
/// ```
/// let error: tower_caching::BoxError = "database down".into();
/// assert_eq!(error.to_string(), "database down");
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Parses a duration as written in configuration: `250ms`, `10s`, `5m`, `1h`, `1d`, or a
/// bare number of seconds.
///
/// ```
/// use std::time::Duration;
/// use tower_caching::parse_duration;
///
/// assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
/// assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
/// assert_eq!(parse_duration("soon"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
