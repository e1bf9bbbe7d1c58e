//! Protocol Buffers values: prost messages (the types tonic generates, with no serde derive)
//! cached in their wire format on a spawned Redis — through a read layer, a second
//! instance, a newer and an older schema, a foreign value under the key, a durable
//! write-behind queue whose requests are messages too, and a tonic service that caches its
//! own replies.
#![cfg(all(feature = "protobuf", feature = "redis", feature = "grpc"))]

#[path = "../examples/grpc_directory/directory.rs"]
mod directory;
mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use directory::{EntryReply, GetEntryRequest};
use prost::Message;
use support::RedisServer;
use tonic::codegen::http;
use tower::{Service, ServiceExt};
use tower_caching::codec::Protobuf;
use tower_caching::key::KeyBuilder;
use tower_caching::store::{RedisConfig, RedisStore};
use tower_caching::strategy::StreamQueue;
use tower_caching::{Cache, CacheLayer};
use tower_layer::Layer;

/// Every frame starts with this many bytes of header; the codec's output follows.
const HEADER: usize = 23;

async fn redis(server: &RedisServer) -> RedisStore {
    RedisStore::connect(RedisConfig::new(server.url()).command_timeout(Duration::from_secs(5)))
        .await
        .unwrap()
}

fn protobuf<V>(store: RedisStore) -> Cache<V, RedisStore, Protobuf>
where
    V: tower_caching::Cacheable,
    Protobuf: tower_caching::codec::Codec<V>,
{
    Cache::builder(store).codec(Protobuf).build()
}

/// The directory as a loader: counts its calls.
fn directory(
    calls: Arc<AtomicU32>,
) -> impl Service<GetEntryRequest, Response = EntryReply, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(move |request: GetEntryRequest| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            Ok(EntryReply {
                owner_name: format!("owner of {}", request.id),
                id: request.id,
            })
        }
    })
}

fn reply(id: &str) -> EntryReply {
    EntryReply {
        id: id.into(),
        owner_name: format!("owner of {id}"),
    }
}

/// Asks `service` for entry `id` three times; each answer is the directory's reply.
async fn asked_three_times<S>(service: &S, id: &str)
where
    S: Service<GetEntryRequest, Response = EntryReply> + Clone,
    S::Error: std::fmt::Debug,
{
    for _ in 0..3 {
        let answer = service
            .clone()
            .oneshot(GetEntryRequest { id: id.into() })
            .await
            .unwrap();
        assert_eq!(answer, reply(id));
    }
}

