//! HTTP response caching over axum routes: hits and misses, the safe defaults, keys,
//! coalescing, and invalidation after successful writes.
#![cfg(feature = "http")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_caching::http::{
    CachedResponse, HttpCacheLayer, HttpKey, PathInvalidation, PathKey, is_success,
};
use tower_caching::key::KeyBuilder;
use tower_caching::store::{MemoryStore, Store};
use tower_caching::{Cache, CacheLayer};

/// A route whose handler counts its calls and answers `body {n}`, with `headers`.
fn counting_route(
    calls: Arc<AtomicU32>,
    status: StatusCode,
    headers: &'static [(&'static str, &'static str)],
) -> axum::routing::MethodRouter {
    get(move || {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.insert(*name, value.parse().unwrap());
            }
            (status, map, format!("body {n}")).into_response()
        }
    })
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn app_with<S: Store>(
    cache: Cache<CachedResponse, S>,
    route: axum::routing::MethodRouter,
    configure: impl FnOnce(HttpCacheLayer<S>) -> HttpCacheLayer<S>,
) -> Router {
    Router::new().route("/r", route.layer(configure(HttpCacheLayer::new(cache))))
}

#[tokio::test]
async fn miss_then_hit_with_x_cache_and_age() {
    let calls = Arc::new(AtomicU32::new(0));
    let app = app_with(
        Cache::in_memory(),
        counting_route(
            calls.clone(),
            StatusCode::OK,
            &[("content-type", "text/plain")],
        ),
        |l| l,
    );
    let (status, headers, body) = call(&app, get_req("/r")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "body 1"));
    assert_eq!(headers["x-cache"], "MISS");
    assert!(headers.get("age").is_none());
    let (_, headers, body) = call(&app, get_req("/r")).await;
    assert_eq!(body, "body 1");
    assert_eq!(headers["x-cache"], "HIT");
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(headers["age"], "0");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, headers, _) = call(&app, get_req("/r")).await;
    assert_eq!(headers["age"], "1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn only_get_is_stored_and_head_is_answered_from_it() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let route = get(move || {
        let c = c.clone();
        async move { format!("body {}", c.fetch_add(1, Ordering::SeqCst) + 1) }
    })
    .post(|| async { "posted" });
    let app = Router::new().route("/r", route.layer(HttpCacheLayer::new(Cache::in_memory())));
    for _ in 0..2 {
        let (_, headers, body) = call(&app, Request::post("/r").body(Body::empty()).unwrap()).await;
        assert_eq!(body, "posted");
        assert!(headers.get("x-cache").is_none());
    }
    // A HEAD first is passed on and never stored: its response has no body.
    let head = || Request::head("/r").body(Body::empty()).unwrap();
    let (_, headers, body) = call(&app, head()).await;
    assert!(headers.get("x-cache").is_none());
    assert_eq!(body, "");
    let (_, headers, body) = call(&app, get_req("/r")).await;
    assert_eq!(
        (headers["x-cache"].to_str().unwrap(), body.as_str()),
        ("MISS", "body 2")
    );
    // Then HEAD is answered from the GET's entry, without its body.
    let (_, headers, body) = call(&app, head()).await;
    assert_eq!(
        (headers["x-cache"].to_str().unwrap(), body.as_str()),
        ("HIT", "")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_path_key_never_serves_a_head_response_to_a_get() {
    let calls = Arc::new(AtomicU32::new(0));
    let route = counting_route(calls.clone(), StatusCode::OK, &[]);
    let app = Router::new().route(
        "/entries/{id}",
        route.layer(
            HttpCacheLayer::new(Cache::in_memory())
                .key(PathKey::new("/entries/{id}", "entry:{id}")),
        ),
    );
    call(
        &app,
        Request::head("/entries/e1").body(Body::empty()).unwrap(),
    )
    .await;
    let (_, _, body) = call(&app, get_req("/entries/e1")).await;
    assert_eq!(
        body, "body 2",
        "the GET is not served the HEAD's empty body"
    );
    let (_, headers, body) = call(&app, get_req("/entries/e1")).await;
    assert_eq!(
        (headers["x-cache"].to_str().unwrap(), body.as_str()),
        ("HIT", "body 2")
    );
}

/// A route that echoes what its handler sees: the URI (authority, query) and the Host.
fn echo_route(calls: Arc<AtomicU32>) -> axum::routing::MethodRouter {
    get(move |request: Request<Body>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let host = request
                .headers()
                .get("host")
                .map_or("-", |h| h.to_str().unwrap_or("?"))
                .to_owned();
            format!("{} host={host}", request.uri())
        }
    })
}

