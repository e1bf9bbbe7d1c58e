//! The entries service: the original payments directory service's routes, each cached with
//! the strategy the original chose, over a real SQL database.
//!
//! Shared by `main.rs` and by the end-to-end tests (`tests/entries_service.rs`).
#![allow(dead_code)]

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};
use tower_caching::key::{Key, KeyBuilder, Pattern};
use tower_caching::metrics::Metrics;
use tower_caching::store::{CircuitBreaker, RedisConfig, RedisStore, Store};
use tower_caching::strategy::{Invalidation, StreamQueue};
use tower_caching::ttl::{self, Jitter};
use tower_caching::warm::HotKeys;
use tower_caching::{Cache, CacheLayer, Cacheable, LoadError, MemoryStore};
use tower_layer::Layer;

/// The original service's own key kinds, beside the library's shorthands (`entry`,
/// `metrics`, `config`): an application's names live in the application.
pub trait DirectoryKeys {
    /// `vsync:{id}`, a bulk synchronisation.
    fn vsync(&self, id: &str) -> Key;
    /// Every `vsync:*` key.
    fn vsyncs(&self) -> Pattern;
    /// `participant:{ispb}`, a participant's data (the original cached it for 15 minutes).
    fn participant(&self, ispb: &str) -> Key;
}

impl DirectoryKeys for KeyBuilder {
    fn vsync(&self, id: &str) -> Key {
        self.build("vsync", id)
    }

    fn vsyncs(&self) -> Pattern {
        self.pattern("vsync")
    }

    fn participant(&self, ispb: &str) -> Key {
        self.build("participant", ispb)
    }
}

/// A directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub key: String,
    pub key_type: String,
    pub ispb: String,
    pub owner_name: String,
}

/// A participant's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantMetrics {
    pub lookups: u64,
    pub updates: u64,
    pub errors: u64,
}

/// A named configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub name: String,
    pub settings: serde_json::Value,
}

/// Where the cache lives.
#[derive(Clone, Debug)]
pub enum CacheBackend {
    /// The embedded in-memory store.
    Memory,
    /// Redis, single node.
    Redis(RedisConfig),
    /// Redis Cluster (feature `cluster`).
    #[cfg(feature = "cluster")]
    Cluster(tower_caching::store::RedisClusterConfig),
    /// The primary that Redis Sentinels manage (`REDIS_SENTINELS`).
    Sentinel(tower_caching::store::SentinelConfig),
}

/// Everything the service reads from its environment.
#[derive(Clone, Debug)]
pub struct AppConfig {
    pub database_url: String,
    pub cache: CacheBackend,
    pub write_behind_interval: Duration,
    /// Whether write-behind writes queue in a Redis stream, surviving a crash (the default
    /// on Redis; `WRITE_BEHIND_QUEUE=memory` keeps them in process).
    pub durable_write_behind: bool,
    pub key_prefix: String,
    /// Where the hot entries are saved on shutdown, for the next start to warm, with the
    /// in-memory store (on Redis they are saved in Redis).
    pub hot_keys_file: std::path::PathBuf,
    /// How long start-up waits at most for the hot entries to warm.
    pub warm_budget: Duration,
}

