//! Unary gRPC caching with a real tonic server and client over loopback.
#![cfg(feature = "grpc")]

#[path = "../examples/grpc_directory/directory.rs"]
mod directory;
mod support;

use std::sync::atomic::Ordering;

use directory::{get_entry, DirectoryServer, GetEntryRequest, GET_ENTRY};
use prost::Message;
use tower_caching::grpc::{GrpcCacheLayer, GrpcKey};
use tower_caching::http::CachedResponse;
use tower_caching::key::KeyBuilder;
use tower_caching::store::Store;
use tower_caching::Cache;

/// Serves the directory behind `layer` on a free loopback port; its call counter and a
/// connected channel.
async fn serve<St: Store, C: tower_caching::codec::Codec>(
    layer: GrpcCacheLayer<St, C>,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicU32>,
    tonic::transport::Channel,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = DirectoryServer::default();
    let calls = server.0.calls.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(server)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (calls, channel)
}

fn x_cache<T>(response: &tonic::Response<T>) -> Option<String> {
    response
        .metadata()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn typed_keys_cache_ok_replies_and_never_errors() {
    let cache: Cache<CachedResponse> = Cache::in_memory();
    let keys = KeyBuilder::new();
    let layer = GrpcCacheLayer::new(cache.clone())
        .methods([GET_ENTRY])
        .key(GrpcKey::typed(move |_: &str, message: &[u8]| {
            GetEntryRequest::decode(message)
                .ok()
                .map(|r| keys.entry(&r.id))
        }));
    let (calls, channel) = serve(layer).await;

    let first = get_entry(channel.clone(), "e1").await.unwrap();
    assert_eq!(x_cache(&first).as_deref(), Some("MISS"));
    for _ in 0..3 {
        let again = get_entry(channel.clone(), "e1").await.unwrap();
        assert_eq!(again.get_ref(), first.get_ref());
        assert_eq!(x_cache(&again).as_deref(), Some("HIT"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The entry sits under the same key as the HTTP service's `entry:{id}`.
    assert!(cache.exists(&KeyBuilder::new().entry("e1")).await.unwrap());

    for _ in 0..2 {
        let status = get_entry(channel.clone(), "missing").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "no entry missing");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn encoded_keys_tell_messages_apart_and_unlisted_methods_pass() {
    let (calls, channel) = serve(GrpcCacheLayer::new(Cache::in_memory())).await;
    for id in ["a", "b", "a", "b"] {
        let reply = get_entry(channel.clone(), id).await.unwrap();
        assert_eq!(reply.get_ref().id, id);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let (calls, channel) =
        serve(GrpcCacheLayer::new(Cache::in_memory()).methods(["/other.Service/Method"])).await;
    for _ in 0..2 {
        get_entry(channel.clone(), "a").await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn replies_cached_in_redis_replay_with_their_trailers() {
    let store = support::shared_redis_store().await;
    let prefix = support::unique_prefix("grpc");
    let cache: Cache<CachedResponse, _> = Cache::new(store);
    let (calls, channel) =
        serve(GrpcCacheLayer::new(cache).key(GrpcKey::encoded_with_prefix(&prefix))).await;
    let first = get_entry(channel.clone(), "r1").await.unwrap();
    let second = get_entry(channel.clone(), "r1").await.unwrap();
    assert_eq!(first.get_ref(), second.get_ref());
    assert_eq!(x_cache(&second).as_deref(), Some("HIT"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn one_callers_answer_is_never_served_to_another() {
    use directory::get_entry_as;
    let (calls, channel) =
        serve(GrpcCacheLayer::new(Cache::in_memory()).methods([GET_ENTRY])).await;
    let ana = get_entry_as(channel.clone(), "e1", Some("Bearer ana"))
        .await
        .unwrap();
    let bia = get_entry_as(channel.clone(), "e1", Some("Bearer bia"))
        .await
        .unwrap();
    assert!(ana.get_ref().owner_name.ends_with("Bearer ana"));
    assert!(
        bia.get_ref().owner_name.ends_with("Bearer bia"),
        "{:?}",
        bia.get_ref()
    );
    // Not cached at all: an authorised call is not the cache's to share.
    assert_eq!(x_cache(&bia), None);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Keyed on the caller, each caller gets its own entry, and only its own.
    let (calls, channel) = serve(
        GrpcCacheLayer::new(Cache::in_memory())
            .methods([GET_ENTRY])
            .key_metadata(http::HeaderName::from_static("authorization")),
    )
    .await;
    for caller in ["Bearer ana", "Bearer bia", "Bearer ana", "Bearer bia"] {
        let reply = get_entry_as(channel.clone(), "e1", Some(caller))
            .await
            .unwrap();
        assert!(
            reply.get_ref().owner_name.ends_with(caller),
            "{:?}",
            reply.get_ref()
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let anonymous = get_entry_as(channel.clone(), "e1", None).await.unwrap();
    assert_eq!(anonymous.get_ref().owner_name, "owner of e1");
}