#[tokio::test]
async fn what_the_handler_sees_is_in_the_key_or_withheld() {
    // An absolute-form target: the handler never sees its authority, nor an unkeyed Host.
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new().route(
        "/x",
        echo_route(calls.clone()).layer(HttpCacheLayer::new(Cache::in_memory())),
    );
    let evil = Request::get("http://evil.example/x")
        .header("host", "good.example")
        .body(Body::empty())
        .unwrap();
    let (_, _, body) = call(&app, evil).await;
    assert_eq!(body, "/x host=-");
    let (_, headers, body) = call(&app, get_req("/x")).await;
    assert_eq!(
        (headers["x-cache"].to_str().unwrap(), body.as_str()),
        ("HIT", "/x host=-")
    );

    // Repeated parameters keep their order in the key: last-wins parsers differ on them.
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new().route(
        "/q",
        echo_route(calls.clone()).layer(HttpCacheLayer::new(Cache::in_memory())),
    );
    let (_, _, first) = call(&app, get_req("/q?a=1&a=2")).await;
    let (_, _, second) = call(&app, get_req("/q?a=2&a=1")).await;
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("/q?a=1&a=2 host=-", "/q?a=2&a=1 host=-")
    );
    call(&app, get_req("/q?b=1&a=1&a=2")).await;
    let (_, headers, _) = call(&app, get_req("/q?a=1&b=1&a=2")).await;
    assert_eq!(
        headers["x-cache"], "HIT",
        "distinct names still sort: one entry"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // A path key covers no query: the handler is given the path alone.
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new().route(
        "/entries/{id}",
        echo_route(calls.clone()).layer(
            HttpCacheLayer::new(Cache::in_memory())
                .key(PathKey::new("/entries/{id}", "entry:{id}")),
        ),
    );
    let (_, _, body) = call(&app, get_req("/entries/e1?callback=evil")).await;
    assert_eq!(body, "/entries/e1 host=-");
    let (_, _, body) = call(&app, get_req("/entries/e1")).await;
    assert_eq!(body, "/entries/e1 host=-");
}