impl AppConfig {
    /// `DATABASE_URL`, `REDIS_URL` / `REDIS_ADDR` (+ `REDIS_PASSWORD`, `REDIS_DB`, …),
    /// `REDIS_CLUSTER_NODES`, `REDIS_SENTINELS` (+ `REDIS_SENTINEL_MASTER`),
    /// `REDIS_WRITE_BEHIND_BATCH`, `CACHE_PREFIX`, `HOT_KEYS_FILE`, `WARM_BUDGET`.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let sentinels =
            tower_caching::store::SentinelConfig::from_env().map_err(|e| e.to_string())?;
        let cache = if let Some(cluster) = cluster_backend()? {
            cluster
        } else if let Some(sentinels) = sentinels {
            CacheBackend::Sentinel(sentinels)
        } else if var("REDIS_URL").is_some() || var("REDIS_ADDR").is_some() {
            CacheBackend::Redis(RedisConfig::from_env().map_err(|e| e.to_string())?)
        } else {
            CacheBackend::Memory
        };
        let write_behind_interval = match var("REDIS_WRITE_BEHIND_BATCH") {
            Some(text) => tower_caching::parse_duration(&text).ok_or_else(|| {
                format!("REDIS_WRITE_BEHIND_BATCH has an invalid duration {text:?}")
            })?,
            None => Duration::from_secs(10),
        };
        let durable_write_behind = match var("WRITE_BEHIND_QUEUE").as_deref() {
            None | Some("redis") => !matches!(cache, CacheBackend::Memory),
            Some("memory") => false,
            Some(other) => {
                return Err(format!(
                    "WRITE_BEHIND_QUEUE is {other:?}; expected `redis` or `memory`"
                ));
            }
        };
        let warm_budget = match var("WARM_BUDGET") {
            Some(text) => tower_caching::parse_duration(&text)
                .ok_or_else(|| format!("WARM_BUDGET has an invalid duration {text:?}"))?,
            None => Duration::from_secs(5),
        };
        Ok(AppConfig {
            database_url: var("DATABASE_URL").unwrap_or_else(|| "sqlite://entries.db".into()),
            cache,
            write_behind_interval,
            durable_write_behind,
            key_prefix: var("CACHE_PREFIX").unwrap_or_default(),
            hot_keys_file: var("HOT_KEYS_FILE")
                .unwrap_or_else(|| "entries.hot.json".into())
                .into(),
            warm_budget,
        })
    }
}

/// `REDIS_CLUSTER_NODES`, when set.
#[cfg(feature = "cluster")]
fn cluster_backend() -> Result<Option<CacheBackend>, String> {
    let config = tower_caching::store::RedisClusterConfig::from_env().map_err(|e| e.to_string())?;
    Ok(config.map(CacheBackend::Cluster))
}

/// `REDIS_CLUSTER_NODES`, when set: refused without the `cluster` feature.
#[cfg(not(feature = "cluster"))]
fn cluster_backend() -> Result<Option<CacheBackend>, String> {
    match std::env::var("REDIS_CLUSTER_NODES") {
        Ok(nodes) if !nodes.trim().is_empty() => Err(
            "REDIS_CLUSTER_NODES is set: build with `--features cluster` for Redis Cluster".into(),
        ),
        _ => Ok(None),
    }
}

/// A database error, shareable between the requests a coalesced load answers.
#[derive(Clone, Debug)]
pub struct DbError(Arc<sqlx::Error>);

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "database: {}", self.0)
    }
}

impl std::error::Error for DbError {}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> Self {
        DbError(Arc::new(error))
    }
}

// The repository's requests.
#[derive(Clone, Debug)]
pub struct GetEntry(pub String);
#[derive(Clone, Debug)]
pub struct CreateEntry(pub Entry);
#[derive(Clone, Debug)]
pub struct GetMetrics(pub String);
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateMetrics {
    pub ispb: String,
    pub metrics: ParticipantMetrics,
}
#[derive(Clone, Debug)]
pub struct GetConfig(pub String);
#[derive(Clone, Debug)]
pub struct Vsync(pub Vec<Entry>);

/// The repository: one `tower::Service` per query, over a connection pool.
#[derive(Clone)]
pub struct Database {
    pool: AnyPool,
}

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS entries (
        id TEXT PRIMARY KEY, key TEXT NOT NULL, key_type TEXT NOT NULL,
        ispb TEXT NOT NULL, owner_name TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS participant_metrics (
        ispb TEXT PRIMARY KEY, lookups BIGINT NOT NULL, updates BIGINT NOT NULL,
        errors BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS configs (name TEXT PRIMARY KEY, settings TEXT NOT NULL)",
];

impl Database {
    /// Connects (creating an SQLite file if needed) and migrates.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let url = if url.starts_with("sqlite:") && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
        } else {
            url.to_owned()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if url.starts_with("sqlite:") { 1 } else { 10 })
            .connect(&url)
            .await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        sqlx::query(
            "INSERT INTO configs (name, settings) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind("default")
        .bind(r#"{"max_keys_per_participant":20,"sync_interval_seconds":300}"#)
        .execute(&pool)
        .await?;
        Ok(Database { pool })
    }

    pub async fn entry(&self, id: &str) -> Result<Option<Entry>, DbError> {
        let row =
            sqlx::query("SELECT id, key, key_type, ispb, owner_name FROM entries WHERE id = $1")
                .bind(id.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|row| Entry {
            id: row.get(0),
            key: row.get(1),
            key_type: row.get(2),
            ispb: row.get(3),
            owner_name: row.get(4),
        }))
    }

    pub async fn metrics(&self, ispb: &str) -> Result<Option<ParticipantMetrics>, DbError> {
        let row =
            sqlx::query("SELECT lookups, updates, errors FROM participant_metrics WHERE ispb = $1")
                .bind(ispb.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|row| ParticipantMetrics {
            lookups: row.get::<i64, _>(0) as u64,
            updates: row.get::<i64, _>(1) as u64,
            errors: row.get::<i64, _>(2) as u64,
        }))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, DbError>> + Send>>;

macro_rules! repository {
    ($request:ty => $response:ty, |$db:ident, $req:ident| $body:expr) => {
        impl Service<$request> for Database {
            type Response = $response;
            type Error = DbError;
            type Future = BoxFuture<$response>;

            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DbError>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, $req: $request) -> Self::Future {
                let $db = self.clone();
                Box::pin(async move { $body })
            }
        }
    };
}

