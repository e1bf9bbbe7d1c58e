//! The HTTP hit path, in one run: a handler with no cache in front (the floor), the layer
//! in its default (strict) mode, and the layer as a shared RFC 9111 cache
//! (`HttpCacheLayer::rfc9111`), all answering the same ~200-byte JSON response from the
//! in-memory store, body collected.
//!
//! `http_cache_semantics/*`: what the RFC rules of the `http-cache-semantics` crate would
//! add to a hit instead of this crate's precomputed freshness: its `CachePolicy` decoded
//! from its stored (serde JSON) form and `before_request` evaluated, and the evaluation
//! alone (a policy already decoded).
//!
//! `http_connections/{static,cached}/N`: the same response over real HTTP/1.1 from an axum
//! server on loopback, N keep-alive connections each sending its next request as soon as
//! the last is answered, from a load generator in the same process (2 worker threads for
//! both): `static` is the handler with no cache, `cached` the same route behind
//! `HttpCacheLayer` in memory, every request a hit. The two alternate within every sample;
//! criterion reports the cached server's requests per second, and the bench prints the
//! cached / static ratio of each sample as min / median / max.
//!
//! Run: `cargo bench --bench http_hit` (see BENCHMARKS.md).

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_caching::Cache;
use tower_caching::http::{CachedResponse, HttpCacheLayer};
use tower_layer::Layer;

const BODY: &str = r#"{"id":"0b9d6b0e-6f1c-4a51-9d0e-3a0c2c7a1f42","key":"+5511987654321","key_type":"PHONE","ispb":"12345678","owner_name":"Ana Beatriz de Souza Oliveira","created_at":"2025-10-27T12:00:00Z","status":"ACTIVE"}"#;

fn handler()
-> impl tower::Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_: Request<String>| async {
        let mut response = Response::new(BODY.to_owned());
        let headers = response.headers_mut();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("cache-control", "max-age=3600".parse().unwrap());
        headers.insert("etag", "\"v1\"".parse().unwrap());
        Ok::<_, Infallible>(response)
    })
}

fn request() -> Request<String> {
    Request::get("/entries/0b9d6b0e?view=full")
        .header("accept", "application/json")
        .header("user-agent", "bench")
        .body(String::new())
        .unwrap()
}

async fn hit<S, B>(service: &S)
where
    S: tower::Service<Request<String>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(request()).await.unwrap();
    black_box(response.into_body().collect().await.unwrap().to_bytes());
}

fn http_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let strict = HttpCacheLayer::new(Cache::<CachedResponse>::in_memory()).layer(handler());
    let shared = HttpCacheLayer::new(Cache::<CachedResponse>::in_memory())
        .rfc9111()
        .layer(handler());
    let bare = handler();
    runtime.block_on(async {
        hit(&strict).await;
        hit(&shared).await;
    });
    let mut group = c.benchmark_group("http_hit");
    group.bench_function("no_cache", |b| b.to_async(&runtime).iter(|| hit(&bare)));
    group.bench_function("strict", |b| b.to_async(&runtime).iter(|| hit(&strict)));
    group.bench_function("rfc9111", |b| b.to_async(&runtime).iter(|| hit(&shared)));
    group.finish();

    let request = request();
    let response = Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", "max-age=3600")
        .header("etag", "\"v1\"")
        .header(
            "date",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        )
        .body(())
        .unwrap();
    let policy = http_cache_semantics::CachePolicy::new(&request, &response);
    let stored = serde_json::to_vec(&policy).unwrap();
    let fresh = |policy: &http_cache_semantics::CachePolicy| {
        let now = std::time::SystemTime::now();
        matches!(
            policy.before_request(&request, now),
            http_cache_semantics::BeforeRequest::Fresh(_)
        )
    };
    assert!(fresh(&policy));
    let mut group = c.benchmark_group("http_cache_semantics");
    group.bench_function("decode_and_evaluate", |b| {
        b.iter(|| {
            let policy: http_cache_semantics::CachePolicy =
                serde_json::from_slice(black_box(&stored)).unwrap();
            black_box(fresh(&policy))
        })
    });
    group.bench_function("evaluate", |b| {
        b.iter(|| black_box(fresh(black_box(&policy))))
    });
    group.finish();
}

/// Serves `router` on a free loopback port.
async fn serve(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    address
}

