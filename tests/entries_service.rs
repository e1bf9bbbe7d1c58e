//! End to end: the flagship example's router over real HTTP, on a temporary SQLite file,
//! with a spawned redis-server (or the in-memory store), including a graceful shutdown with
//! queued write-behind writes and a Redis killed in the middle of the traffic.
#![cfg(all(feature = "redis", feature = "metrics"))]

#[path = "../examples/entries_service/app.rs"]
mod app;
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use app::{App, AppConfig, CacheBackend, Database, Entry, ParticipantMetrics};
use reqwest::StatusCode;
use serde_json::json;
use support::RedisServer;
use tower_caching::store::RedisConfig;

/// A temporary SQLite file, removed on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> Self {
        TempDb(std::env::temp_dir().join(format!("{}.db", support::unique_prefix(name))))
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", ".hot.json"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// The example, served on a free loopback port.
struct Running {
    app: std::sync::Arc<App>,
    base: String,
    client: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

async fn start(
    database_url: String,
    cache: CacheBackend,
    write_behind: Duration,
    prefix: &str,
) -> Running {
    let app = App::build(AppConfig {
        // The hot-entry snapshot beside the database (with the in-memory store).
        hot_keys_file: format!("{}.hot.json", database_url.trim_start_matches("sqlite://")).into(),
        warm_budget: Duration::from_secs(5),
        database_url,
        // On Redis, write-behind queues in a Redis stream, as the example does by default.
        durable_write_behind: !matches!(cache, CacheBackend::Memory),
        cache,
        write_behind_interval: write_behind,
        key_prefix: prefix.to_owned(),
    })
    .await
    .expect("the example builds");
    let app = std::sync::Arc::new(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = app.router();
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Running {
        app,
        base,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
        server,
    }
}

fn entry(id: &str, owner: &str) -> Entry {
    Entry {
        id: id.into(),
        key: format!("+55119{id}"),
        key_type: "PHONE".into(),
        ispb: "12345678".into(),
        owner_name: owner.into(),
    }
}

impl Running {
    async fn get(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> (StatusCode, String) {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    }
}

async fn every_route(running: &Running) {
    let e1 = entry("e1", "Ana");
    assert_eq!(running.get("/entries/e1").await.0, StatusCode::NOT_FOUND);
    let (status, body) = running
        .send(reqwest::Method::POST, "/entries", json!(e1))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(serde_json::from_str::<Entry>(&body).unwrap(), e1);

    let hits = r#"conn_dict_cache_hits_total{strategy="cache_aside"}"#;
    let before = running.metric(hits).await;
    let (status, body) = running.get("/entries/e1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Entry>(&body).unwrap(), e1);
    // Write-through put it in the cache: this read was a hit.
    assert_eq!(running.metric(hits).await, before + 1.0);

    let metrics = ParticipantMetrics {
        lookups: 7,
        updates: 2,
        errors: 1,
    };
    let (status, _) = running
        .send(
            reqwest::Method::PUT,
            "/participants/12345678/metrics",
            json!(metrics),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = running.get("/participants/12345678/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<ParticipantMetrics>(&body).unwrap(),
        metrics
    );
    assert_eq!(
        running.get("/participants/99999999/metrics").await.0,
        StatusCode::NOT_FOUND
    );

    let (status, body) = running.get("/config/default").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("max_keys_per_participant"), "{body}");
    assert_eq!(running.get("/config/absent").await.0, StatusCode::NOT_FOUND);

    let bulk = json!([entry("e1", "Bia"), entry("e2", "Caio")]);
    let (status, body) = running.send(reqwest::Method::POST, "/vsync", bulk).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, r#"{"count":2}"#);
    // Write-around invalidated entry:e1: the next read reloads the new owner.
    let (_, body) = running.get("/entries/e1").await;
    assert_eq!(
        serde_json::from_str::<Entry>(&body).unwrap(),
        entry("e1", "Bia")
    );
    let (_, body) = running.get("/entries/e2").await;
    assert_eq!(
        serde_json::from_str::<Entry>(&body).unwrap(),
        entry("e2", "Caio")
    );

    let (status, bad) = running
        .send(reqwest::Method::POST, "/entries", json!({"id": 1}))
        .await;
    assert!(status.is_client_error(), "{status} {bad}");

    let (status, text) = running.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for name in [
        "conn_dict_cache_hits_total",
        "conn_dict_cache_misses_total",
        "conn_dict_cache_operation_duration_seconds_bucket",
        "conn_dict_cache_write_behind_queue_size",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_on_redis() {
    let redis = RedisServer::spawn();
    let db = TempDb::new("every-route-redis");
    let running = start(
        db.url(),
        CacheBackend::Redis(RedisConfig::new(redis.url())),
        Duration::from_secs(10),
        "svc",
    )
    .await;
    every_route(&running).await;
    // The keys carry the prefix, and the values are in Redis.
    let mut raw = support::raw_connection(&redis.url()).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg("svc:entry:e2")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(exists);
    running.app.shutdown().await;
    running.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_memory() {
    let db = TempDb::new("every-route-memory");
    let running = start(db.url(), CacheBackend::Memory, Duration::from_secs(10), "").await;
    every_route(&running).await;
    running.app.shutdown().await;
    running.server.abort();
}

/// The flagship's warm start, on the embedded default: the entries read most are saved on
/// shutdown, warmed at the next start before it answers, and its first reads of them are
/// cache hits, not database reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_service_answers_its_hot_entries_from_cache() {
    let db = TempDb::new("warm-restart");
    let running = start(db.url(), CacheBackend::Memory, Duration::from_secs(10), "").await;
    for i in 0..5 {
        let (status, _) = running
            .send(
                reqwest::Method::POST,
                "/entries",
                json!(entry(&format!("e{i}"), "Ana")),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        for _ in 0..3 {
            assert_eq!(
                running.get(&format!("/entries/e{i}")).await.0,
                StatusCode::OK
            );
        }
    }
    running.app.shutdown().await;
    running.server.abort();

    let restarted = start(db.url(), CacheBackend::Memory, Duration::from_secs(10), "").await;
    let warmed = r#"conn_dict_cache_warmed_keys_total{outcome="loaded"}"#;
    assert_eq!(restarted.metric(warmed).await, 5.0);
    let hits = r#"conn_dict_cache_hits_total{strategy="cache_aside"}"#;
    let misses = r#"conn_dict_cache_misses_total{strategy="cache_aside"}"#;
    let (hits_before, misses_before) =
        (restarted.metric(hits).await, restarted.metric(misses).await);
    for i in 0..5 {
        let (status, body) = restarted.get(&format!("/entries/e{i}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(restarted.metric(hits).await, hits_before + 5.0);
    assert_eq!(restarted.metric(misses).await, misses_before);
    restarted.app.shutdown().await;
    restarted.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_every_acknowledged_metrics_update() {
    let redis = RedisServer::spawn();
    let db = TempDb::new("shutdown");
    let running = start(
        db.url(),
        CacheBackend::Redis(RedisConfig::new(redis.url())),
        Duration::from_secs(60),
        "",
    )
    .await;
    // The durable queue's worker makes a first round as it starts (to write what crashed
    // instances left): let it finish, so that the writes below wait for the batch.
    let mut raw = support::raw_connection(&redis.url()).await;
    let stream = "tower-caching:wb:{participant-metrics}";
    for _ in 0..100 {
        let groups: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut raw)
            .await;
        if groups.is_ok_and(|groups| !groups.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..50u64 {
        let metrics = ParticipantMetrics {
            lookups: i,
            updates: i * 2,
            errors: 0,
        };
        let (status, _) = running
            .send(
                reqwest::Method::PUT,
                &format!("/participants/{:08}/metrics", i % 20),
                json!(metrics),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let database = Database::connect(&db.url()).await.unwrap();
    assert_eq!(
        database.metrics("00000000").await.unwrap(),
        None,
        "written before the batch"
    );
    running.server.abort();
    running.app.shutdown().await;
    for ispb in 0..20u64 {
        let last = (30..50).find(|i| i % 20 == ispb).unwrap();
        let written = database.metrics(&format!("{ispb:08}")).await.unwrap();
        assert_eq!(
            written,
            Some(ParticipantMetrics {
                lookups: last,
                updates: last * 2,
                errors: 0
            })
        );
    }
    database.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_keeps_answering_while_redis_is_down() {
    let mut redis = RedisServer::spawn();
    let db = TempDb::new("redis-down");
    let config = RedisConfig::new(redis.url())
        .command_timeout(Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(200));
    let running = start(
        db.url(),
        CacheBackend::Redis(config),
        Duration::from_millis(200),
        "",
    )
    .await;
    let (status, _) = running
        .send(reqwest::Method::POST, "/entries", json!(entry("e1", "Ana")))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    redis.kill();
    let slowest = |started: Instant, route: &str| {
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "{route} took {took:?} with Redis down"
        );
    };
    for round in 0..3 {
        let started = Instant::now();
        let (status, body) = running.get("/entries/e1").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        slowest(started, "GET /entries/{id}");

        let started = Instant::now();
        let id = format!("down{round}");
        let (status, _) = running
            .send(reqwest::Method::POST, "/entries", json!(entry(&id, "Bia")))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        slowest(started, "POST /entries");

        let started = Instant::now();
        let metrics = ParticipantMetrics {
            lookups: round,
            updates: 0,
            errors: 0,
        };
        let (status, _) = running
            .send(
                reqwest::Method::PUT,
                "/participants/11111111/metrics",
                json!(metrics),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        slowest(started, "PUT /participants/{ispb}/metrics");

        let started = Instant::now();
        assert_eq!(running.get("/config/default").await.0, StatusCode::OK);
        slowest(started, "GET /config/{name}");

        let started = Instant::now();
        let (status, _) = running
            .send(reqwest::Method::POST, "/vsync", json!([entry(&id, "Caio")]))
            .await;
        assert_eq!(status, StatusCode::OK);
        slowest(started, "POST /vsync");

        let started = Instant::now();
        let (status, body) = running.get(&format!("/entries/{id}")).await;
        assert_eq!(
            serde_json::from_str::<Entry>(&body).unwrap(),
            entry(&id, "Caio"),
            "{status}"
        );
        slowest(started, "GET /entries/{id} after vsync");
    }
    // Writes went to the database all along, write-behind included.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let database = Database::connect(&db.url()).await.unwrap();
    assert_eq!(
        database
            .metrics("11111111")
            .await
            .unwrap()
            .map(|m| m.lookups),
        Some(2)
    );
    assert_eq!(
        database.entry("down2").await.unwrap(),
        Some(entry("down2", "Caio"))
    );

    // Redis back: caching resumes by itself.
    redis.restart();
    let hits = r#"conn_dict_cache_hits_total{strategy="cache_aside"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = running.metric(hits).await;
        running.get("/entries/e1").await;
        running.get("/entries/e1").await;
        if running.metric(hits).await > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "caching did not resume after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    database.close().await;
    running.app.shutdown().await;
    running.server.abort();
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_on_a_redis_cluster() {
    let db = TempDb::new("every-route-cluster");
    let config = tower_caching::store::RedisClusterConfig::new(support::shared_cluster().to_vec())
        .connect_timeout(Duration::from_secs(5))
        .command_timeout(Duration::from_secs(1));
    let prefix = support::unique_prefix("svc");
    let running = start(
        db.url(),
        CacheBackend::Cluster(config),
        Duration::from_secs(10),
        &prefix,
    )
    .await;
    every_route(&running).await;
    running.app.shutdown().await;
    running.server.abort();
}