repository!(GetEntry => Option<Entry>, |db, req| db.entry(&req.0).await);

repository!(CreateEntry => Entry, |db, req| {
    let e = req.0;
    sqlx::query(
        "INSERT INTO entries (id, key, key_type, ispb, owner_name) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET key = excluded.key, key_type = excluded.key_type,
         ispb = excluded.ispb, owner_name = excluded.owner_name",
    )
    .bind(e.id.clone())
    .bind(e.key.clone())
    .bind(e.key_type.clone())
    .bind(e.ispb.clone())
    .bind(e.owner_name.clone())
    .execute(&db.pool)
    .await?;
    Ok(e)
});

repository!(GetMetrics => Option<ParticipantMetrics>, |db, req| db.metrics(&req.0).await);

repository!(UpdateMetrics => (), |db, req| {
    let m = req.metrics;
    sqlx::query(
        "INSERT INTO participant_metrics (ispb, lookups, updates, errors) VALUES ($1, $2, $3, $4)
         ON CONFLICT (ispb) DO UPDATE SET lookups = excluded.lookups,
         updates = excluded.updates, errors = excluded.errors",
    )
    .bind(req.ispb)
    .bind(m.lookups as i64)
    .bind(m.updates as i64)
    .bind(m.errors as i64)
    .execute(&db.pool)
    .await?;
    Ok(())
});

repository!(GetConfig => Option<Config>, |db, req| {
    let row = sqlx::query("SELECT name, settings FROM configs WHERE name = $1")
        .bind(req.0)
        .fetch_optional(&db.pool)
        .await?;
    row.map(|row| {
        let settings: String = row.get(1);
        let settings = serde_json::from_str(&settings)
            .map_err(|e| DbError(Arc::new(sqlx::Error::Decode(Box::new(e)))))?;
        Ok(Config { name: row.get(0), settings })
    })
    .transpose()
});