type Connection = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// `count` keep-alive HTTP/1.1 connections to `address`.
async fn connect(address: std::net::SocketAddr, count: usize) -> Vec<Connection> {
    let mut connections = Vec::new();
    for _ in 0..count {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        connections.push(sender);
    }
    connections
}

/// Sends `total` requests over `connections`, each connection one at a time; how long it
/// took. The connections are handed back.
async fn load(connections: Vec<Connection>, total: usize) -> (Vec<Connection>, Duration) {
    let per_connection = total / connections.len();
    let started = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut connection| {
            tokio::spawn(async move {
                for _ in 0..per_connection {
                    connection.ready().await.unwrap();
                    let request = Request::get("/entries/0b9d6b0e?view=full")
                        .header("host", "bench")
                        .header("accept", "application/json")
                        .body(http_body_util::Empty::new())
                        .unwrap();
                    let response = connection.send_request(request).await.unwrap();
                    assert!(response.status().is_success());
                    black_box(response.into_body().collect().await.unwrap().to_bytes());
                }
                connection
            })
        })
        .collect();
    let mut connections = Vec::new();
    for task in tasks {
        connections.push(task.await.unwrap());
    }
    (connections, started.elapsed())
}

fn http_connections(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let route = || {
        axum::routing::get(|| async {
            (
                [
                    ("content-type", "application/json"),
                    ("cache-control", "max-age=3600"),
                    ("etag", "\"v1\""),
                ],
                BODY,
            )
        })
    };
    let (static_address, cached_address) = runtime.block_on(async {
        let bare = axum::Router::new().route("/entries/{id}", route());
        let cached = axum::Router::new().route(
            "/entries/{id}",
            route().layer(HttpCacheLayer::new(Cache::<CachedResponse>::in_memory())),
        );
        (serve(bare).await, serve(cached).await)
    });
    let mut group = c.benchmark_group("http_connections");
    let total = 1024;
    group.throughput(Throughput::Elements(total as u64));
    for count in [1usize, 16, 64] {
        let connections = std::sync::Mutex::new(Some(runtime.block_on(async {
            let (mut cached, mut bare) = (
                connect(cached_address, count).await,
                connect(static_address, count).await,
            );
            // The entry stored before the first sample.
            (cached, _) = load(cached, count).await;
            (bare, _) = load(bare, count).await;
            (cached, bare)
        })));
        let samples = std::cell::RefCell::new(Vec::new());
        group.bench_function(BenchmarkId::new("cached", count), |b| {
            b.to_async(&runtime).iter_custom(|iterations| {
                let (mut cached, mut bare) = connections.lock().unwrap().take().unwrap();
                let (connections, samples) = (&connections, &samples);
                async move {
                    let (mut cached_took, mut static_took) = (Duration::ZERO, Duration::ZERO);
                    for _ in 0..iterations {
                        let took;
                        (bare, took) = load(bare, total).await;
                        static_took += took;
                        let took;
                        (cached, took) = load(cached, total).await;
                        cached_took += took;
                    }
                    *connections.lock().unwrap() = Some((cached, bare));
                    samples
                        .borrow_mut()
                        .push((cached_took, static_took, iterations));
                    cached_took
                }
            })
        });
        let samples = samples.into_inner();
        let (cached_total, static_total, iterations) =
            samples
                .iter()
                .fold((0.0, 0.0, 0), |(c, s, n), (cached, bare, iterations)| {
                    (
                        c + cached.as_secs_f64(),
                        s + bare.as_secs_f64(),
                        n + iterations,
                    )
                });
        let mut ratios: Vec<f64> = samples
            .iter()
            .map(|(cached, bare, _)| bare.as_secs_f64() / cached.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        if !ratios.is_empty() {
            println!(
                "http_connections/{count}: cached / static requests per second {:.3} over all samples ({:.0} / {:.0} per second); per sample min {:.3} median {:.3} max {:.3} ({} samples)",
                static_total / cached_total,
                (total as u64 * iterations) as f64 / cached_total,
                (total as u64 * iterations) as f64 / static_total,
                ratios[0],
                ratios[ratios.len() / 2],
                ratios[ratios.len() - 1],
                ratios.len()
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = http_hit, http_connections
}
criterion_main!(benches);
