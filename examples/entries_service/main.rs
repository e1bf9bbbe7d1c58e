//! The flagship example: the original payments directory service's routes over a real SQL
//! database, each cached with its strategy.
//!
//! ```text
//! cargo run -p entries-service                  # SQLite file entries.db, in-memory cache
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p entries-service
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run -p entries-service --features postgres
//! ```
//!
//! (`cargo run --example entries_service` runs the same program, but builds every test and
//! bench dependency of the crate first.)
//!
//! | route | strategy | key | TTL |
//! |---|---|---|---|
//! | `GET /entries/{id}` | cache-aside | `entry:{id}` | 5 min |
//! | `POST /entries` | write-through | `entry:{id}` | 5 min |
//! | `PUT /participants/{ispb}/metrics` | write-behind (202 at once) | `metrics:{ispb}` | 10 min |
//! | `GET /participants/{ispb}/metrics` | cache-aside | `metrics:{ispb}` | 10 min |
//! | `GET /config/{name}` | read-through, refresh-ahead | `config:{name}` | 1 h |
//! | `POST /vsync` | write-around | invalidates `entry:{id}`, `vsync:*` | — |
//! | `GET /metrics` | Prometheus text, namespace `conn_dict` | | |
//!
//! Environment: `DATABASE_URL` (default `sqlite://entries.db`), `REDIS_CLUSTER_NODES` (with
//! `--features cluster`), `REDIS_SENTINELS` (+ `REDIS_SENTINEL_MASTER`, default `mymaster`,
//! and `REDIS_SENTINEL_PASSWORD`), `REDIS_URL` or `REDIS_ADDR`
//! (+ `REDIS_PASSWORD`, `REDIS_DB`; otherwise the in-memory store), `REDIS_WRITE_BEHIND_BATCH`
//! (default `10s`), `WRITE_BEHIND_QUEUE` (`redis`, the default when Redis is configured: the
//! queue is a Redis stream and survives a crash; or `memory`), `CACHE_PREFIX`, `BIND_ADDR`
//! (default `127.0.0.1:3000`).
//!
//! The entries read most are tracked, saved on shutdown (and every minute) — in Redis, or
//! with the in-memory store in `HOT_KEYS_FILE` (default `entries.hot.json`) — and warmed at
//! the next start before it answers, for at most `WARM_BUDGET` (default `5s`): a restarted
//! instance answers its hot entries from cache from its first requests.
//!
//! SIGINT or SIGTERM stops accepting requests, flushes the write-behind queue to the
//! database and exits 0. With the Redis queue, even `kill -9` loses no acknowledged write:
//! the next instance to start writes what was queued.

mod app;

use std::process::ExitCode;

use app::{App, AppConfig};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("entries_service: {error}");
            let database = std::env::var("DATABASE_URL").unwrap_or_default();
            if database.starts_with("postgres") && error.to_string().contains("driver") {
                eprintln!("(PostgreSQL needs `--features postgres`)");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let config = AppConfig::from_env()?;
    let app = App::build(config).await?;
    let bind = std::env::var("BIND_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!(
        "entries_service listening on http://{} ({})",
        listener.local_addr()?,
        app.description()
    );
    axum::serve(listener, app.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    if app.shutdown().await {
        println!("entries_service stopped: write-behind queue flushed");
    } else {
        println!("entries_service stopped: a cache did not close cleanly (see the log)");
    }
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot listen for SIGTERM");
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