repository!(Vsync => usize, |db, req| {
    let mut tx = db.pool.begin().await?;
    for e in &req.0 {
        sqlx::query(
            "INSERT INTO entries (id, key, key_type, ispb, owner_name) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET key = excluded.key, key_type = excluded.key_type,
             ispb = excluded.ispb, owner_name = excluded.owner_name",
        )
        .bind(e.id.clone())
        .bind(e.key.clone())
        .bind(e.key_type.clone())
        .bind(e.ispb.clone())
        .bind(e.owner_name.clone())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(req.0.len())
});

/// The cached services the handlers call.
#[derive(Clone)]
struct Services {
    get_entry: BoxCloneSyncService<GetEntry, Option<Entry>, LoadError<DbError>>,
    create_entry: BoxCloneSyncService<CreateEntry, Entry, DbError>,
    get_metrics: BoxCloneSyncService<GetMetrics, Option<ParticipantMetrics>, LoadError<DbError>>,
    update_metrics: BoxCloneSyncService<UpdateMetrics, (), DbError>,
    get_config: BoxCloneSyncService<GetConfig, Option<Config>, LoadError<DbError>>,
    vsync: BoxCloneSyncService<Vsync, usize, DbError>,
    registry: prometheus::Registry,
}

/// Closes the caches: flushes queued write-behind writes.
type Closer = Box<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// The service, built.
pub struct App {
    router: Router,
    database: Database,
    closers: Vec<Closer>,
    description: String,
}

impl App {
    /// Connects the database and the cache and builds the router.
    pub async fn build(
        config: AppConfig,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let database = Database::connect(&config.database_url).await?;
        let registry = prometheus::Registry::new();
        let metrics = Metrics::builder()
            .namespace("conn_dict")
            .register(&registry)?;
        let (services, closers, warm_up, cache) = match &config.cache {
            CacheBackend::Memory => {
                let (s, c, w) = services(
                    MemoryStore::new(),
                    WriteBehindQueue::Memory,
                    &database,
                    &config,
                    metrics,
                    registry,
                );
                (s, c, w, "memory".to_string())
            }
            CacheBackend::Redis(redis) => {
                // Lazy: the service starts, and answers from the database, while Redis is down;
                // the breaker stops paying command timeouts while it stays down.
                let redis_store = RedisStore::connect_lazy(redis.clone())?;
                let store = CircuitBreaker::builder(redis_store)
                    .metrics(&metrics)
                    .build();
                // The queue's commands pass the cache's breaker too.
                let queue = if config.durable_write_behind {
                    WriteBehindQueue::Redis(StreamQueue::new(&store, &metrics_queue(&config)))
                } else {
                    WriteBehindQueue::Memory
                };
                let (s, c, w) = services(store, queue, &database, &config, metrics, registry);
                (
                    s,
                    c,
                    w,
                    format!(
                        "redis {}",
                        redis.url().rsplit('@').next().unwrap_or_default()
                    ),
                )
            }
            #[cfg(feature = "cluster")]
            CacheBackend::Cluster(cluster) => {
                let nodes = cluster.nodes().join(",");
                let store =
                    tower_caching::store::RedisClusterStore::connect(cluster.clone()).await?;
                let store = CircuitBreaker::builder(store).metrics(&metrics).build();
                let queue = if config.durable_write_behind {
                    WriteBehindQueue::Cluster(StreamQueue::new(&store, &metrics_queue(&config)))
                } else {
                    WriteBehindQueue::Memory
                };
                let (s, c, w) = services(store, queue, &database, &config, metrics, registry);
                (s, c, w, format!("redis cluster {nodes}"))
            }
            CacheBackend::Sentinel(sentinels) => {
                let description = format!(
                    "redis primary {:?} of sentinels {}",
                    sentinels.master(),
                    sentinels.sentinels().join(",")
                );
                // Lazy, as on a single node: the service starts while the sentinels are down.
                let store = RedisStore::connect_sentinel_lazy(sentinels.clone())?;
                let store = CircuitBreaker::builder(store).metrics(&metrics).build();
                let queue = if config.durable_write_behind {
                    WriteBehindQueue::Redis(StreamQueue::new(&store, &metrics_queue(&config)))
                } else {
                    WriteBehindQueue::Memory
                };
                let (s, c, w) = services(store, queue, &database, &config, metrics, registry);
                (s, c, w, description)
            }
        };
        // Ready once the hot entries are warm, or the budget is spent.
        let warmed = warm_up.await;
        tracing::info!(
            cached = warmed.cached,
            loaded = warmed.loaded,
            failed = warmed.failed,
            stopped_at_budget = warmed.stopped_at_budget,
            "hot entries warmed"
        );
        let router = Router::new()
            .route("/entries", post(create_entry))
            .route("/entries/{id}", get(get_entry))
            .route(
                "/participants/{ispb}/metrics",
                get(get_metrics).put(update_metrics),
            )
            .route("/config/{name}", get(get_config))
            .route("/vsync", post(vsync))
            .route("/metrics", get(metrics_text))
            .with_state(services);
        let description = format!("cache: {cache}, database: {}", redact(&config.database_url));
        Ok(App {
            router,
            database,
            closers,
            description,
        })
    }

    /// The router.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// What the service runs on, for the start-up line.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Flushes every queued write-behind write to the database, then closes the caches and
    /// the pool.
    /// Closes every cache (flushing the write-behind queues) and the database; whether
    /// every cache closed cleanly.
    pub async fn shutdown(&self) -> bool {
        let mut clean = true;
        for close in &self.closers {
            clean &= close().await;
        }
        self.database.close().await;
        clean
    }
}

fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        _ => url.to_owned(),
    }
}

