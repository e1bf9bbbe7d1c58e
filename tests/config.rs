//! Declarative per-route caching: TOML and YAML, environment overrides, errors that name
//! the route and the field, and a router layered from a configuration.
#![cfg(feature = "config")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use tower::ServiceExt;
use tower_caching::Cache;
use tower_caching::config::{CacheConfig, ConfigError};
use tower_caching::http::CachedResponse;
use tower_caching::key::KeyBuilder;

const TOML: &str = r#"
prefix = "svc"

[routes.entry]
path = "/entries/{id}"
strategy = "cache_aside"
key = "entry:{id}"
ttl = "5m"
negative_ttl = "30s"

[routes.config]
path = "/config/{name}"
strategy = "read_through"
key = "config:{name}"
ttl = "1h"
refresh_ahead = 0.1

[routes.vsync]
path = "/vsync"
method = "POST"
strategy = "write_around"
invalidate = ["entry:*", "vsync:*"]
"#;

const YAML: &str = r#"
prefix: svc
routes:
  entry:
    path: /entries/{id}
    strategy: cache_aside
    key: entry:{id}
    ttl: 5m
    negative_ttl: 30s
  config:
    path: /config/{name}
    strategy: read_through
    key: config:{name}
    ttl: 1h
    refresh_ahead: 0.1
  vsync:
    path: /vsync
    method: POST
    strategy: write_around
    invalidate: ["entry:*", "vsync:*"]
"#;

#[test]
fn toml_and_yaml_say_the_same() {
    let toml = CacheConfig::from_toml(TOML).unwrap();
    let yaml = CacheConfig::from_yaml(YAML).unwrap();
    assert_eq!(toml, yaml);
    toml.validate().unwrap();
    assert_eq!(toml.routes.len(), 3);
}

#[test]
fn env_overrides_replace_fields() {
    let vars = [
        ("CACHE_ENTRY_TTL", "10m"),
        ("CACHE_CONFIG_REFRESH_AHEAD", "0.3"),
    ];
    let config = CacheConfig::from_toml(TOML)
        .unwrap()
        .with_overrides("CACHE", |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
    assert_eq!(config.routes["entry"].ttl.as_deref(), Some("10m"));
    assert_eq!(config.routes["config"].refresh_ahead, Some(0.3));
    let bad = CacheConfig::from_toml(TOML)
        .unwrap()
        .with_overrides("CACHE", |name| {
            (name == "CACHE_CONFIG_REFRESH_AHEAD").then(|| "lots".into())
        });
    assert!(
        matches!(
            bad,
            Err(ConfigError::Invalid {
                field: "refresh_ahead",
                ..
            })
        ),
        "{bad:?}"
    );
}

#[test]
fn invalid_configurations_name_the_route_and_the_field() {
    let cases = [
        (
            r#"path = "/e/{id}"
strategy = "cache_asid""#,
            "strategy",
        ),
        (
            r#"path = "/e/{id}"
strategy = "cache_aside"
ttl = "5 fortnights""#,
            "ttl",
        ),
        (
            r#"path = "/e/{id}"
strategy = "cache_aside"
negative_ttl = "0s""#,
            "negative_ttl",
        ),
        (
            r#"path = "/e/{id}"
strategy = "cache_aside"
key = "entry:{uuid}""#,
            "key",
        ),
        (
            r#"path = "/e/{id}"
strategy = "read_through"
refresh_ahead = 1.5"#,
            "refresh_ahead",
        ),
        (
            r#"path = "/e/{id}"
strategy = "cache_aside"
refresh_ahead = 0.2"#,
            "refresh_ahead",
        ),
        (
            r#"path = "/e/{id}"
strategy = "write_around"
method = "POST""#,
            "invalidate",
        ),
        (
            r#"path = "/e/{id}"
strategy = "write_around"
invalidate = ["entry:{id}"]"#,
            "method",
        ),
        (
            r#"path = "/e/{id}"
strategy = "write_behind""#,
            "strategy",
        ),
        (
            r#"path = "e/{id}"
strategy = "cache_aside""#,
            "path",
        ),
        (
            r#"path = "/e/{id}"
strategy = "cache_aside"
statuses = [200, 1000]"#,
            "statuses",
        ),
    ];
    for (route, field) in cases {
        let config = CacheConfig::from_toml(&format!("[routes.broken]\n{route}")).unwrap();
        let error = config.validate().unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(&error, ConfigError::Invalid { route, field: f, .. } if route == "broken" && *f == field),
            "{route:?}: {message}"
        );
        assert!(
            message.contains("route `broken`") && message.contains(field),
            "{message}"
        );
        assert!(config.layer(Cache::in_memory()).is_err());
    }
    // Unknown fields and bad syntax fail to parse.
    assert!(matches!(
        CacheConfig::from_toml(
            "[routes.x]\npath = \"/x\"\nstrategy = \"cache_aside\"\ntll = \"5m\""
        ),
        Err(ConfigError::Parse(_))
    ));
    assert!(matches!(
        CacheConfig::from_yaml("routes: [oops"),
        Err(ConfigError::Parse(_))
    ));
}

