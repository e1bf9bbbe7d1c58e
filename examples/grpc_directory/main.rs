//! Caching unary gRPC calls of a tonic server: the directory's `GetEntry`, keyed by the
//! entry id decoded from the request message (`entry:{id}`, as the HTTP service keys it).
//!
//! ```text
//! cargo run --example grpc_directory --features http
//! ```

mod directory;

use std::sync::atomic::Ordering;
use std::time::Duration;

use directory::{DirectoryServer, GET_ENTRY, GetEntryRequest, get_entry};
use prost::Message;
use tower_caching::Cache;
use tower_caching::grpc::{GrpcCacheLayer, GrpcKey};
use tower_caching::http::CachedResponse;
use tower_caching::key::KeyBuilder;

/// The layer: `GetEntry` only, keyed by the id in the message, for five minutes.
pub fn cache_layer(cache: Cache<CachedResponse>) -> GrpcCacheLayer {
    let keys = KeyBuilder::new();
    GrpcCacheLayer::new(cache)
        .methods([GET_ENTRY])
        .key(GrpcKey::typed(move |_method: &str, message: &[u8]| {
            GetEntryRequest::decode(message)
                .ok()
                .map(|request| keys.entry(&request.id))
        }))
        .ttl(Duration::from_secs(300))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = DirectoryServer::default();
    let calls = server.0.calls.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(cache_layer(Cache::in_memory()))
            .add_service(server)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))?
        .connect()
        .await?;
    for _ in 0..3 {
        let reply = get_entry(channel.clone(), "e1").await?;
        let x_cache = reply
            .metadata()
            .get("x-cache")
            .map(|v| v.to_str().unwrap_or("?").to_owned());
        println!(
            "{} -> {} (x-cache: {})",
            reply.get_ref().id,
            reply.get_ref().owner_name,
            x_cache.unwrap_or_else(|| "-".into())
        );
    }
    println!(
        "the directory answered {} time(s)",
        calls.load(Ordering::SeqCst)
    );
    Ok(())
}