fn closer<V: Cacheable, S: Store>(cache: &Cache<V, S>) -> Closer {
    let cache = cache.clone();
    Box::new(move || {
        let cache = cache.clone();
        Box::pin(async move {
            match cache.close().await {
                Ok(written) => {
                    tracing::info!(written, "cache closed");
                    true
                }
                Err(error) => {
                    tracing::error!(%error, "cache close failed");
                    false
                }
            }
        })
    })
}

/// The stream the participant-metrics writes queue in, when durable: one per key prefix, so
/// that applications sharing a Redis keep their queues apart.
fn metrics_queue(config: &AppConfig) -> String {
    format!("{}participant-metrics", config.key_prefix)
}

/// Where write-behind writes wait for the database.
enum WriteBehindQueue {
    Memory,
    Redis(StreamQueue),
    #[cfg(feature = "cluster")]
    Cluster(StreamQueue<redis::cluster_async::ClusterConnection>),
}

fn services<S: Store>(
    store: S,
    queue: WriteBehindQueue,
    database: &Database,
    config: &AppConfig,
    metrics: Metrics,
    registry: prometheus::Registry,
) -> (Services, Vec<Closer>, WarmUp) {
    let cache = |metrics: &Metrics| Cache::builder(store.clone()).metrics(metrics.clone());
    // The entries read most are saved on shutdown (and every minute), and warmed at the
    // next start: in the store when it outlives the process, else in a file.
    let hot = HotKeys::new(&format!("{}entries", config.key_prefix));
    let hot = if matches!(config.cache, CacheBackend::Memory) {
        hot.file(&config.hot_keys_file)
    } else {
        hot
    };
    let entries: Cache<Option<Entry>, S> = cache(&metrics).hot_keys(hot).build();
    // A view of the same cache, not a second one: a write then voids the reads' loads in
    // flight of its key, which would otherwise store the row it replaced after it.
    let created: Cache<Entry, S> = entries.typed();
    let participant_metrics: Cache<ParticipantMetrics, S> = cache(&metrics).build();
    // A view of the write-behind cache: its reads see metrics still queued for the database.
    let metrics_reads: Cache<Option<ParticipantMetrics>, S> = participant_metrics.typed();
    let configs: Cache<Option<Config>, S> = cache(&metrics).build();
    let keys = KeyBuilder::new().prefix(&config.key_prefix);

    let get_entry = CacheLayer::cache_aside(entries.clone())
        .key({
            let keys = keys.clone();
            move |req: &GetEntry| keys.entry(&req.0)
        })
        .ttl(Jitter::new(ttl::ENTRY, 0.1))
        .not_found(Option::is_none)
        // On Redis, every instance's misses of a cold entry make one database query in all.
        .share_loads_across_instances(Duration::from_secs(5))
        .layer(database.clone());
    let create_entry = CacheLayer::write_through(created.clone())
        .key({
            let keys = keys.clone();
            move |req: &CreateEntry| keys.entry(&req.0.id)
        })
        .ttl(Jitter::new(ttl::ENTRY, 0.1))
        .layer(database.clone());
    let update_metrics = CacheLayer::write_behind(participant_metrics.clone())
        .key({
            let keys = keys.clone();
            move |req: &UpdateMetrics| keys.metrics(&req.ispb)
        })
        .value(|req: &UpdateMetrics| Some(req.metrics.clone()))
        .ttl(Jitter::new(ttl::METRICS, 0.1))
        .batch_interval(config.write_behind_interval);
    // Each queue's worker starts now: a durable one writes at once what a crashed instance
    // left in the stream.
    let update_metrics = match queue {
        WriteBehindQueue::Memory => {
            let service = update_metrics.layer(database.clone());
            service.start();
            BoxCloneSyncService::new(service)
        }
        WriteBehindQueue::Redis(queue) => {
            let service = update_metrics.durable(queue).layer(database.clone());
            service.start();
            BoxCloneSyncService::new(service)
        }
        #[cfg(feature = "cluster")]
        WriteBehindQueue::Cluster(queue) => {
            let service = update_metrics.durable(queue).layer(database.clone());
            service.start();
            BoxCloneSyncService::new(service)
        }
    };
    let get_metrics = CacheLayer::cache_aside(metrics_reads.clone())
        .key({
            let keys = keys.clone();
            move |req: &GetMetrics| keys.metrics(&req.0)
        })
        .ttl(Jitter::new(ttl::METRICS, 0.1))
        .not_found(Option::is_none)
        .layer(database.clone());
    let get_config = CacheLayer::read_through(configs.clone())
        .key({
            let keys = keys.clone();
            move |req: &GetConfig| keys.config(&req.0)
        })
        .ttl(Jitter::new(ttl::CONFIG, 0.1))
        .refresh_ahead(0.1)
        .not_found(Option::is_none)
        .layer(database.clone());
    let vsync = CacheLayer::write_around(entries.clone())
        .invalidate({
            let keys = keys.clone();
            move |req: &Vsync| {
                Invalidation::new()
                    .keys(req.0.iter().map(|e| keys.entry(&e.id)))
                    .pattern(keys.vsyncs())
            }
        })
        .layer(database.clone());

    let services = Services {
        get_entry: BoxCloneSyncService::new(get_entry),
        create_entry: BoxCloneSyncService::new(create_entry),
        get_metrics: BoxCloneSyncService::new(get_metrics),
        update_metrics,
        get_config: BoxCloneSyncService::new(get_config),
        vsync: BoxCloneSyncService::new(vsync),
        registry,
    };
    let warm_up: WarmUp = {
        let (database, budget) = (database.clone(), config.warm_budget);
        let warm = entries.warm_hot_keys(Some(ttl::ENTRY), move |key: Key| {
            let (database, id) = (database.clone(), keys.part_of("entry", &key));
            async move {
                match id {
                    Some(id) => database.entry(&id).await.map_err(|e| e.to_string()),
                    None => Err(format!("{key} is not an entry key")),
                }
            }
        });
        Box::pin(warm.budget(budget).into_future())
    };
    // The write-behind cache first: its close flushes the queue to the database.
    let closers = vec![
        closer(&participant_metrics),
        closer(&entries),
        closer(&created),
        closer(&configs),
    ];
    (services, closers, warm_up)
}

