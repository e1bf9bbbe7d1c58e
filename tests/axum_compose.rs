//! The layers compose with axum: `Router::route_layer` takes a write-around layer over the
//! router's own routes, with no `HandleErrorLayer` (the error type stays `Infallible`).

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode};
use axum::routing::put;
use tower::ServiceExt;
use tower_caching::key::{Key, KeyBuilder};
use tower_caching::{Cache, CacheLayer};

/// `entry:{id}` from `/entries/{id}`.
fn entry_key(request: &Request<Body>) -> Option<Key> {
    let id = request.uri().path().strip_prefix("/entries/")?;
    Some(KeyBuilder::new().entry(id))
}

#[tokio::test]
async fn write_around_as_an_axum_route_layer() {
    let cache: Cache<String> = Cache::in_memory();
    let keys = KeyBuilder::new();
    cache
        .set(&keys.entry("e1"), &"stale".into(), None)
        .await
        .unwrap();
    cache
        .set(&keys.entry("e2"), &"kept".into(), None)
        .await
        .unwrap();

    let app = Router::new()
        .route(
            "/entries/{id}",
            put(|Path(_id): Path<String>| async { StatusCode::NO_CONTENT }),
        )
        .route_layer(CacheLayer::write_around(cache.clone()).key(entry_key));

    let response = app
        .clone()
        .oneshot(Request::put("/entries/e1").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(cache.get(&keys.entry("e1")).await.unwrap(), None);
    assert_eq!(
        cache.get(&keys.entry("e2")).await.unwrap(),
        Some("kept".into())
    );
}
