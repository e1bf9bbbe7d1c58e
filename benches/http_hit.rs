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
//! Run: `cargo bench --bench http_hit` (see BENCHMARKS.md).

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
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

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = http_hit
}
criterion_main!(benches);