/// The warm-up of the hot entries, awaited before the service answers.
type WarmUp = Pin<Box<dyn Future<Output = tower_caching::warm::WarmReport> + Send>>;

/// Maps a database failure (or a panicked load) to a 500 with a JSON body.
fn internal(error: impl fmt::Display) -> Response {
    tracing::error!(%error, "request failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": error.to_string() })),
    )
        .into_response()
}

fn found<T: Serialize>(value: Option<T>) -> Response {
    match value {
        Some(value) => Json(value).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn get_entry(State(s): State<Services>, Path(id): Path<String>) -> Response {
    match s.get_entry.oneshot(GetEntry(id)).await {
        Ok(entry) => found(entry),
        Err(e) => internal(e),
    }
}

async fn create_entry(State(s): State<Services>, Json(entry): Json<Entry>) -> Response {
    match s.create_entry.oneshot(CreateEntry(entry)).await {
        Ok(entry) => (StatusCode::CREATED, Json(entry)).into_response(),
        Err(e) => internal(e),
    }
}

async fn update_metrics(
    State(s): State<Services>,
    Path(ispb): Path<String>,
    Json(metrics): Json<ParticipantMetrics>,
) -> Response {
    match s
        .update_metrics
        .oneshot(UpdateMetrics { ispb, metrics })
        .await
    {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => internal(e),
    }
}

async fn get_metrics(State(s): State<Services>, Path(ispb): Path<String>) -> Response {
    match s.get_metrics.oneshot(GetMetrics(ispb)).await {
        Ok(metrics) => found(metrics),
        Err(e) => internal(e),
    }
}

async fn get_config(State(s): State<Services>, Path(name): Path<String>) -> Response {
    match s.get_config.oneshot(GetConfig(name)).await {
        Ok(config) => found(config),
        Err(e) => internal(e),
    }
}

async fn vsync(State(s): State<Services>, Json(entries): Json<Vec<Entry>>) -> Response {
    match s.vsync.oneshot(Vsync(entries)).await {
        Ok(count) => Json(serde_json::json!({ "count": count })).into_response(),
        Err(e) => internal(e),
    }
}

async fn metrics_text(State(s): State<Services>) -> Result<Response, Infallible> {
    use prometheus::Encoder;
    let mut text = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(error) = encoder.encode(&s.registry.gather(), &mut text) {
        return Ok((StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response());
    }
    Ok((
        [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
        text,
    )
        .into_response())
}