#[tokio::test]
async fn a_router_layered_from_configuration() {
    let reads = Arc::new(AtomicU32::new(0));
    let r = reads.clone();
    let cache: Cache<CachedResponse> = Cache::in_memory();
    let config = CacheConfig::from_toml(TOML).unwrap();
    let app = Router::new()
        .route(
            "/entries/{id}",
            get(move |Path(id): Path<String>| {
                let r = r.clone();
                async move {
                    let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                    if id == "missing" {
                        (StatusCode::NOT_FOUND, format!("no {id}"))
                    } else {
                        (StatusCode::OK, format!("{id} read {n}"))
                    }
                }
            }),
        )
        .route("/vsync", post(|| async { StatusCode::OK }))
        .route("/uncached", get(|| async { "plain" }))
        .layer(config.layer(cache.clone()).unwrap());

    let send = |request: Request<Body>| {
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let x_cache = response
                .headers()
                .get("x-cache")
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status(), x_cache)
        }
    };
    let get_req = |path: &str| Request::get(path).body(Body::empty()).unwrap();

    assert_eq!(
        send(get_req("/entries/e1")).await,
        (StatusCode::OK, Some("MISS".into()))
    );
    assert_eq!(
        send(get_req("/entries/e1")).await,
        (StatusCode::OK, Some("HIT".into()))
    );
    // The configured key template and prefix: `svc:entry:e1`.
    assert!(
        cache
            .exists(&KeyBuilder::new().prefix("svc").entry("e1"))
            .await
            .unwrap()
    );
    // negative_ttl caches 404s.
    send(get_req("/entries/missing")).await;
    assert_eq!(
        send(get_req("/entries/missing")).await,
        (StatusCode::NOT_FOUND, Some("HIT".into()))
    );
    // Routes that are not configured pass through.
    assert_eq!(send(get_req("/uncached")).await, (StatusCode::OK, None));
    // write_around on POST /vsync drops `entry:*`.
    send(Request::post("/vsync").body(Body::empty()).unwrap()).await;
    assert_eq!(
        send(get_req("/entries/e1")).await,
        (StatusCode::OK, Some("MISS".into()))
    );
    assert_eq!(reads.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_route_can_take_its_freshness_from_the_response() {
    let config = CacheConfig::from_toml(
        r#"
        [routes.page]
        path = "/pages/{name}"
        strategy = "cache_aside"
        freshness = "response"
        max_ttl = "1m"
    "#,
    )
    .unwrap();
    let app = Router::new()
        .route(
            "/pages/{name}",
            get(|Path(name): Path<String>| async move {
                let cache_control = match name.as_str() {
                    "fresh" => "max-age=600",
                    "uncacheable" => "no-store",
                    _ => "max-age=0",
                };
                ([("cache-control", cache_control)], name)
            }),
        )
        .layer(config.layer(Cache::<CachedResponse>::in_memory()).unwrap());
    let x_cache = |path: &'static str| {
        let app = app.clone();
        async move {
            let response = app
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            response
                .headers()
                .get("x-cache")
                .map(|v| v.to_str().unwrap().to_owned())
        }
    };
    for path in ["/pages/fresh", "/pages/uncacheable", "/pages/stale"] {
        x_cache(path).await;
    }
    assert_eq!(x_cache("/pages/fresh").await.as_deref(), Some("HIT"));
    assert_ne!(x_cache("/pages/uncacheable").await.as_deref(), Some("HIT"));
    assert_ne!(x_cache("/pages/stale").await.as_deref(), Some("HIT"));

    let wrong = CacheConfig::from_toml(
        r#"
        [routes.page]
        path = "/pages/{name}"
        strategy = "cache_aside"
        freshness = "whenever"
    "#,
    )
    .unwrap();
    let error = wrong.validate().unwrap_err().to_string();
    assert!(
        error.contains("page") && error.contains("freshness"),
        "{error}"
    );
    let misplaced = CacheConfig::from_toml(
        r#"
        [routes.page]
        path = "/pages/{name}"
        strategy = "cache_aside"
        max_ttl = "1m"
    "#,
    )
    .unwrap();
    assert!(
        misplaced
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_ttl")
    );
}

#[tokio::test]
async fn a_key_template_route_hands_its_handler_no_query() {
    let config = CacheConfig::from_toml(
        r#"
        [routes.entry]
        path = "/entries/{id}"
        strategy = "cache_aside"
        key = "entry:{id}"
    "#,
    )
    .unwrap();
    let app = Router::new()
        .route(
            "/entries/{id}",
            get(|request: Request<Body>| async move { request.uri().to_string() }),
        )
        .layer(config.layer(Cache::<CachedResponse>::in_memory()).unwrap());
    let body = |path: &'static str| {
        let app = app.clone();
        async move {
            let response = app
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let bytes = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        }
    };
    assert_eq!(body("/entries/e1?callback=evil").await, "/entries/e1");
    assert_eq!(body("/entries/e1").await, "/entries/e1");
}