#[tokio::test]
async fn only_cacheable_statuses_and_negative_ttl() {
    let errors = Arc::new(AtomicU32::new(0));
    let app = app_with(
        Cache::in_memory(),
        counting_route(errors.clone(), StatusCode::INTERNAL_SERVER_ERROR, &[]),
        |l| l,
    );
    call(&app, get_req("/r")).await;
    call(&app, get_req("/r")).await;
    assert_eq!(errors.load(Ordering::SeqCst), 2);

    let missing = Arc::new(AtomicU32::new(0));
    let app = app_with(
        Cache::in_memory(),
        counting_route(missing.clone(), StatusCode::NOT_FOUND, &[]),
        |l| l.negative_ttl(Duration::from_millis(1000)),
    );
    call(&app, get_req("/r")).await;
    let (status, headers, _) = call(&app, get_req("/r")).await;
    assert_eq!(
        (status, &headers["x-cache"]),
        (
            StatusCode::NOT_FOUND,
            &"HIT".parse::<axum::http::HeaderValue>().unwrap()
        )
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    call(&app, get_req("/r")).await;
    assert_eq!(missing.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn private_responses_are_never_stored() {
    for headers in [
        &[("cache-control", "no-store")][..],
        &[("cache-control", "private, max-age=60")][..],
        &[("cache-control", "no-cache")][..],
        &[("set-cookie", "session=abc")][..],
        &[("vary", "*")][..],
        &[("vary", "accept-language, *")][..],
    ] {
        let calls = Arc::new(AtomicU32::new(0));
        let app = app_with(
            Cache::in_memory(),
            counting_route(calls.clone(), StatusCode::OK, headers),
            |l| l,
        );
        call(&app, get_req("/r")).await;
        call(&app, get_req("/r")).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{headers:?} was cached");
    }
}

#[tokio::test]
async fn a_set_cookie_response_is_never_shared_with_coalesced_requests() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let route = get(move || {
        let c = c.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = c.fetch_add(1, Ordering::SeqCst);
            (
                [("set-cookie", format!("session={n}"))],
                format!("user {n}"),
            )
        }
    });
    let app = Router::new().route("/r", route.layer(HttpCacheLayer::new(Cache::in_memory())));
    let responses =
        futures_util::future::join_all((0..20).map(|_| call(&app, get_req("/r")))).await;
    let mut cookies: Vec<String> = responses
        .iter()
        .map(|(_, headers, body)| {
            let cookie = headers["set-cookie"].to_str().unwrap().to_owned();
            assert_eq!(
                cookie.trim_start_matches("session="),
                body.trim_start_matches("user ")
            );
            cookie
        })
        .collect();
    cookies.sort();
    cookies.dedup();
    assert_eq!(
        cookies.len(),
        20,
        "a session cookie went to another request"
    );
}

#[tokio::test]
async fn concurrent_misses_make_one_inner_call() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let route = get(move || {
        let c = c.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            format!("body {}", c.fetch_add(1, Ordering::SeqCst) + 1)
        }
    });
    let app = Router::new().route("/r", route.layer(HttpCacheLayer::new(Cache::in_memory())));
    let responses =
        futures_util::future::join_all((0..50).map(|_| call(&app, get_req("/r")))).await;
    assert!(
        responses
            .iter()
            .all(|(status, _, body)| *status == StatusCode::OK && body == "body 1")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn request_cache_control_and_credentials() {
    let calls = Arc::new(AtomicU32::new(0));
    let app = app_with(
        Cache::in_memory(),
        counting_route(calls.clone(), StatusCode::OK, &[]),
        |l| l,
    );
    call(&app, get_req("/r")).await;
    // no-cache: skip the lookup, refresh the entry.
    let (_, headers, body) = call(
        &app,
        Request::get("/r")
            .header("cache-control", "no-cache")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (headers["x-cache"].to_str().unwrap(), body.as_str()),
        ("MISS", "body 2")
    );
    assert_eq!(call(&app, get_req("/r")).await.2, "body 2");
    // no-store: straight through.
    let (_, headers, body) = call(
        &app,
        Request::get("/r")
            .header("cache-control", "no-store")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(headers.get("x-cache").is_none());
    assert_eq!(body, "body 3");
    // Credentials bypass the cache unless the key covers them.
    for (name, value) in [("authorization", "Bearer a"), ("cookie", "s=1")] {
        let (_, headers, _) = call(
            &app,
            Request::get("/r")
                .header(name, value)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert!(headers.get("x-cache").is_none(), "{name}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);

    let per_user = Arc::new(AtomicU32::new(0));
    let app = app_with(
        Cache::in_memory(),
        counting_route(per_user.clone(), StatusCode::OK, &[]),
        |l| l.key(HttpKey::new().header("authorization")),
    );
    for token in ["Bearer a", "Bearer b", "Bearer a"] {
        call(
            &app,
            Request::get("/r")
                .header("authorization", token)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    }
    assert_eq!(per_user.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unkeyed_header_never_changes_what_another_client_gets() {
    let app = Router::new().route(
        "/r",
        get(|headers: HeaderMap| async move {
            let host = headers
                .get("x-forwarded-host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("example.org")
                .to_owned();
            format!("<script src=\"https://{host}/app.js\"></script>")
        })
        .layer(HttpCacheLayer::new(Cache::in_memory())),
    );
    let poisoned = Request::get("/r")
        .header("x-forwarded-host", "evil.example")
        .body(Body::empty())
        .unwrap();
    let (_, _, attacker_sees) = call(&app, poisoned).await;
    let (_, headers, victim_sees) = call(&app, get_req("/r")).await;
    assert_eq!(headers["x-cache"], "HIT");
    assert!(!victim_sees.contains("evil"), "{victim_sees}");
    assert!(
        !attacker_sees.contains("evil"),
        "the unkeyed header reached the handler"
    );

    // A header the key covers does reach the handler, and splits the entry.
    let keyed = Router::new().route(
        "/r",
        get(|headers: HeaderMap| async move { format!("{:?}", headers.get("accept-language")) })
            .layer(
                HttpCacheLayer::new(Cache::in_memory())
                    .key(HttpKey::new().header("accept-language")),
            ),
    );
    let pt = call(
        &keyed,
        Request::get("/r")
            .header("accept-language", "pt")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .2;
    let en = call(
        &keyed,
        Request::get("/r")
            .header("accept-language", "en")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .2;
    assert!(pt.contains("pt") && en.contains("en"));
}

#[tokio::test]
async fn vary_on_a_withheld_header_is_cached_and_on_a_forwarded_one_is_not() {
    // Withheld: the handler never saw `accept-language`, so its answer is everyone's.
    let calls = Arc::new(AtomicU32::new(0));
    let route = counting_route(
        calls.clone(),
        StatusCode::OK,
        &[("vary", "accept-language")],
    );
    let app = app_with(Cache::in_memory(), route, |l| l);
    let pt = || {
        Request::get("/r")
            .header("accept-language", "pt")
            .body(Body::empty())
            .unwrap()
    };
    call(&app, pt()).await;
    call(&app, get_req("/r")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Forwarded but not keyed: the answer may depend on it, so it is not stored.
    let calls = Arc::new(AtomicU32::new(0));
    let route = counting_route(
        calls.clone(),
        StatusCode::OK,
        &[("vary", "accept-language")],
    );
    let app = app_with(Cache::in_memory(), route, |l| {
        l.forward_header(http::HeaderName::from_static("accept-language"))
    });
    call(&app, pt()).await;
    call(&app, pt()).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn compression_inside_a_strict_layer_is_cached_per_keyed_encoding() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let route: axum::routing::MethodRouter = get(move || {
        c.fetch_add(1, Ordering::SeqCst);
        async {
            (
                [("content-type", "text/plain")],
                "compressible ".repeat(200),
            )
        }
    })
    .layer(tower_http::compression::CompressionLayer::new());
    let app = Router::new().route(
        "/r",
        route.layer(
            HttpCacheLayer::new(Cache::in_memory()).key(HttpKey::new().header("accept-encoding")),
        ),
    );
    let gzip = || {
        Request::get("/r")
            .header("accept-encoding", "gzip")
            .body(Body::empty())
            .unwrap()
    };
    let (_, first, _) = call(&app, gzip()).await;
    let (_, second, _) = call(&app, gzip()).await;
    let (_, plain, _) = call(&app, get_req("/r")).await;
    assert_eq!(first["content-encoding"], "gzip");
    assert_eq!(
        (
            second["x-cache"].to_str().unwrap(),
            second["content-encoding"].to_str().unwrap()
        ),
        ("HIT", "gzip")
    );
    assert!(!plain.contains_key("content-encoding"));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one call per encoding");
}

#[tokio::test]
async fn vary_on_a_keyed_header_is_cached() {
    let calls = Arc::new(AtomicU32::new(0));
    let app = app_with(
        Cache::in_memory(),
        counting_route(
            calls.clone(),
            StatusCode::OK,
            &[("vary", "accept-language")],
        ),
        |l| l.key(HttpKey::new().header("accept-language")),
    );
    for _ in 0..2 {
        call(
            &app,
            Request::get("/r")
                .header("accept-language", "pt")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn large_bodies_stream_through_uncached() {
    let registry = prometheus::Registry::new();
    let metrics = tower_caching::metrics::Metrics::builder()
        .register(&registry)
        .unwrap();
    let cache: Cache<CachedResponse> = Cache::builder(MemoryStore::new()).metrics(metrics).build();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let route = get(move || {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            "x".repeat(5000)
        }
    });
    let app = app_with(cache, route, |l| l.max_body_size(1000));
    for _ in 0..2 {
        let (status, _, body) = call(&app, get_req("/r")).await;
        assert_eq!((status, body.len()), (StatusCode::OK, 5000));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let mut text = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains(
            r#"tower_caching_cache_errors_total{error_type="too_large",operation="set"} 2"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn keys_sort_queries_and_path_keys_share_typed_entries() {
    let calls = Arc::new(AtomicU32::new(0));
    let app = app_with(
        Cache::in_memory(),
        counting_route(calls.clone(), StatusCode::OK, &[]),
        |l| l,
    );
    call(&app, get_req("/r?b=2&a=1")).await;
    let (_, headers, _) = call(&app, get_req("/r?a=1&b=2")).await;
    assert_eq!(headers["x-cache"], "HIT");
    call(&app, get_req("/r?a=1")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A PathKey lands on the typed key, so `Cache::delete` of `entry:{id}` invalidates it.
    let cache: Cache<CachedResponse> = Cache::in_memory();
    let entries = Arc::new(AtomicU32::new(0));
    let e = entries.clone();
    let app = Router::new().route(
        "/entries/{id}",
        get(move |Path(id): Path<String>| {
            let e = e.clone();
            async move { format!("{id} v{}", e.fetch_add(1, Ordering::SeqCst) + 1) }
        })
        .layer(HttpCacheLayer::new(cache.clone()).key(PathKey::new("/entries/{id}", "entry:{id}"))),
    );
    assert_eq!(call(&app, get_req("/entries/a%2A")).await.2, "a* v1");
    assert_eq!(call(&app, get_req("/entries/a%2A")).await.2, "a* v1");
    assert!(cache.delete(&KeyBuilder::new().entry("a*")).await.unwrap());
    assert_eq!(call(&app, get_req("/entries/a%2A")).await.2, "a* v2");
}

#[tokio::test]
async fn write_around_invalidates_after_a_2xx_only() {
    let cache: Cache<CachedResponse> = Cache::in_memory();
    let reads = Arc::new(AtomicU32::new(0));
    let r = reads.clone();
    let app = Router::new().route(
        "/entries/{id}",
        get(move |Path(id): Path<String>| {
            let r = r.clone();
            async move { format!("{id} read {}", r.fetch_add(1, Ordering::SeqCst) + 1) }
        })
        .layer(HttpCacheLayer::new(cache.clone()).key(PathKey::new("/entries/{id}", "entry:{id}")))
        .put(|Path(id): Path<String>| async move {
            if id == "locked" {
                StatusCode::CONFLICT
            } else {
                StatusCode::NO_CONTENT
            }
        })
        .layer(
            CacheLayer::write_around(cache.clone())
                .invalidate(PathInvalidation::new("/entries/{id}").key("entry:{id}"))
                .succeeded_if(is_success),
        ),
    );
    let put = |path: &str| Request::put(path).body(Body::empty()).unwrap();
    call(&app, get_req("/entries/e1")).await;
    call(&app, get_req("/entries/locked")).await;
    assert_eq!(
        call(&app, put("/entries/e1")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&app, put("/entries/locked")).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(call(&app, get_req("/entries/e1")).await.2, "e1 read 3");
    assert_eq!(
        call(&app, get_req("/entries/locked")).await.2,
        "locked read 2"
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn binary_bodies_round_trip_through_redis_and_garbage_is_a_miss() {
    let store = support::shared_redis_store().await;
    let prefix = support::unique_prefix("http");
    let cache: Cache<CachedResponse, _> = Cache::new(store.clone());
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let route = get(move || {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            (
                [("content-type", "application/octet-stream")],
                vec![0u8, 159, 146, 150, 255],
            )
        }
    });
    let key = HttpKey::new().prefix(&prefix);
    let app = app_with(cache, route, |l| l.key(key));
    for _ in 0..2 {
        let response = app.clone().oneshot(get_req("/r")).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes.as_ref(), &[0u8, 159, 146, 150, 255]);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Overwrite the entry with garbage: a miss, the handler runs, nobody panics.
    let pattern = tower_caching::key::Pattern::prefix(&prefix);
    let mut raw = support::raw_connection(support::shared_redis()).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    let _: () = redis::cmd("SET")
        .arg(&keys[0])
        .arg(&b"\xCA\x01\x00garbage"[..])
        .query_async(&mut raw)
        .await
        .unwrap();
    let (status, headers, _) = call(&app, get_req("/r")).await;
    assert_eq!(
        (status, headers["x-cache"].to_str().unwrap()),
        (StatusCode::OK, "MISS")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn refresh_ahead_reloads_in_the_background() {
    let calls = Arc::new(AtomicU32::new(0));
    // While true, the route does not answer: a hit that waited for the reload never would.
    let held = Arc::new(tokio::sync::watch::Sender::new(false));
    let (c, h) = (calls.clone(), held.clone());
    let route = get(move || {
        let (c, mut held) = (c.clone(), h.subscribe());
        async move {
            let _ = held.wait_for(|held| !*held).await;
            format!("body {}", c.fetch_add(1, Ordering::SeqCst) + 1)
        }
    });
    // The window opens at 1 s and the entry expires at 2 s: 0.8 s from where it is read.
    let app = app_with(Cache::in_memory(), route, |l| {
        l.ttl(tower_caching::ttl::FixedTtl(Duration::from_millis(2000)))
            .refresh_ahead(0.5)
    });
    assert_eq!(call(&app, get_req("/r")).await.2, "body 1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // In the window: served from the cache, reloaded once behind it.
    held.send_replace(true);
    for _ in 0..5 {
        let hit = tokio::time::timeout(Duration::from_secs(5), call(&app, get_req("/r")));
        let (_, headers, body) = hit.await.expect("a hit waited for the reload");
        assert_eq!(
            (headers["x-cache"].to_str().unwrap(), body.as_str()),
            ("HIT", "body 1")
        );
    }
    held.send_replace(false);
    support::within(Duration::from_secs(5), async || {
        call(&app, get_req("/r")).await.2 == "body 2"
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn fail_safe_serves_stale_responses_when_the_route_fails() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let (f, c) = (failing.clone(), calls.clone());
    let route = get(move || {
        let (f, c) = (f.clone(), c.clone());
        async move {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            if f.load(Ordering::SeqCst) {
                (StatusCode::SERVICE_UNAVAILABLE, "down".to_string())
            } else {
                (StatusCode::OK, format!("body {n}"))
            }
        }
    });
    let app = app_with(Cache::in_memory(), route, |l| {
        l.ttl(tower_caching::ttl::FixedTtl(Duration::from_millis(200)))
            .fail_safe(Duration::from_secs(30), Duration::from_millis(1500))
    });
    assert_eq!(call(&app, get_req("/r")).await.2, "body 1");
    tokio::time::sleep(Duration::from_millis(250)).await;
    failing.store(true, Ordering::SeqCst);
    let (status, headers, body) = call(&app, get_req("/r")).await;
    assert_eq!(
        (status, headers["x-cache"].to_str().unwrap(), body.as_str()),
        (StatusCode::OK, "STALE", "body 1")
    );
    // Throttled: the failing route is not asked again for a while.
    for _ in 0..3 {
        assert_eq!(call(&app, get_req("/r")).await.2, "body 1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_, headers, body) = call(&app, get_req("/r")).await;
    assert_eq!(
        (headers["x-cache"].to_str().unwrap(), body.as_str()),
        ("MISS", "body 3")
    );
}

/// An HTTP route and a typed cache keyed alike overwrite each other's entries; each now
/// sees the other's value as a clash — a typed error, counted and logged — never as a
/// value it might decode.
#[tokio::test]
async fn an_http_route_and_a_typed_cache_on_one_key_clash_visibly() {
    use tower_caching::CacheError;
    let store = MemoryStore::new();
    let responses: Cache<CachedResponse, _> = Cache::new(store.clone());
    let entries: Cache<serde_json::Value, _> = Cache::new(store.clone());
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new().route(
        "/entries/{id}",
        counting_route(calls.clone(), StatusCode::OK, &[])
            .layer(HttpCacheLayer::new(responses).key(PathKey::new("/entries/{id}", "entry:{id}"))),
    );
    assert_eq!(call(&app, get_req("/entries/e1")).await.2, "body 1");
    assert_eq!(
        call(&app, get_req("/entries/e1")).await.2,
        "body 1",
        "a hit"
    );

    // serde_json::Value would decode any JSON, the stored response included.
    let key = KeyBuilder::new().build("entry", "e1");
    assert_eq!(key.as_str(), "entry:e1");
    let error = entries.get(&key).await.unwrap_err();
    assert!(matches!(error, CacheError::Clash { .. }), "{error}");
    assert_eq!(error.kind(), "clash");

    // The typed cache stores its value over the response: the route sees a clash (a miss).
    entries
        .set(&key, &serde_json::json!({"id": "e1"}), None)
        .await
        .unwrap();
    assert_eq!(call(&app, get_req("/entries/e1")).await.2, "body 2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
