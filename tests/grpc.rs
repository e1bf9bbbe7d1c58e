//! Unary gRPC caching with a real tonic server and client over loopback.
#![cfg(feature = "grpc")]

#[path = "../examples/grpc_directory/directory.rs"]
mod directory;
mod support;

use std::sync::atomic::Ordering;

use directory::{DirectoryServer, GET_ENTRY, GetEntryRequest, get_entry};
use prost::Message;
use tower_caching::Cache;
use tower_caching::grpc::{GrpcCacheLayer, GrpcKey};
use tower_caching::http::CachedResponse;
use tower_caching::key::KeyBuilder;
use tower_caching::store::Store;

/// Serves the directory behind `layer` on a free loopback port; its call counter and a
/// connected channel.
async fn serve<St: Store, C: tower_caching::codec::Codec<tower_caching::http::CachedResponse>>(
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

/// A body fed by the test through a channel, frame by frame.
struct ChannelBody(tokio::sync::mpsc::UnboundedReceiver<http_body::Frame<bytes::Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

type Frames = tokio::sync::mpsc::UnboundedSender<http_body::Frame<bytes::Bytes>>;

fn channel_body() -> (Frames, ChannelBody) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (tx, ChannelBody(rx))
}

/// One gRPC message: the 5-byte prefix, then `payload`.
fn message(payload: &[u8]) -> http_body::Frame<bytes::Bytes> {
    let mut framed = vec![0];
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(payload);
    http_body::Frame::data(framed.into())
}

fn ok_trailers() -> http_body::Frame<bytes::Bytes> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    http_body::Frame::trailers(trailers)
}

fn grpc_request<B>(body: B) -> http::Request<B> {
    http::Request::post("/stream.Feed/Watch")
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn a_server_stream_is_passed_on_as_it_comes_and_never_stored() {
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (senders_tx, mut senders_rx) = tokio::sync::mpsc::unbounded_channel::<Frames>();
    let counted = calls.clone();
    let server = tower::service_fn(move |_request: http::Request<_>| {
        counted.fetch_add(1, Ordering::SeqCst);
        let (tx, body) = channel_body();
        senders_tx.send(tx).unwrap();
        async move {
            let mut response = http::Response::new(body);
            response
                .headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let layered = GrpcCacheLayer::new(Cache::<CachedResponse>::in_memory()).layer(server);
    for round in 1..=2 {
        let call = tokio::spawn(
            layered
                .clone()
                .oneshot(grpc_request(http_body_util::Full::new(
                    message(b"topic").into_data().unwrap(),
                ))),
        );
        let stream = senders_rx.recv().await.unwrap();
        stream.send(message(b"first")).unwrap();
        // The first message reaches the client while the server has not sent the second.
        let response = tokio::time::timeout(std::time::Duration::from_secs(10), call)
            .await
            .expect("the response was held back")
            .unwrap()
            .unwrap();
        let mut body = response.into_body();
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await
            .expect("the first message was held back")
            .unwrap()
            .unwrap();
        assert_eq!(&first.into_data().unwrap()[5..], b"first");
        stream.send(message(b"second")).unwrap();
        stream.send(ok_trailers()).unwrap();
        drop(stream);
        let rest = body.collect().await.unwrap();
        assert!(rest.trailers().is_some());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            round,
            "a stream is never answered from the cache"
        );
    }
}

#[tokio::test]
async fn an_open_request_stream_reaches_the_server_and_a_client_stream_is_never_stored() {
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    // A client-streaming method: the server sums every message it is sent.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = calls.clone();
    let server = tower::service_fn(
        move |request: http::Request<tower_caching::http::CacheBody<ChannelBody>>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                let received = request.into_body().collect().await.unwrap().to_bytes();
                let mut answer = http::Response::new(http_body_util::Full::new(
                    message(format!("{} bytes", received.len()).as_bytes())
                        .into_data()
                        .unwrap(),
                ));
                answer
                    .headers_mut()
                    .insert("content-type", "application/grpc".parse().unwrap());
                answer
                    .headers_mut()
                    .insert("grpc-status", "0".parse().unwrap());
                Ok::<_, std::convert::Infallible>(answer)
            }
        },
    );
    let layered = GrpcCacheLayer::new(Cache::<CachedResponse>::in_memory()).layer(server);
    for (round, tail) in [(1, &b"x"[..]), (2, &b"yyyy"[..])] {
        let (tx, body) = channel_body();
        tx.send(message(b"same first message")).unwrap();
        let call = tokio::spawn(layered.clone().oneshot(grpc_request(body)));
        // The server is called while the request is still open (a bidirectional client may
        // wait for an answer before it sends more).
        support::within(std::time::Duration::from_secs(10), async || {
            calls.load(Ordering::SeqCst) == round
        })
        .await;
        tx.send(message(tail)).unwrap();
        drop(tx);
        let response = call.await.unwrap().unwrap();
        assert!(response.headers().get("x-cache").is_none_or(|v| v != "HIT"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let expected = 2 * 5 + b"same first message".len() + tail.len();
        assert_eq!(
            &body[5..],
            format!("{expected} bytes").as_bytes(),
            "round {round}"
        );
    }
}
