//! A stand-in for the payments directory's database, for the strategy tests: it records every
//! call, can be told to fail, and checks that writes to one key arrive in order.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tower::Service;
use tower_caching::key::{CacheKey, Key, KeyBuilder};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub key: String,
    pub key_type: String,
    pub ispb: String,
    pub owner_name: String,
}

pub fn entry(id: &str, owner: &str) -> Entry {
    Entry {
        id: id.into(),
        key: format!("+5511{id}"),
        key_type: "PHONE".into(),
        ispb: "12345678".into(),
        owner_name: owner.into(),
    }
}

/// `GET /entries/{id}`.
#[derive(Clone, Debug)]
pub struct GetEntry {
    pub keys: KeyBuilder,
    pub id: String,
}

impl CacheKey for GetEntry {
    fn cache_key(&self) -> Option<Key> {
        Some(self.keys.entry(&self.id))
    }
}

/// `POST /entries`.
#[derive(Clone, Debug)]
pub struct CreateEntry {
    pub keys: KeyBuilder,
    pub entry: Entry,
}

impl CacheKey for CreateEntry {
    fn cache_key(&self) -> Option<Key> {
        Some(self.keys.entry(&self.entry.id))
    }
}

/// `PUT /participants/{ispb}/metrics`; `seq` orders the writes of one ISPB.
#[derive(Clone, Debug)]
pub struct UpdateMetrics {
    pub keys: KeyBuilder,
    pub ispb: String,
    pub seq: u64,
}

impl CacheKey for UpdateMetrics {
    fn cache_key(&self) -> Option<Key> {
        Some(self.keys.metrics(&self.ispb))
    }
}

/// `POST /vsync`: a bulk write.
#[derive(Clone, Debug)]
pub struct Vsync {
    pub id: String,
    pub entries: Vec<Entry>,
}

/// A database error; `Clone`, as coalesced loads share it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbError(pub String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

#[derive(Default)]
struct Tables {
    entries: HashMap<String, Entry>,
    metrics: HashMap<String, u64>,
    reordered: Vec<(String, u64, u64)>,
}

/// The database. Clones share it.
#[derive(Clone, Default)]
pub struct Db {
    tables: Arc<Mutex<Tables>>,
    pub reads: Arc<AtomicU32>,
    pub writes: Arc<AtomicU32>,
    /// Fail every call while set.
    pub down: Arc<std::sync::atomic::AtomicBool>,
    /// Fail this share of writes, in per mille.
    pub write_failure_per_mille: Arc<AtomicU32>,
    /// Fail writes of this ISPB, always.
    pub poison_ispb: Arc<Mutex<Option<String>>>,
    /// Delay of every call, in milliseconds.
    pub latency_ms: Arc<AtomicU64>,
    /// While true, every call waits (after its latency) until [`Db::release`]: a test that
    /// must show something did not wait for a call holds it, rather than racing a delay.
    held: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Db {
    pub fn insert(&self, entry: Entry) {
        self.tables
            .lock()
            .unwrap()
            .entries
            .insert(entry.id.clone(), entry);
    }

    pub fn entry(&self, id: &str) -> Option<Entry> {
        self.tables.lock().unwrap().entries.get(id).cloned()
    }

    pub fn metrics(&self, ispb: &str) -> Option<u64> {
        self.tables.lock().unwrap().metrics.get(ispb).copied()
    }

    pub fn metrics_count(&self) -> usize {
        self.tables.lock().unwrap().metrics.len()
    }

    pub fn reordered(&self) -> Vec<(String, u64, u64)> {
        self.tables.lock().unwrap().reordered.clone()
    }

    pub fn reads(&self) -> u32 {
        self.reads.load(Ordering::SeqCst)
    }

    pub fn writes(&self) -> u32 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Calls from now on wait until [`Db::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Lets held calls, and those to come, go on.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    async fn delay(&self) {
        let ms = self.latency_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|held| !*held).await;
    }

    fn check_up(&self) -> Result<(), DbError> {
        if self.down.load(Ordering::SeqCst) {
            Err(DbError("database down".into()))
        } else {
            Ok(())
        }
    }

    fn check_write(&self, ispb: Option<&str>) -> Result<(), DbError> {
        self.check_up()?;
        if let (Some(ispb), Some(poison)) = (ispb, self.poison_ispb.lock().unwrap().as_deref())
            && ispb == poison
        {
            return Err(DbError(format!("constraint violation for {ispb}")));
        }
        let per_mille = self.write_failure_per_mille.load(Ordering::Relaxed);
        if per_mille > 0 && fastrand::u32(0..1000) < per_mille {
            return Err(DbError("transient write failure".into()));
        }
        Ok(())
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The loader: `GetEntry` → `Option<Entry>`.
impl Service<GetEntry> for Db {
    type Response = Option<Entry>;
    type Error = DbError;
    type Future = BoxFuture<Result<Option<Entry>, DbError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DbError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GetEntry) -> Self::Future {
        let db = self.clone();
        Box::pin(async move {
            db.reads.fetch_add(1, Ordering::SeqCst);
            db.delay().await;
            db.check_up()?;
            Ok(db.entry(&request.id))
        })
    }
}

/// The entry writer: `CreateEntry` → the stored `Entry`.
impl Service<CreateEntry> for Db {
    type Response = Entry;
    type Error = DbError;
    type Future = BoxFuture<Result<Entry, DbError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DbError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: CreateEntry) -> Self::Future {
        let db = self.clone();
        Box::pin(async move {
            db.writes.fetch_add(1, Ordering::SeqCst);
            db.delay().await;
            db.check_write(None)?;
            db.insert(request.entry.clone());
            Ok(request.entry)
        })
    }
}

/// The metrics writer, checking per-ISPB order.
impl Service<UpdateMetrics> for Db {
    type Response = ();
    type Error = DbError;
    type Future = BoxFuture<Result<(), DbError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DbError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: UpdateMetrics) -> Self::Future {
        let db = self.clone();
        Box::pin(async move {
            db.writes.fetch_add(1, Ordering::SeqCst);
            db.delay().await;
            db.check_write(Some(&request.ispb))?;
            let mut tables = db.tables.lock().unwrap();
            if let Some(&previous) = tables.metrics.get(&request.ispb)
                && previous > request.seq
            {
                tables
                    .reordered
                    .push((request.ispb.clone(), previous, request.seq));
            }
            tables.metrics.insert(request.ispb, request.seq);
            Ok(())
        })
    }
}

/// The bulk writer: all entries in one transaction.
impl Service<Vsync> for Db {
    type Response = usize;
    type Error = DbError;
    type Future = BoxFuture<Result<usize, DbError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DbError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Vsync) -> Self::Future {
        let db = self.clone();
        Box::pin(async move {
            db.writes.fetch_add(1, Ordering::SeqCst);
            db.check_write(None)?;
            let count = request.entries.len();
            let mut tables = db.tables.lock().unwrap();
            for entry in request.entries {
                tables.entries.insert(entry.id.clone(), entry);
            }
            Ok(count)
        })
    }
}

/// An infallible loader, for layers whose error type must be `Infallible`.
pub fn infallible<T>(value: T) -> Result<T, Infallible> {
    Ok(value)
}