/// `EntryReply` as a newer schema has it: one more field.
#[derive(Clone, PartialEq, prost::Message)]
struct EntryReplyV2 {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    owner_name: String,
    #[prost(uint32, tag = "3")]
    lookups: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_layer_caches_prost_messages_in_their_wire_format() {
    let server = RedisServer::spawn();
    let store = redis(&server).await;
    let keys = KeyBuilder::new();
    let calls = Arc::new(AtomicU32::new(0));
    let service = CacheLayer::read_through(protobuf::<EntryReply>(store.clone()))
        .key(move |request: &GetEntryRequest| keys.entry(&request.id))
        .ttl(Duration::from_secs(60))
        .layer(directory(calls.clone()));
    asked_three_times(&service, "e1").await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // In Redis: the frame's header, then exactly the message's protobuf encoding.
    let mut raw = support::raw_connection(&server.url()).await;
    let key = KeyBuilder::new().entry("e1");
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(key.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(&stored[HEADER..], &reply("e1").encode_to_vec()[..]);

    // Another instance reads it, as does one built on a newer schema (its new field at its
    // default), and what the newer one writes the older one reads, ignoring the field.
    let other = protobuf::<EntryReply>(redis(&server).await);
    assert_eq!(other.get(&key).await.unwrap(), Some(reply("e1")));
    let newer = protobuf::<EntryReplyV2>(redis(&server).await);
    let read = newer.get(&key).await.unwrap().unwrap();
    assert_eq!((read.id.as_str(), read.lookups), ("e1", 0));
    let key2 = KeyBuilder::new().entry("e2");
    let written = EntryReplyV2 {
        id: "e2".into(),
        owner_name: "owner of e2".into(),
        lookups: 9,
    };
    newer.set(&key2, &written, None).await.unwrap();
    assert_eq!(other.get(&key2).await.unwrap(), Some(reply("e2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_the_message_are_a_miss_and_one_load_replaces_them() {
    let server = RedisServer::spawn();
    let store = redis(&server).await;
    let key = KeyBuilder::new().entry("e1");
    // Another cache's JSON under the key: a valid frame, not a protobuf message.
    let json: Cache<String, RedisStore> = Cache::new(store.clone());
    json.set(&key, &"x".to_string(), None).await.unwrap();
    let cache = protobuf::<EntryReply>(store.clone());
    assert!(
        cache.get(&key).await.is_err(),
        "a decode error, not a value"
    );

    let calls = Arc::new(AtomicU32::new(0));
    let service = CacheLayer::cache_aside(cache.clone())
        .key(|request: &GetEntryRequest| KeyBuilder::new().entry(&request.id))
        .ttl(Duration::from_secs(60))
        .layer(directory(calls.clone()));
    asked_three_times(&service, "e1").await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get(&key).await.unwrap(), Some(reply("e1")));
}

/// A write-behind update, as a message.
#[derive(Clone, PartialEq, prost::Message)]
struct UpdateCounter {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(uint64, tag = "2")]
    value: u64,
}

/// The cached counter.
#[derive(Clone, PartialEq, prost::Message)]
struct Counter {
    #[prost(uint64, tag = "1")]
    value: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_write_behind_queue_keeps_message_requests_in_protobuf() {
    let server = RedisServer::spawn();
    let store = redis(&server).await;
    let cache = protobuf::<Counter>(store.clone());
    let queue = StreamQueue::new(&store, &support::unique_prefix("protobuf"));
    let stream = queue.stream_key();
    let written = Arc::new(Mutex::new(Vec::new()));
    // The writer waits for the test: the entry stays in the stream until it is looked at.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let writer = tower::service_fn({
        let (written, gate) = (written.clone(), gate.clone());
        move |update: UpdateCounter| {
            let (written, gate) = (written.clone(), gate.clone());
            async move {
                gate.acquire().await.unwrap().forget();
                written.lock().unwrap().push(update);
                Ok::<_, Infallible>(())
            }
        }
    });
    let service = CacheLayer::write_behind(cache.clone())
        .key(|update: &UpdateCounter| KeyBuilder::new().metrics(&update.id))
        .value(|update: &UpdateCounter| {
            Some(Counter {
                value: update.value,
            })
        })
        .batch_interval(Duration::from_secs(60))
        .durable(queue)
        .layer(writer);
    let update = UpdateCounter {
        id: "c1".into(),
        value: 41,
    };
    service.clone().oneshot(update.clone()).await.unwrap();
    // Read before the writer ran: the queued value, from the cache.
    let key = KeyBuilder::new().metrics("c1");
    assert_eq!(cache.get(&key).await.unwrap(), Some(Counter { value: 41 }));
    // The stream holds the request's protobuf encoding.
    let mut raw = support::raw_connection(&server.url()).await;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut raw)
        .await
        .unwrap();
    let request: Vec<u8> =
        redis::from_redis_value_ref(entries.ids[0].map.get("r").expect("a request field")).unwrap();
    assert_eq!(request, update.encode_to_vec());

    gate.add_permits(1);
    cache.flush_pending_writes().await.unwrap();
    assert_eq!(*written.lock().unwrap(), [update]);
}

/// A tonic `Directory` server whose `GetEntry` handler answers through a cached read
/// service: the cache holds the service's own reply type.
#[derive(Clone)]
struct CachedDirectory<S>(S);

impl<S> tonic::server::NamedService for CachedDirectory<S> {
    const NAME: &'static str = "directory.Directory";
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<tonic::body::Body>> for CachedDirectory<S>
where
    S: Service<GetEntryRequest, Response = EntryReply> + Clone + Send + Sync + 'static,
    S::Error: std::fmt::Display,
    S::Future: Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let entries = self.0.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                EntryReply,
                GetEntryRequest,
            >::default());
            Ok(grpc.unary(GetEntryHandler(entries), request).await)
        })
    }
}

struct GetEntryHandler<S>(S);

impl<S> Service<tonic::Request<GetEntryRequest>> for GetEntryHandler<S>
where
    S: Service<GetEntryRequest, Response = EntryReply> + Clone + Send + 'static,
    S::Error: std::fmt::Display,
    S::Future: Send,
{
    type Response = tonic::Response<EntryReply>;
    type Error = tonic::Status;
    type Future = BoxFuture<Self::Response, tonic::Status>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), tonic::Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<GetEntryRequest>) -> Self::Future {
        let entries = self.0.clone();
        Box::pin(async move {
            entries
                .oneshot(request.into_inner())
                .await
                .map(tonic::Response::new)
                .map_err(|e| tonic::Status::internal(e.to_string()))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_service_caches_its_own_reply_type() {
    let server = RedisServer::spawn();
    let calls = Arc::new(AtomicU32::new(0));
    let entries = CacheLayer::read_through(protobuf::<EntryReply>(redis(&server).await))
        .key(|request: &GetEntryRequest| KeyBuilder::new().entry(&request.id))
        .ttl(Duration::from_secs(60))
        .layer(directory(calls.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CachedDirectory(entries))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for _ in 0..3 {
        let answer = directory::get_entry(channel.clone(), "e7").await.unwrap();
        assert_eq!(answer.into_inner(), reply("e7"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    serving.abort();
}
