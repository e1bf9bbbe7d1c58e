//! `HttpCacheLayer::rfc9111()`: a shared HTTP cache as RFC 9111 describes one, at the layer
//! level (tower `oneshot` against a scripted origin). Staleness is made with the origin's
//! own `Age` header, never with sleeps: `max-age=10` with `Age: 10` is stale at once.
#![cfg(feature = "http")]

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};
use tower_caching::Cache;
use tower_caching::http::{CachedResponse, HttpCacheLayer};

/// One scripted answer of the origin.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn reply(status: u16, headers: &[(&'static str, &str)], body: &str) -> Reply {
    Reply {
        status,
        headers: headers.iter().map(|(n, v)| (*n, v.to_string())).collect(),
        body: body.to_owned(),
    }
}

/// An origin that answers from a script (the last reply repeats) and records what it saw.
#[derive(Clone, Default)]
struct Origin {
    script: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<(Method, HeaderMap)>>>,
    calls: Arc<AtomicUsize>,
}

impl Origin {
    fn new(replies: Vec<Reply>) -> Self {
        Origin {
            script: Arc::new(Mutex::new(replies.into())),
            ..Origin::default()
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last_request(&self) -> HeaderMap {
        self.seen.lock().unwrap().last().unwrap().1.clone()
    }
}

impl Service<Request<String>> for Origin {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen
            .lock()
            .unwrap()
            .push((request.method().clone(), request.headers().clone()));
        let mut script = self.script.lock().unwrap();
        let reply = if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            script
                .front()
                .cloned()
                .unwrap_or_else(|| reply(200, &[], ""))
        };
        let mut response = Response::new(format!("{} #{n}", reply.body));
        if request.method() == Method::HEAD {
            response = Response::new(String::new());
        }
        *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
        for (name, value) in reply.headers {
            response.headers_mut().append(name, value.parse().unwrap());
        }
        std::future::ready(Ok(response))
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn x_cache(&self) -> &str {
        self.header("x-cache")
    }
}

type Proxy = tower_caching::http::HttpCache<Origin>;

fn in_front(origin: &Origin) -> Proxy {
    HttpCacheLayer::new(Cache::<CachedResponse>::in_memory())
        .rfc9111()
        .layer(origin.clone())
}

async fn send<S, B>(proxy: &S, request: Request<String>) -> Answer
where
    S: Service<Request<String>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = proxy.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn get(path: &str) -> Request<String> {
    Request::get(path).body(String::new()).unwrap()
}

fn get_with(path: &str, headers: &[(&str, &str)]) -> Request<String> {
    let mut request = get(path);
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    request
}

/// Whether a second GET of a response with `headers` is answered from the cache.
async fn reused(headers: &[(&'static str, &str)]) -> bool {
    reused_status(200, headers).await
}

async fn reused_status(status: u16, headers: &[(&'static str, &str)]) -> bool {
    let origin = Origin::new(vec![reply(status, headers, "body")]);
    let proxy = in_front(&origin);
    let first = send(&proxy, get("/r")).await;
    assert_eq!(first.status.as_u16(), status);
    let second = send(&proxy, get("/r")).await;
    assert_eq!(second.status.as_u16(), status);
    origin.calls() == 1
}

fn http_date(offset_secs: i64) -> String {
    let now = std::time::SystemTime::now();
    let at = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs((-offset_secs) as u64)
    };
    httpdate::fmt_http_date(at)
}

#[tokio::test]
async fn freshness_comes_from_the_response() {
    assert!(reused(&[("cache-control", "max-age=3600")]).await);
    assert!(!reused(&[("cache-control", "max-age=0")]).await);
    assert!(
        !reused(&[("cache-control", "max-age=2"), ("age", "3")]).await,
        "already stale"
    );
    assert!(!reused(&[("cache-control", "max-age=3600, s-maxage=1"), ("age", "2")]).await);
    assert!(reused(&[("cache-control", "max-age=1, s-maxage=3600"), ("age", "2")]).await);
    assert!(!reused(&[("cache-control", "max-age=-5")]).await);
    assert!(!reused(&[("cache-control", "max-age='60'")]).await);
    assert!(reused(&[("expires", &http_date(3600)), ("date", &http_date(0))]).await);
    assert!(!reused(&[("expires", &http_date(-3600)), ("date", &http_date(0))]).await);
    assert!(!reused(&[("expires", "not a date")]).await);
    assert!(!reused(&[]).await, "nothing says it is fresh");
    assert!(
        reused(&[
            ("last-modified", &http_date(-100_000)),
            ("date", &http_date(0))
        ])
        .await,
        "heuristic freshness: a tenth of the time since Last-Modified"
    );
    assert!(!reused(&[("cache-control", "no-store, max-age=60")]).await);
    assert!(!reused(&[("cache-control", "private, max-age=60")]).await);
    assert!(!reused(&[("cache-control", "max-age=60"), ("vary", "*")]).await);
}

#[tokio::test]
async fn fresh_redirects_and_errors_are_stored_but_not_partial_or_unknown_must_understand() {
    for status in [301, 404, 410, 500] {
        assert!(
            reused_status(status, &[("cache-control", "max-age=60")]).await,
            "{status}"
        );
    }
    assert!(
        !reused_status(
            599,
            &[("cache-control", "max-age=60, must-understand, no-store")]
        )
        .await
    );
    assert!(
        reused_status(
            200,
            &[("cache-control", "max-age=60, must-understand, no-store")]
        )
        .await
    );
    // 404 without freshness information is heuristically cacheable only with a validator date.
    assert!(!reused_status(404, &[]).await);
}

#[tokio::test]
async fn cdn_cache_control_governs_this_cache() {
    assert!(
        reused(&[
            ("cdn-cache-control", "max-age=60"),
            ("cache-control", "no-store")
        ])
        .await
    );
    assert!(
        !reused(&[
            ("cdn-cache-control", "no-store"),
            ("cache-control", "max-age=60")
        ])
        .await
    );
    // Not a valid Structured Field: ignored, Cache-Control governs.
    assert!(
        !reused(&[
            ("cdn-cache-control", "max-age=60, &&"),
            ("cache-control", "no-store")
        ])
        .await
    );
}

#[tokio::test]
async fn age_is_kept_on_misses_and_advanced_on_hits() {
    let origin = Origin::new(vec![reply(
        200,
        &[("cache-control", "max-age=100"), ("age", "30")],
        "b",
    )]);
    let proxy = in_front(&origin);
    let miss = send(&proxy, get("/r")).await;
    assert_eq!(miss.x_cache(), "MISS");
    let age: u64 = miss.header("age").parse().unwrap();
    assert!((30..=31).contains(&age), "the origin's Age is kept: {age}");
    let hit = send(&proxy, get("/r")).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(hit.header("age").parse::<u64>().unwrap() >= 30);
    assert_eq!(hit.header("cache-status"), "tower-caching; hit");
    assert_eq!(
        miss.header("cache-status"),
        "tower-caching; fwd=miss; stored"
    );
}

#[tokio::test]
async fn conditional_requests_are_answered_from_the_cache() {
    let origin = Origin::new(vec![reply(
        200,
        &[
            ("cache-control", "max-age=100"),
            ("etag", "\"v1\""),
            ("last-modified", &http_date(-1000)),
        ],
        "body",
    )]);
    let proxy = in_front(&origin);
    // A client's own validators never reach the origin: the cache fetches whole responses.
    let first = send(&proxy, get_with("/r", &[("if-none-match", "\"v1\"")])).await;
    assert!(!origin.last_request().contains_key("if-none-match"));
    assert_eq!(first.status, StatusCode::NOT_MODIFIED);
    let not_modified = send(
        &proxy,
        get_with("/r", &[("if-none-match", "W/\"x\", \"v1\"")]),
    )
    .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.body, "");
    assert_eq!(not_modified.header("etag"), "\"v1\"");
    let other = send(&proxy, get_with("/r", &[("if-none-match", "\"v2\"")])).await;
    assert_eq!(other.status, StatusCode::OK);
    let since = send(
        &proxy,
        get_with("/r", &[("if-modified-since", &http_date(0))]),
    )
    .await;
    assert_eq!(since.status, StatusCode::NOT_MODIFIED);
    // If-None-Match takes precedence over If-Modified-Since.
    let both = send(
        &proxy,
        get_with(
            "/r",
            &[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", &http_date(0)),
            ],
        ),
    )
    .await;
    assert_eq!(both.status, StatusCode::OK);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn stale_entries_are_revalidated_and_a_304_updates_them() {
    let origin = Origin::new(vec![
        reply(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("age", "10"),
                ("etag", "\"v1\""),
                ("x-version", "1"),
            ],
            "body",
        ),
        reply(
            304,
            &[
                ("cache-control", "max-age=100"),
                ("etag", "\"v1\""),
                ("x-version", "2"),
            ],
            "",
        ),
    ]);
    let proxy = in_front(&origin);
    let first = send(&proxy, get("/r")).await;
    assert_eq!(first.body, "body #1");
    let second = send(&proxy, get("/r")).await;
    assert_eq!(origin.calls(), 2);
    assert_eq!(origin.last_request()["if-none-match"], "\"v1\"");
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body, "body #1", "the stored body, revalidated");
    assert_eq!(second.x_cache(), "REVALIDATED");
    assert_eq!(
        second.header("x-version"),
        "2",
        "the 304's headers replace the stored ones"
    );
    let third = send(&proxy, get("/r")).await;
    assert_eq!((third.x_cache(), third.header("x-version")), ("HIT", "2"));
    assert_eq!(origin.calls(), 2, "fresh again for the 304's max-age");
}

#[tokio::test]
async fn last_modified_validates_with_if_modified_since() {
    let lm = http_date(-5000);
    let origin = Origin::new(vec![
        reply(
            200,
            &[
                ("cache-control", "max-age=1"),
                ("age", "5"),
                ("last-modified", &lm),
            ],
            "body",
        ),
        reply(304, &[("cache-control", "max-age=100")], ""),
    ]);
    let proxy = in_front(&origin);
    send(&proxy, get("/r")).await;
    let second = send(&proxy, get("/r")).await;
    assert_eq!(origin.last_request()["if-modified-since"], lm.as_str());
    assert_eq!(second.body, "body #1");
    // A validator the origin does not honour: a whole new response, a miss.
    let origin = Origin::new(vec![
        reply(
            200,
            &[
                ("cache-control", "max-age=1"),
                ("age", "5"),
                ("etag", "\"a\""),
            ],
            "one",
        ),
        reply(
            200,
            &[("cache-control", "max-age=100"), ("etag", "\"b\"")],
            "two",
        ),
    ]);
    let proxy = in_front(&origin);
    send(&proxy, get("/r")).await;
    let replaced = send(&proxy, get("/r")).await;
    assert_eq!(
        (replaced.x_cache(), replaced.body.as_str()),
        ("MISS", "two #2")
    );
}

#[tokio::test]
async fn vary_keeps_one_variant_per_request_value() {
    let origin = Origin::new(vec![reply(
        200,
        &[
            ("cache-control", "max-age=100"),
            ("vary", "Accept-Language"),
        ],
        "b",
    )]);
    let proxy = in_front(&origin);
    let pt = send(&proxy, get_with("/r", &[("accept-language", "pt")])).await;
    let en = send(&proxy, get_with("/r", &[("accept-language", "en")])).await;
    let none = send(&proxy, get("/r")).await;
    assert_eq!(origin.calls(), 3, "three variants");
    let pt_again = send(&proxy, get_with("/r", &[("accept-language", "pt")])).await;
    let en_again = send(&proxy, get_with("/r", &[("accept-language", "en")])).await;
    let none_again = send(&proxy, get("/r")).await;
    assert_eq!(origin.calls(), 3);
    assert_eq!(pt.body, pt_again.body);
    assert_eq!(en.body, en_again.body);
    assert_eq!(none.body, none_again.body);
    assert_ne!(pt.body, en.body);
    // Normalised: whitespace around list commas and split field lines select the same one.
    let origin = Origin::new(vec![reply(
        200,
        &[("cache-control", "max-age=100"), ("vary", "accept")],
        "b",
    )]);
    let proxy = in_front(&origin);
    send(&proxy, get_with("/r", &[("accept", "a/b, c/d")])).await;
    send(&proxy, get_with("/r", &[("accept", "a/b,c/d")])).await;
    send(
        &proxy,
        get_with("/r", &[("accept", "a/b"), ("accept", "c/d")]),
    )
    .await;
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn compression_inside_the_layer_keeps_a_variant_per_encoding() {
    let origin = Origin::new(vec![reply(
        200,
        &[
            ("cache-control", "max-age=100"),
            ("content-type", "text/plain"),
        ],
        &"compressible ".repeat(200),
    )]);
    let service = HttpCacheLayer::new(Cache::<CachedResponse>::in_memory())
        .rfc9111()
        .layer(tower_http::compression::CompressionLayer::new().layer(origin.clone()));
    let call = |encoding: Option<&'static str>| {
        let service = service.clone();
        async move {
            let mut request = get("/r");
            if let Some(encoding) = encoding {
                request
                    .headers_mut()
                    .insert("accept-encoding", encoding.parse().unwrap());
            }
            let response = service.oneshot(request).await.unwrap();
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            (parts.headers, bytes)
        }
    };
    let (gzip_headers, gzip) = call(Some("gzip")).await;
    let (plain_headers, plain) = call(None).await;
    assert_eq!(gzip_headers["content-encoding"], "gzip");
    assert!(!plain_headers.contains_key("content-encoding"));
    let (again_headers, again) = call(Some("gzip")).await;
    let (plain_again_headers, plain_again) = call(None).await;
    assert_eq!(origin.calls(), 2, "one origin call per encoding");
    assert_eq!(
        (again_headers["x-cache"].to_str().unwrap(), &again),
        ("HIT", &gzip)
    );
    assert_eq!(plain_again_headers["x-cache"], "HIT");
    assert_eq!(plain_again, plain);
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_in_the_background() {
    let origin = Origin::new(vec![
        reply(
            200,
            &[
                ("cache-control", "max-age=1, stale-while-revalidate=600"),
                ("age", "5"),
            ],
            "old",
        ),
        reply(200, &[("cache-control", "max-age=100")], "new"),
    ]);
    let proxy = in_front(&origin);
    send(&proxy, get("/r")).await;
    let stale = send(&proxy, get("/r")).await;
    assert_eq!((stale.x_cache(), stale.body.as_str()), ("STALE", "old #1"));
    // The background revalidation lands; wait for it with a generous bound.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = send(&proxy, get("/r")).await;
        if answer.body == "new #2" {
            assert_eq!(answer.x_cache(), "HIT");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn stale_if_error_stands_in_for_an_origin_error_unless_forbidden() {
    for (cache_control, serves_stale) in [
        ("max-age=1, stale-if-error=600", true),
        ("max-age=1, stale-if-error=600, must-revalidate", false),
        ("max-age=1, stale-if-error=600, proxy-revalidate", false),
        ("max-age=1, s-maxage=1, stale-if-error=600", false),
        ("max-age=1", false),
    ] {
        let origin = Origin::new(vec![
            reply(
                200,
                &[("cache-control", cache_control), ("age", "5")],
                "old",
            ),
            reply(503, &[], "down"),
        ]);
        let proxy = in_front(&origin);
        send(&proxy, get("/r")).await;
        let answer = send(&proxy, get("/r")).await;
        if serves_stale {
            assert_eq!(
                (answer.status, answer.body.as_str()),
                (StatusCode::OK, "old #1"),
                "{cache_control}"
            );
            assert_eq!(answer.x_cache(), "STALE");
        } else {
            assert_eq!(
                answer.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{cache_control}"
            );
        }
        // must-revalidate also forbids stale-while-revalidate.
    }
    let origin = Origin::new(vec![
        reply(
            200,
            &[
                (
                    "cache-control",
                    "max-age=1, stale-while-revalidate=600, must-revalidate",
                ),
                ("age", "5"),
            ],
            "old",
        ),
        reply(200, &[("cache-control", "max-age=100")], "new"),
    ]);
    let proxy = in_front(&origin);
    send(&proxy, get("/r")).await;
    assert_eq!(send(&proxy, get("/r")).await.body, "new #2");
}

#[tokio::test]
async fn request_directives_are_honoured() {
    let origin = Origin::new(vec![reply(
        200,
        &[("cache-control", "max-age=100"), ("age", "50")],
        "b",
    )]);
    let proxy = in_front(&origin);
    send(&proxy, get("/r")).await;
    send(&proxy, get_with("/r", &[("cache-control", "max-age=10")])).await;
    assert_eq!(origin.calls(), 2, "max-age=10 refuses a 50 s old response");
    send(&proxy, get_with("/r", &[("cache-control", "no-cache")])).await;
    assert_eq!(origin.calls(), 3);
    send(&proxy, get_with("/r", &[("pragma", "no-cache")])).await;
    assert_eq!(origin.calls(), 4);
    send(&proxy, get_with("/r", &[("cache-control", "min-fresh=90")])).await;
    assert_eq!(origin.calls(), 5);
    let cold = send(
        &proxy,
        get_with("/cold", &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!(cold.status, StatusCode::GATEWAY_TIMEOUT);
    let origin = Origin::new(vec![reply(
        200,
        &[("cache-control", "max-age=1"), ("age", "3")],
        "b",
    )]);
    let proxy = in_front(&origin);
    send(&proxy, get("/r")).await;
    let stale_ok = send(&proxy, get_with("/r", &[("cache-control", "max-stale=60")])).await;
    assert_eq!((origin.calls(), stale_ok.body.as_str()), (1, "b #1"));
}

#[tokio::test]
async fn connection_listed_and_hop_by_hop_headers_are_not_stored() {
    let origin = Origin::new(vec![reply(
        200,
        &[
            ("cache-control", "max-age=100"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("x-kept", "1"),
        ],
        "b",
    )]);
    let proxy = in_front(&origin);
    send(&proxy, get("/r")).await;
    let hit = send(&proxy, get("/r")).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(!hit.headers.contains_key("x-hop"));
    assert!(!hit.headers.contains_key("connection"));
    assert_eq!(hit.header("x-kept"), "1");
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_target_and_its_variants_after_success_only() {
    for (status, invalidates) in [(200, true), (303, true), (500, false), (404, false)] {
        let origin = Origin::new(vec![reply(
            200,
            &[
                ("cache-control", "max-age=100"),
                ("vary", "accept-language"),
            ],
            "b",
        )]);
        let proxy = in_front(&origin);
        send(&proxy, get_with("/r", &[("accept-language", "pt")])).await;
        send(&proxy, get_with("/r", &[("accept-language", "en")])).await;
        origin
            .script
            .lock()
            .unwrap()
            .push_front(reply(status, &[], "posted"));
        origin.script.lock().unwrap().push_back(reply(
            200,
            &[
                ("cache-control", "max-age=100"),
                ("vary", "accept-language"),
            ],
            "b",
        ));
        let post = Request::post("/r").body(String::new()).unwrap();
        assert_eq!(send(&proxy, post).await.status.as_u16(), status);
        let before = origin.calls();
        send(&proxy, get_with("/r", &[("accept-language", "pt")])).await;
        send(&proxy, get_with("/r", &[("accept-language", "en")])).await;
        let refetched = origin.calls() - before;
        assert_eq!(
            refetched,
            if invalidates { 2 } else { 0 },
            "POST answered {status}"
        );
    }
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get_and_never_stored_itself() {
    let origin = Origin::new(vec![reply(
        200,
        &[("cache-control", "max-age=100"), ("x-kind", "r")],
        "body",
    )]);
    let proxy = in_front(&origin);
    // HEAD first: passed on, not stored, so a GET then gets a body.
    let head = send(&proxy, Request::head("/r").body(String::new()).unwrap()).await;
    assert_eq!(head.body, "");
    let get1 = send(&proxy, get("/r")).await;
    assert_eq!((get1.x_cache(), get1.body.as_str()), ("MISS", "body #2"));
    let head = send(&proxy, Request::head("/r").body(String::new()).unwrap()).await;
    assert_eq!(
        (head.x_cache(), head.body.as_str(), head.header("x-kind")),
        ("HIT", "", "r")
    );
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn authorization_is_respected_and_set_cookie_is_kept_with_the_response() {
    // A response to a request with credentials is stored only when it says it may be.
    for (cache_control, stored) in [
        ("max-age=100", false),
        ("max-age=100, public", true),
        ("s-maxage=100", true),
    ] {
        let origin = Origin::new(vec![reply(200, &[("cache-control", cache_control)], "b")]);
        let proxy = in_front(&origin);
        send(&proxy, get_with("/r", &[("authorization", "Bearer a")])).await;
        assert_eq!(
            origin.last_request()["authorization"],
            "Bearer a",
            "credentials reach the origin"
        );
        send(&proxy, get("/r")).await;
        assert_eq!(origin.calls() == 1, stored, "{cache_control}");
    }
    let origin = Origin::new(vec![reply(
        200,
        &[("cache-control", "max-age=100"), ("set-cookie", "a=b")],
        "b",
    )]);
    let proxy = in_front(&origin);
    send(&proxy, get("/r")).await;
    let hit = send(&proxy, get("/r")).await;
    assert_eq!((hit.x_cache(), hit.header("set-cookie")), ("HIT", "a=b"));
}

#[tokio::test]
async fn concurrent_misses_make_one_origin_call() {
    let origin = Origin::new(vec![reply(200, &[("cache-control", "max-age=100")], "b")]);
    let proxy = in_front(&origin);
    let answers = futures_util::future::join_all((0..200).map(|_| send(&proxy, get("/r")))).await;
    assert!(answers.iter().all(|a| a.body == "b #1"));
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_panicking_origin_is_a_500_and_the_next_request_asks_again() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let origin = tower::service_fn(move |_: Request<String>| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            assert!(n > 0, "the first call panics");
            let mut response = Response::new("ok".to_owned());
            response
                .headers_mut()
                .insert("cache-control", "max-age=100".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    });
    let proxy = HttpCacheLayer::new(Cache::<CachedResponse>::in_memory())
        .rfc9111()
        .layer(origin);
    let first = proxy.clone().oneshot(get("/r")).await.unwrap();
    assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let second = proxy.clone().oneshot(get("/r")).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let third = proxy.oneshot(get("/r")).await.unwrap();
    assert_eq!(third.headers()["x-cache"], "HIT");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_ceiling_and_a_default_ttl_bound_what_responses_say() {
    let origin = Origin::new(vec![reply(
        200,
        &[("cache-control", "max-age=100"), ("age", "20")],
        "b",
    )]);
    let proxy = HttpCacheLayer::new(Cache::<CachedResponse>::in_memory())
        .rfc9111()
        .max_ttl(Duration::from_secs(10))
        .layer(origin.clone());
    send(&proxy, get("/r")).await;
    send(&proxy, get("/r")).await;
    assert_eq!(
        origin.calls(),
        2,
        "capped at 10 s, a 20 s old response is stale"
    );
    let origin = Origin::new(vec![reply(200, &[], "silent")]);
    let proxy = HttpCacheLayer::new(Cache::<CachedResponse>::in_memory())
        .rfc9111()
        .ttl(Duration::from_secs(60))
        .ttl_when_unstated()
        .layer(origin.clone());
    send(&proxy, get("/r")).await;
    let hit = send(&proxy, get("/r")).await;
    assert_eq!((origin.calls(), hit.x_cache()), (1, "HIT"));
}

#[tokio::test]
async fn an_invalidation_survives_a_client_that_goes_away() {
    let store = support::faulty::Faulty::new(tower_caching::MemoryStore::new());
    let origin = Origin::new(vec![reply(200, &[("cache-control", "max-age=100")], "b")]);
    let proxy = HttpCacheLayer::new(Cache::<CachedResponse, _>::new(store.clone()))
        .rfc9111()
        .layer(origin.clone());
    send(&proxy, get("/r")).await;
    assert_eq!(send(&proxy, get("/r")).await.x_cache(), "HIT");
    // The invalidation's delete is slow; the client gives up while it runs.
    store
        .faults
        .delete_delays
        .lock()
        .unwrap()
        .push(Duration::from_millis(300));
    let post = proxy
        .clone()
        .oneshot(Request::post("/r").body(String::new()).unwrap());
    assert!(
        tokio::time::timeout(Duration::from_millis(50), post)
            .await
            .is_err()
    );
    support::within(Duration::from_secs(10), async || {
        send(&proxy, get("/r")).await.x_cache() == "MISS"
    })
    .await;
}

#[tokio::test]
async fn location_and_content_location_on_the_same_origin_are_invalidated_too() {
    for (location, invalidated) in [
        ("/other", true),
        ("http://example.com/other", true),
        ("http://elsewhere.example/other", false),
    ] {
        let origin = Origin::new(vec![reply(200, &[("cache-control", "max-age=100")], "b")]);
        let proxy = in_front(&origin);
        let get_other = || get_with("/other", &[("host", "example.com")]);
        send(&proxy, get_other()).await;
        assert_eq!(send(&proxy, get_other()).await.x_cache(), "HIT");
        origin
            .script
            .lock()
            .unwrap()
            .push_front(reply(201, &[("location", location)], "made"));
        let post = Request::post("/r")
            .header("host", "example.com")
            .body(String::new())
            .unwrap();
        send(&proxy, post).await;
        let after = send(&proxy, get_other()).await;
        assert_eq!(
            after.x_cache() == "MISS",
            invalidated,
            "Location: {location}"
        );
    }
    let origin = Origin::new(vec![reply(200, &[("cache-control", "max-age=100")], "b")]);
    let proxy = in_front(&origin);
    send(&proxy, get("/doc")).await;
    origin
        .script
        .lock()
        .unwrap()
        .push_front(reply(200, &[("content-location", "/doc")], "ok"));
    send(&proxy, Request::put("/r").body(String::new()).unwrap()).await;
    assert_eq!(send(&proxy, get("/doc")).await.x_cache(), "MISS");
}
