//! The five strategies as tower layers, each run against a spawned redis-server and against
//! `MemoryStore`: the original service's 13 cases, then coalescing, write-behind under
//! failures, backpressure and shutdown, refresh-ahead and negative caching.

#[macro_use]
mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::db::{CreateEntry, Db, DbError, Entry, GetEntry, UpdateMetrics, Vsync, entry};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_caching::key::{Key, KeyBuilder};
use tower_caching::store::Store;
use tower_caching::strategy::{DeadLetter, Invalidation};
use tower_caching::{Cache, CacheLayer, LoadError, ttl};
use tower_layer::Layer;

/// A tower-test mock loader: its `BoxError` is shared by coalesced waiters as
/// `LoadError::Failed(Arc<BoxError>)`, with no `Clone` needed.
type MockLoader = tower_test::mock::Mock<GetEntry, Option<Entry>>;

fn mock_loader() -> (
    MockLoader,
    tower_test::mock::Handle<GetEntry, Option<Entry>>,
) {
    tower_test::mock::pair::<GetEntry, Option<Entry>>()
}

fn get(keys: &KeyBuilder, id: &str) -> GetEntry {
    GetEntry {
        keys: keys.clone(),
        id: id.into(),
    }
}

fn create(keys: &KeyBuilder, e: Entry) -> CreateEntry {
    CreateEntry {
        keys: keys.clone(),
        entry: e,
    }
}

fn update(keys: &KeyBuilder, ispb: &str, seq: u64) -> UpdateMetrics {
    UpdateMetrics {
        keys: keys.clone(),
        ispb: ispb.into(),
        seq,
    }
}

async fn cache_aside_hit<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    cache
        .set(
            &keys.entry("e1"),
            &Some(entry("e1", "cached")),
            Some(ttl::ENTRY),
        )
        .await
        .unwrap();
    let (loader, mut handle) = mock_loader();
    let mut service = CacheLayer::cache_aside(cache).layer(loader);
    handle.allow(1);
    let value = service
        .ready()
        .await
        .unwrap()
        .call(get(&keys, "e1"))
        .await
        .unwrap();
    assert_eq!(value, Some(entry("e1", "cached")));
    // The hit never reached the loader.
    assert!(futures_poll_once(handle.next_request()).await.is_none());
}

/// Polls a future once, with no waiting: `None` if it was not ready.
async fn futures_poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    tokio::time::timeout(Duration::from_millis(20), future)
        .await
        .ok()
}

async fn cache_aside_miss<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    let (loader, mut handle) = mock_loader();
    let mut service = CacheLayer::cache_aside(cache.clone()).layer(loader);
    handle.allow(2);
    let call = tokio::spawn(service.clone().oneshot(get(&keys, "e1")));
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request.id, "e1");
    respond.send_response(Some(entry("e1", "from db")));
    assert_eq!(call.await.unwrap().unwrap(), Some(entry("e1", "from db")));
    assert_eq!(
        cache.get(&keys.entry("e1")).await.unwrap(),
        Some(Some(entry("e1", "from db")))
    );
    // The second read is a hit: exactly one loader call in all.
    let again = service
        .ready()
        .await
        .unwrap()
        .call(get(&keys, "e1"))
        .await
        .unwrap();
    assert_eq!(again, Some(entry("e1", "from db")));
    assert!(futures_poll_once(handle.next_request()).await.is_none());
}

async fn write_through_success<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let cache: Cache<Entry, S> = Cache::new(store);
    let writer = CacheLayer::write_through(cache.clone())
        .ttl(ttl::ENTRY)
        .layer(db.clone());
    let stored = writer
        .oneshot(create(&keys, entry("e1", "Ana")))
        .await
        .unwrap();
    assert_eq!(stored, entry("e1", "Ana"));
    assert_eq!(db.entry("e1"), Some(entry("e1", "Ana")));
    assert_eq!(
        cache.get(&keys.entry("e1")).await.unwrap(),
        Some(entry("e1", "Ana"))
    );
}

async fn write_through_db_failure<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let cache: Cache<Entry, S> = Cache::new(store);
    cache
        .set(&keys.entry("e1"), &entry("e1", "old"), None)
        .await
        .unwrap();
    db.down.store(true, Ordering::SeqCst);
    let writer = CacheLayer::write_through(cache.clone()).layer(db.clone());
    let error = writer
        .oneshot(create(&keys, entry("e1", "new")))
        .await
        .unwrap_err();
    assert_eq!(error, DbError("database down".into()));
    assert_eq!(db.entry("e1"), None);
    // Untouched: still the old value, never the one that was not written.
    assert_eq!(
        cache.get(&keys.entry("e1")).await.unwrap(),
        Some(entry("e1", "old"))
    );
}

async fn write_behind_async_write<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let cache: Cache<u64, S> = Cache::new(store);
    let service = CacheLayer::write_behind(cache.clone())
        .value(|req: &UpdateMetrics| Some(req.seq))
        .ttl(ttl::METRICS)
        .batch_interval(Duration::from_secs(1))
        .layer(db.clone());
    service
        .clone()
        .oneshot(update(&keys, "111", 7))
        .await
        .unwrap();
    // Acknowledged and cached, not written yet (the first batch is a second away).
    assert_eq!(db.metrics("111"), None);
    assert_eq!(cache.get(&keys.metrics("111")).await.unwrap(), Some(7));
    support::within(Duration::from_secs(5), async || {
        db.metrics("111") == Some(7)
    })
    .await;
}

async fn write_behind_manual_flush<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let cache: Cache<u64, S> = Cache::new(store);
    let mut service = CacheLayer::write_behind(cache.clone())
        .value(|req: &UpdateMetrics| Some(req.seq))
        .batch_interval(Duration::from_secs(60))
        .layer(db.clone());
    for (i, ispb) in ["1", "2", "3"].into_iter().enumerate() {
        service
            .ready()
            .await
            .unwrap()
            .call(update(&keys, ispb, i as u64))
            .await
            .unwrap();
    }
    assert_eq!(service.queue_depth(), 3);
    assert_eq!(db.metrics_count(), 0);
    assert_eq!(cache.flush_pending_writes().await.unwrap(), 3);
    assert_eq!(db.metrics_count(), 3);
    assert_eq!(service.queue_depth(), 0);
    assert_eq!(cache.flush_pending_writes().await.unwrap(), 0);
}

async fn read_through_hit<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    cache
        .set(
            &keys.config("default"),
            &Some(entry("default", "cfg")),
            Some(ttl::CONFIG),
        )
        .await
        .unwrap();
    let service = CacheLayer::read_through(cache)
        .key(|req: &GetEntry| req.keys.config(&req.id))
        .ttl(ttl::CONFIG)
        .layer(db.clone());
    let value = service.oneshot(get(&keys, "default")).await.unwrap();
    assert_eq!(value, Some(entry("default", "cfg")));
    assert_eq!(db.reads(), 0);
}

async fn read_through_miss<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    db.insert(entry("default", "cfg"));
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    let service = CacheLayer::read_through(cache.clone())
        .key(|req: &GetEntry| req.keys.config(&req.id))
        .ttl(ttl::CONFIG)
        .layer(db.clone());
    for _ in 0..3 {
        let value = service
            .clone()
            .oneshot(get(&keys, "default"))
            .await
            .unwrap();
        assert_eq!(value, Some(entry("default", "cfg")));
    }
    assert_eq!(db.reads(), 1);
    assert!(cache.exists(&keys.config("default")).await.unwrap());
}

async fn write_around_bulk_operation<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    for id in ["e1", "e2", "e3"] {
        cache
            .set(&keys.entry(id), &Some(entry(id, "stale")), None)
            .await
            .unwrap();
    }
    cache
        .set(&keys.build("vsync", "old"), &None, None)
        .await
        .unwrap();
    cache
        .set(&keys.entry("untouched"), &None, None)
        .await
        .unwrap();
    let bulk_keys = keys.clone();
    let writer = CacheLayer::write_around(cache.clone())
        .invalidate(move |req: &Vsync| {
            Invalidation::new()
                .keys(req.entries.iter().map(|e| bulk_keys.entry(&e.id)))
                .pattern(bulk_keys.pattern("vsync"))
        })
        .layer(db.clone());
    let entries = ["e1", "e2", "e3"].map(|id| entry(id, "fresh")).to_vec();
    let written = writer
        .oneshot(Vsync {
            id: "v1".into(),
            entries,
        })
        .await
        .unwrap();
    assert_eq!(written, 3);
    for id in ["e1", "e2", "e3"] {
        assert!(!cache.exists(&keys.entry(id)).await.unwrap(), "{id}");
        assert_eq!(db.entry(id), Some(entry(id, "fresh")));
    }
    assert!(!cache.exists(&keys.build("vsync", "old")).await.unwrap());
    assert!(cache.exists(&keys.entry("untouched")).await.unwrap());
}

/// Entries are tagged by owner as any layer caches them; a bulk write by one owner drops
/// that owner's entries by tag, whatever their keys, and leaves the others.
async fn write_around_invalidates_by_tag<S: Store>(store: S, prefix: &str) {
    use tower_caching::key::Tag;
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let owner_tag = {
        let prefix = prefix.to_owned();
        move |owner: &str| Tag::new(format!("{prefix}:owner:{owner}")).unwrap()
    };
    let tagging = owner_tag.clone();
    let cache: Cache<Option<Entry>, S> =
        Cache::new(store).tag_with(move |_, value: &Option<Entry>| {
            value.iter().map(|e| tagging(&e.owner_name)).collect()
        });
    for (id, owner) in [("e1", "ana"), ("e2", "ana"), ("e3", "bia")] {
        db.insert(entry(id, owner));
    }
    let reader = CacheLayer::read_through(cache.clone()).layer(db.clone());
    for id in ["e1", "e2", "e3"] {
        reader.clone().oneshot(get(&keys, id)).await.unwrap();
        assert!(cache.exists(&keys.entry(id)).await.unwrap());
    }
    let writer = CacheLayer::write_around(cache.clone())
        .invalidate(move |req: &Vsync| {
            Invalidation::new().tag(owner_tag(&req.entries[0].owner_name))
        })
        .layer(db.clone());
    writer
        .oneshot(Vsync {
            id: "v1".into(),
            entries: vec![entry("e1", "ana")],
        })
        .await
        .unwrap();
    assert!(!cache.exists(&keys.entry("e1")).await.unwrap());
    assert!(!cache.exists(&keys.entry("e2")).await.unwrap());
    assert!(cache.exists(&keys.entry("e3")).await.unwrap());
    let reads = db.reads();
    reader.clone().oneshot(get(&keys, "e2")).await.unwrap();
    assert_eq!(
        db.reads(),
        reads + 1,
        "e2 was not reloaded after its tag was invalidated"
    );
}

async fn write_around_repopulation_on_read<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    let reader = CacheLayer::cache_aside(cache.clone()).layer(db.clone());
    let writer = CacheLayer::write_around(cache.clone())
        .key(|req: &CreateEntry| req.keys.entry(&req.entry.id))
        .layer(db.clone());

    db.insert(entry("e1", "v1"));
    assert_eq!(
        reader.clone().oneshot(get(&keys, "e1")).await.unwrap(),
        Some(entry("e1", "v1"))
    );
    writer
        .oneshot(create(&keys, entry("e1", "v2")))
        .await
        .unwrap();
    assert!(!cache.exists(&keys.entry("e1")).await.unwrap());
    assert_eq!(
        reader.clone().oneshot(get(&keys, "e1")).await.unwrap(),
        Some(entry("e1", "v2"))
    );
    assert_eq!(
        cache.get(&keys.entry("e1")).await.unwrap(),
        Some(Some(entry("e1", "v2")))
    );
    assert_eq!(db.reads(), 2);
}

async fn delete_pattern_multiple_keys<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let cache: Cache<u32, S> = Cache::new(store);
    for i in 0..25 {
        cache
            .set(&keys.entry(&i.to_string()), &i, None)
            .await
            .unwrap();
    }
    cache.set(&keys.metrics("1"), &1, None).await.unwrap();
    assert_eq!(cache.delete_pattern(&keys.entries()).await.unwrap(), 25);
    assert!(cache.exists(&keys.metrics("1")).await.unwrap());
    assert_eq!(cache.delete_pattern(&keys.entries()).await.unwrap(), 0);
}

async fn cache_ttl_expiration<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    db.insert(entry("e1", "v1"));
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    let reader = CacheLayer::cache_aside(cache.clone())
        .ttl(Duration::from_millis(600))
        .layer(db.clone());
    reader.clone().oneshot(get(&keys, "e1")).await.unwrap();
    reader.clone().oneshot(get(&keys, "e1")).await.unwrap();
    assert_eq!(db.reads(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!cache.exists(&keys.entry("e1")).await.unwrap());
    reader.oneshot(get(&keys, "e1")).await.unwrap();
    assert_eq!(db.reads(), 2);
}

async fn all_strategies_integration<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let entries: Cache<Option<Entry>, S> = Cache::new(store.clone());
    let created: Cache<Entry, S> = Cache::new(store.clone());
    let metrics: Cache<u64, S> = Cache::new(store.clone());

    let reader = CacheLayer::cache_aside(entries.clone()).layer(db.clone());
    let writer = CacheLayer::write_through(created.clone()).layer(db.clone());
    let configs = CacheLayer::read_through(entries.clone())
        .key(|req: &GetEntry| req.keys.config(&req.id))
        .ttl(ttl::CONFIG)
        .layer(db.clone());
    let counters = CacheLayer::write_behind(metrics.clone())
        .value(|req: &UpdateMetrics| Some(req.seq))
        .batch_interval(Duration::from_secs(60))
        .layer(db.clone());
    let bulk_keys = keys.clone();
    let bulk = CacheLayer::write_around(entries.clone())
        .invalidate(move |req: &Vsync| {
            Invalidation::new()
                .keys(req.entries.iter().map(|e| bulk_keys.entry(&e.id)))
                .pattern(bulk_keys.pattern("vsync"))
        })
        .layer(db.clone());

    // Write-through makes the entry readable from the cache at once.
    writer
        .oneshot(create(&keys, entry("e1", "Ana")))
        .await
        .unwrap();
    assert_eq!(
        created.get(&keys.entry("e1")).await.unwrap(),
        Some(entry("e1", "Ana"))
    );
    // The read path's Option<Entry> and the write path's Entry share the key but not the
    // type: the reader decodes the written JSON as Some(entry).
    assert_eq!(
        reader.clone().oneshot(get(&keys, "e1")).await.unwrap(),
        Some(entry("e1", "Ana"))
    );
    assert_eq!(db.reads(), 0);

    db.insert(entry("default", "config"));
    assert_eq!(
        configs
            .clone()
            .oneshot(get(&keys, "default"))
            .await
            .unwrap(),
        Some(entry("default", "config"))
    );
    assert_eq!(
        configs.oneshot(get(&keys, "default")).await.unwrap(),
        Some(entry("default", "config"))
    );
    assert_eq!(db.reads(), 1);

    counters
        .clone()
        .oneshot(update(&keys, "999", 42))
        .await
        .unwrap();
    assert_eq!(metrics.get(&keys.metrics("999")).await.unwrap(), Some(42));

    bulk.oneshot(Vsync {
        id: "v".into(),
        entries: vec![entry("e1", "Bia")],
    })
    .await
    .unwrap();
    assert_eq!(
        reader.oneshot(get(&keys, "e1")).await.unwrap(),
        Some(entry("e1", "Bia"))
    );

    assert_eq!(metrics.close().await.unwrap(), 1);
    assert_eq!(db.metrics("999"), Some(42));
}

async fn coalescing_1000_concurrent_misses_one_load<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    db.insert(entry("hot", "v"));
    db.latency_ms.store(50, Ordering::SeqCst);
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    let service = CacheLayer::cache_aside(cache.clone()).layer(db.clone());

    let calls = (0..1000).map(|_| service.clone().oneshot(get(&keys, "hot")));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| r == &Ok(Some(entry("hot", "v")))));
    assert_eq!(db.reads(), 1);

    db.down.store(true, Ordering::SeqCst);
    // A failed load caches nothing: the coalescing window is the load itself, so it must
    // outlast the 1000 lookups that precede it on a busy machine.
    db.latency_ms.store(300, Ordering::SeqCst);
    let calls = (0..1000).map(|_| service.clone().oneshot(get(&keys, "cold")));
    let results = futures_util::future::join_all(calls).await;
    assert!(
        results
            .iter()
            .all(|r| r == &Err(LoadError::Failed(Arc::new(DbError("database down".into())))))
    );
    assert_eq!(db.reads(), 2);
    assert!(!cache.exists(&keys.entry("cold")).await.unwrap());
}

async fn write_behind_no_loss_under_failures<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    db.write_failure_per_mille.store(200, Ordering::SeqCst);
    let cache: Cache<u64, S> = Cache::new(store);
    let dead = Arc::new(Mutex::new(Vec::new()));
    let mut service = CacheLayer::write_behind(cache.clone())
        .value(|req: &UpdateMetrics| Some(req.seq))
        .batch_interval(Duration::from_millis(5))
        .max_batch(50)
        .max_attempts(50)
        .backoff(Duration::from_millis(1), Duration::from_millis(10))
        .on_dead_letter({
            let dead = dead.clone();
            move |letter: DeadLetter<UpdateMetrics>| dead.lock().unwrap().push(letter.key)
        })
        .layer(db.clone());
    let mut last = std::collections::HashMap::new();
    for seq in 0..10_000u64 {
        let ispb = format!("{}", fastrand::u32(0..100));
        last.insert(ispb.clone(), seq);
        service
            .ready()
            .await
            .unwrap()
            .call(update(&keys, &ispb, seq))
            .await
            .unwrap();
    }
    cache.flush_pending_writes().await.unwrap();
    assert!(
        dead.lock().unwrap().is_empty(),
        "dead letters: {:?}",
        dead.lock().unwrap()
    );
    assert_eq!(service.queue_depth(), 0);
    for (ispb, seq) in &last {
        assert_eq!(db.metrics(ispb), Some(*seq), "ispb {ispb}");
        assert_eq!(cache.get(&keys.metrics(ispb)).await.unwrap(), Some(*seq));
    }
    assert_eq!(db.reordered(), vec![]);
}

async fn write_behind_shutdown_flushes<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let cache: Cache<u64, S> = Cache::new(store);
    let mut service = CacheLayer::write_behind(cache.clone())
        .value(|req: &UpdateMetrics| Some(req.seq))
        .batch_interval(Duration::from_secs(60))
        .layer(db.clone());
    for i in 0..50u64 {
        service
            .ready()
            .await
            .unwrap()
            .call(update(&keys, &i.to_string(), i))
            .await
            .unwrap();
    }
    assert_eq!(db.metrics_count(), 0);
    assert_eq!(cache.close().await.unwrap(), 50);
    assert_eq!(db.metrics_count(), 50);
    // After close, writes go straight to the writer: still never lost.
    service
        .ready()
        .await
        .unwrap()
        .call(update(&keys, "late", 1))
        .await
        .unwrap();
    assert_eq!(db.metrics("late"), Some(1));
}

async fn write_behind_backpressure_when_queue_full<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let cache: Cache<u64, S> = Cache::new(store);
    // No batch before the flush below: nothing leaves the queue until then.
    let mut service = CacheLayer::write_behind(cache.clone())
        .value(|req: &UpdateMetrics| Some(req.seq))
        .capacity(10)
        .batch_interval(Duration::from_secs(60))
        .layer(db.clone());
    for i in 0..9u64 {
        service
            .ready()
            .await
            .unwrap()
            .call(update(&keys, &i.to_string(), i))
            .await
            .unwrap();
    }
    // A rewrite of a queued key coalesces: it gives its room back.
    service
        .ready()
        .await
        .unwrap()
        .call(update(&keys, "3", 33))
        .await
        .unwrap();
    assert_eq!(service.queue_depth(), 9);
    service
        .ready()
        .await
        .unwrap()
        .call(update(&keys, "9", 9))
        .await
        .unwrap();
    assert_eq!(service.queue_depth(), 10);
    // The queue is full: the next caller waits for room instead of growing the queue.
    let waiting = tokio::time::timeout(Duration::from_millis(200), service.ready()).await;
    assert!(waiting.is_err(), "the queue grew past its capacity");
    assert_eq!(service.queue_depth(), 10);

    let flush = tokio::spawn({
        let cache = cache.clone();
        async move { cache.flush_pending_writes().await }
    });
    let ready = tokio::time::timeout(Duration::from_secs(5), service.ready()).await;
    ready
        .expect("room was never made")
        .unwrap()
        .call(update(&keys, "10", 10))
        .await
        .unwrap();
    flush.await.unwrap().unwrap();
    cache.flush_pending_writes().await.unwrap();
    assert_eq!(db.metrics_count(), 11);
    assert_eq!(db.metrics("3"), Some(33));
    assert_eq!(db.reordered(), vec![]);
}

async fn write_behind_retries_while_the_database_is_down<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    db.down.store(true, Ordering::SeqCst);
    let cache: Cache<u64, S> = Cache::new(store);
    let mut service = CacheLayer::write_behind(cache.clone())
        .value(|req: &UpdateMetrics| Some(req.seq))
        .batch_interval(Duration::from_millis(10))
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .layer(db.clone());
    for i in 0..20u64 {
        service
            .ready()
            .await
            .unwrap()
            .call(update(&keys, &(i % 5).to_string(), i))
            .await
            .unwrap();
    }
    // Retried, never written, nothing lost.
    support::within(Duration::from_secs(5), async || db.writes() > 5).await;
    assert_eq!(db.metrics_count(), 0);
    assert_eq!(service.queue_depth(), 5);
    db.down.store(false, Ordering::SeqCst);
    support::within(Duration::from_secs(5), async || service.queue_depth() == 0).await;
    for ispb in 0..5u64 {
        assert_eq!(db.metrics(&ispb.to_string()), Some(15 + ispb));
    }
    assert_eq!(db.reordered(), vec![]);
}

async fn write_behind_poison_entry_is_dead_lettered<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    *db.poison_ispb.lock().unwrap() = Some("poison".into());
    let cache: Cache<u64, S> = Cache::new(store);
    let dead = Arc::new(Mutex::new(Vec::new()));
    let mut service = CacheLayer::write_behind(cache.clone())
        .value(|req: &UpdateMetrics| Some(req.seq))
        .batch_interval(Duration::from_secs(60))
        .max_attempts(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .on_dead_letter({
            let dead = dead.clone();
            move |letter: DeadLetter<UpdateMetrics>| {
                dead.lock().unwrap().push((
                    letter.request.ispb,
                    letter.attempts,
                    letter.error.to_string(),
                ))
            }
        })
        .layer(db.clone());
    for ispb in ["a", "poison", "b"] {
        service
            .ready()
            .await
            .unwrap()
            .call(update(&keys, ispb, 1))
            .await
            .unwrap();
    }
    assert_eq!(cache.flush_pending_writes().await.unwrap(), 2);
    assert_eq!(db.metrics("a"), Some(1));
    assert_eq!(db.metrics("b"), Some(1));
    assert_eq!(
        dead.lock().unwrap().clone(),
        vec![(
            "poison".to_string(),
            3,
            "constraint violation for poison".to_string()
        )]
    );
    assert_eq!(service.queue_depth(), 0);
}

async fn write_through_value_from_response_and_invalidation<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let cache: Cache<String, S> = Cache::builder(store).max_value_size(60).build();
    let writer = CacheLayer::write_through(cache.clone())
        .value_from_response(|stored: &Entry| Some(stored.owner_name.clone()))
        .layer(db.clone());
    writer
        .clone()
        .oneshot(create(&keys, entry("e1", "Ana")))
        .await
        .unwrap();
    assert_eq!(
        cache.get(&keys.entry("e1")).await.unwrap(),
        Some("Ana".to_string())
    );
    // The next value is too large to cache: the write succeeds and the old value goes.
    let long_name = "x".repeat(100);
    let stored = writer
        .oneshot(create(&keys, entry("e1", &long_name)))
        .await
        .unwrap();
    assert_eq!(stored.owner_name, long_name);
    assert_eq!(cache.get(&keys.entry("e1")).await.unwrap(), None);
}

async fn refresh_ahead_reloads_hot_keys_in_the_background<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    db.insert(entry("cfg", "v1"));
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    // Every wait below is 0.8 s or more from the edge it must not cross, so that a loaded
    // machine's stalls do not move a read into the wrong part of the TTL.
    let service = CacheLayer::read_through(cache.clone())
        .ttl(Duration::from_millis(2000))
        .refresh_ahead(0.5)
        .layer(db.clone());
    assert_eq!(
        service.clone().oneshot(get(&keys, "cfg")).await.unwrap(),
        Some(entry("cfg", "v1"))
    );
    let stored = std::time::Instant::now();
    db.insert(entry("cfg", "v2"));
    // Early in the TTL: a plain hit.
    assert_eq!(
        service.clone().oneshot(get(&keys, "cfg")).await.unwrap(),
        Some(entry("cfg", "v1"))
    );
    assert_eq!(db.reads(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // In the last half: served from the cache while one reload runs behind it. The reload
    // is held until the hits are done: a hit that waited for it would never finish.
    db.hold();
    for _ in 0..20 {
        let hit = tokio::time::timeout(
            Duration::from_secs(5),
            service.clone().oneshot(get(&keys, "cfg")),
        );
        assert_eq!(
            hit.await.expect("a hit waited for the reload").unwrap(),
            Some(entry("cfg", "v1"))
        );
    }
    db.release();
    support::within(Duration::from_secs(5), async || {
        cache.get(&keys.entry("cfg")).await.unwrap() == Some(Some(entry("cfg", "v2")))
    })
    .await;
    assert_eq!(db.reads(), 2);
    // The refreshed entry outlives the first one's TTL.
    tokio::time::sleep(Duration::from_millis(2300).saturating_sub(stored.elapsed())).await;
    assert!(cache.exists(&keys.entry("cfg")).await.unwrap());
}

async fn negative_caching_is_off_by_default_and_uses_its_own_ttl<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    let plain = CacheLayer::cache_aside(cache.clone())
        .not_found(Option::is_none)
        .layer(db.clone());
    for _ in 0..3 {
        assert_eq!(
            plain.clone().oneshot(get(&keys, "missing")).await.unwrap(),
            None
        );
    }
    assert_eq!(db.reads(), 3);
    assert!(!cache.exists(&keys.entry("missing")).await.unwrap());

    let negative = CacheLayer::cache_aside(cache.clone())
        .not_found(Option::is_none)
        .negative_ttl(Duration::from_millis(1000))
        .ttl(ttl::ENTRY)
        .layer(db.clone());
    for _ in 0..3 {
        assert_eq!(
            negative
                .clone()
                .oneshot(get(&keys, "missing"))
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(db.reads(), 4);
    db.insert(entry("missing", "now here"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        negative.oneshot(get(&keys, "missing")).await.unwrap(),
        Some(entry("missing", "now here"))
    );
    assert_eq!(db.reads(), 5);
}

async fn cache_if_rejects_values<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    db.insert(entry("e1", ""));
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    let service = CacheLayer::cache_aside(cache.clone())
        .cache_if(|v: &Option<Entry>| v.as_ref().is_some_and(|e| !e.owner_name.is_empty()))
        .layer(db.clone());
    service.clone().oneshot(get(&keys, "e1")).await.unwrap();
    service.oneshot(get(&keys, "e1")).await.unwrap();
    assert_eq!(db.reads(), 2);
    assert!(!cache.exists(&keys.entry("e1")).await.unwrap());
}

async fn fail_safe_serves_stale_values_when_the_loader_fails<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    db.insert(entry("e1", "v1"));
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    let service = CacheLayer::cache_aside(cache.clone())
        .ttl(Duration::from_millis(200))
        .fail_safe(Duration::from_secs(30), Duration::from_millis(1500))
        .layer(db.clone());
    assert_eq!(
        service.clone().oneshot(get(&keys, "e1")).await.unwrap(),
        Some(entry("e1", "v1"))
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Stale, and the database is down: the stale value instead of the error.
    db.down.store(true, Ordering::SeqCst);
    assert_eq!(
        service.clone().oneshot(get(&keys, "e1")).await.unwrap(),
        Some(entry("e1", "v1"))
    );
    assert_eq!(db.reads(), 2);
    // Throttled: the failing database is left alone for a while.
    for _ in 0..5 {
        assert_eq!(
            service.clone().oneshot(get(&keys, "e1")).await.unwrap(),
            Some(entry("e1", "v1"))
        );
    }
    assert_eq!(db.reads(), 2);
    // A key with nothing stale still fails.
    let cold = service.clone().oneshot(get(&keys, "cold")).await;
    assert_eq!(
        cold,
        Err(LoadError::Failed(Arc::new(DbError("database down".into()))))
    );
    // Back up, after the throttle: fresh values again.
    db.down.store(false, Ordering::SeqCst);
    db.insert(entry("e1", "v2"));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        service.oneshot(get(&keys, "e1")).await.unwrap(),
        Some(entry("e1", "v2"))
    );
}

async fn soft_timeout_serves_stale_while_the_reload_finishes<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    db.insert(entry("e1", "v1"));
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    let service = CacheLayer::read_through(cache.clone())
        .ttl(Duration::from_millis(200))
        .fail_safe(Duration::from_secs(30), Duration::from_secs(1))
        .soft_timeout(Duration::from_millis(50))
        .layer(db.clone());
    service.clone().oneshot(get(&keys, "e1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    db.insert(entry("e1", "v2"));
    // The reload is held: only the soft timeout can answer.
    db.hold();
    let started = std::time::Instant::now();
    let stale = tokio::time::timeout(
        Duration::from_secs(5),
        service.clone().oneshot(get(&keys, "e1")),
    );
    assert_eq!(
        stale
            .await
            .expect("the soft timeout did not answer")
            .unwrap(),
        Some(entry("e1", "v1"))
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(45), "{took:?}");
    // The reload went on behind the stale answer and refreshed the entry.
    db.release();
    support::within(Duration::from_secs(5), async || {
        cache.get(&keys.entry("e1")).await.unwrap() == Some(Some(entry("e1", "v2")))
    })
    .await;
    assert_eq!(
        service.oneshot(get(&keys, "e1")).await.unwrap(),
        Some(entry("e1", "v2"))
    );
    assert_eq!(db.reads(), 2);
}

async fn hard_timeout_is_tower_timeout_and_fail_safe_answers_it<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    db.insert(entry("e1", "v1"));
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    // tower's timeout error is a `BoxError`: not `Clone`, and it needs not be.
    let loader = ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .service(db.clone());
    let service = CacheLayer::cache_aside(cache)
        .ttl(Duration::from_millis(150))
        .fail_safe(Duration::from_secs(30), Duration::from_millis(100))
        .layer(loader);
    service.clone().oneshot(get(&keys, "e1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The database never answers: only the timeout can.
    db.hold();
    let limit = Duration::from_secs(5);
    // Stale entry: the timed-out reload is answered with the stale value.
    let stale = tokio::time::timeout(limit, service.clone().oneshot(get(&keys, "e1")));
    assert_eq!(
        stale.await.expect("no answer").unwrap(),
        Some(entry("e1", "v1"))
    );
    // No stale entry: the timeout is the error.
    let cold = tokio::time::timeout(limit, service.oneshot(get(&keys, "cold")));
    let cold = cold.await.expect("no answer").unwrap_err();
    assert!(cold.to_string().contains("timed out"), "{cold}");
    db.release();
}

async fn early_expiration_reloads_before_expiry_without_waiting<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    db.insert(entry("e1", "v1"));
    db.latency_ms.store(100, Ordering::SeqCst);
    let cache: Cache<Option<Entry>, S> = Cache::new(store);
    // At 1.2 s of 2 s, with a 0.1 s load and beta 10, each hit reloads with probability
    // 0.45; the expiry is 0.8 s away, out of reach of a loaded machine's stalls.
    let eager = CacheLayer::read_through(cache.clone())
        .ttl(Duration::from_millis(2000))
        .early_expiration(10.0)
        .layer(db.clone());
    eager.clone().oneshot(get(&keys, "e1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The reloads are held: a hit that waited for one would never finish.
    db.hold();
    for _ in 0..20 {
        let hit = tokio::time::timeout(
            Duration::from_secs(5),
            eager.clone().oneshot(get(&keys, "e1")),
        );
        hit.await.expect("a hit waited for a reload").unwrap();
    }
    db.release();
    // The reload runs on a task of its own: wait for it to call the database.
    support::within(Duration::from_secs(5), async || db.reads() >= 2).await;

    // beta = 0: never early.
    let reads = db.reads();
    let lazy = CacheLayer::read_through(cache)
        .key(|req: &GetEntry| req.keys.config(&req.id))
        .ttl(Duration::from_millis(2000))
        .early_expiration(0.0)
        .layer(db.clone());
    lazy.clone().oneshot(get(&keys, "e1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for _ in 0..20 {
        lazy.clone().oneshot(get(&keys, "e1")).await.unwrap();
    }
    assert_eq!(db.reads(), reads + 1);
}

async fn a_read_sees_a_queued_write_before_the_writer_runs<S: Store>(store: S, prefix: &str) {
    let keys = KeyBuilder::new().prefix(prefix);
    let db = Db::default();
    let counters: Cache<u64, S> = Cache::new(store);
    let mut writer = CacheLayer::write_behind(counters.clone())
        .value(|req: &UpdateMetrics| Some(req.seq))
        .batch_interval(Duration::from_secs(60))
        .layer(db.clone());
    writer
        .ready()
        .await
        .unwrap()
        .call(update(&keys, "111", 42))
        .await
        .unwrap();
    // The cached copy is gone (evicted, expired, or never written while the store was down).
    counters.delete(&keys.metrics("111")).await.unwrap();

    // The database still has the old row; reads must not return it.
    let reads: Cache<Option<u64>, S> = counters.typed();
    let stale_row = || async { Ok::<_, String>(Some(7)) };
    assert_eq!(
        reads
            .get_or_load(&keys.metrics("111"), None, stale_row)
            .await,
        Ok(Some(42))
    );
    let reader = CacheLayer::cache_aside(reads.clone())
        .key(|req: &String| {
            KeyBuilder::new()
                .prefix(req.split('|').next().unwrap())
                .metrics("111")
        })
        .layer(tower::service_fn(|_: String| async {
            Ok::<_, String>(Some(7u64))
        }));
    assert_eq!(reader.oneshot(format!("{prefix}|")).await, Ok(Some(42)));

    // Once written, reads go back to the cache and the database.
    counters.flush_pending_writes().await.unwrap();
    assert_eq!(db.metrics("111"), Some(42));
    assert_eq!(
        reads
            .get_or_load(&keys.metrics("111"), None, stale_row)
            .await,
        Ok(Some(7))
    );
}

on_every_store!(
    cache_aside_hit,
    cache_aside_miss,
    write_through_success,
    write_through_db_failure,
    write_behind_async_write,
    write_behind_manual_flush,
    read_through_hit,
    read_through_miss,
    write_around_bulk_operation,
    write_around_repopulation_on_read,
    write_around_invalidates_by_tag,
    delete_pattern_multiple_keys,
    cache_ttl_expiration,
    all_strategies_integration,
    coalescing_1000_concurrent_misses_one_load,
    write_behind_no_loss_under_failures,
    write_behind_shutdown_flushes,
    write_behind_backpressure_when_queue_full,
    write_behind_retries_while_the_database_is_down,
    write_behind_poison_entry_is_dead_lettered,
    write_through_value_from_response_and_invalidation,
    refresh_ahead_reloads_hot_keys_in_the_background,
    negative_caching_is_off_by_default_and_uses_its_own_ttl,
    cache_if_rejects_values,
    fail_safe_serves_stale_values_when_the_loader_fails,
    soft_timeout_serves_stale_while_the_reload_finishes,
    hard_timeout_is_tower_timeout_and_fail_safe_answers_it,
    early_expiration_reloads_before_expiry_without_waiting,
    a_read_sees_a_queued_write_before_the_writer_runs,
);

/// Readiness: a loader or writer that is not ready makes the layered service not ready,
/// for every strategy.
#[tokio::test]
async fn poll_ready_propagates() {
    use tokio_test::{assert_pending, assert_ready_ok};

    macro_rules! check {
        ($layer:expr, $req:ty, $resp:ty) => {{
            let (inner, mut handle) = tower_test::mock::pair::<$req, $resp>();
            let mut service = tower_test::mock::Spawn::new($layer.layer(inner));
            handle.allow(0);
            assert_pending!(service.poll_ready());
            handle.allow(1);
            assert_ready_ok!(service.poll_ready());
        }};
    }
    let entries: Cache<Option<Entry>> = Cache::in_memory();
    let created: Cache<Entry> = Cache::in_memory();
    let metrics: Cache<u64> = Cache::in_memory();
    check!(
        CacheLayer::cache_aside(entries.clone()),
        GetEntry,
        Option<Entry>
    );
    check!(
        CacheLayer::read_through(entries.clone()),
        GetEntry,
        Option<Entry>
    );
    check!(CacheLayer::write_through(created), CreateEntry, Entry);
    check!(
        CacheLayer::write_behind(metrics).value(|r: &UpdateMetrics| Some(r.seq)),
        UpdateMetrics,
        ()
    );
    check!(CacheLayer::write_around(entries), CreateEntry, ());
}

/// A cancelled caller (client gone) does not cancel the load the others wait for.
#[tokio::test]
async fn cancelled_first_caller_does_not_stall_the_others() {
    let keys = KeyBuilder::new();
    let db = Db::default();
    db.insert(entry("slow", "v"));
    db.latency_ms.store(100, Ordering::SeqCst);
    let cache: Cache<Option<Entry>> = Cache::in_memory();
    let service = CacheLayer::cache_aside(cache.clone()).layer(db.clone());
    let first = tokio::spawn(service.clone().oneshot(get(&keys, "slow")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second = tokio::spawn(service.clone().oneshot(get(&keys, "slow")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    first.abort();
    let value = tokio::time::timeout(Duration::from_secs(2), second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value, Ok(Some(entry("slow", "v"))));
    assert_eq!(db.reads(), 1);
    assert!(cache.exists(&keys.entry("slow")).await.unwrap());
}

/// The layers compose with `ServiceBuilder` and type-erase into `BoxCloneService`.
#[tokio::test]
async fn composes_with_service_builder_and_box_clone_service() {
    let keys = KeyBuilder::new();
    let db = Db::default();
    db.insert(entry("e1", "v"));
    let cache: Cache<Option<Entry>> = Cache::in_memory();
    let service: tower::util::BoxCloneService<GetEntry, Option<Entry>, LoadError<DbError>> =
        ServiceBuilder::new()
            .concurrency_limit(8)
            .layer(CacheLayer::cache_aside(cache))
            .service(db.clone())
            .boxed_clone();
    for _ in 0..3 {
        assert_eq!(
            service.clone().oneshot(get(&keys, "e1")).await.unwrap(),
            Some(entry("e1", "v"))
        );
    }
    assert_eq!(db.reads(), 1);
}

/// A key extractor can bypass the cache for a request; odd user input is escaped.
#[tokio::test]
async fn bypass_and_hostile_ids() {
    let db = Db::default();
    db.insert(entry("a*", "star"));
    db.insert(entry("ab", "plain"));
    let keys = KeyBuilder::new();
    let cache: Cache<Option<Entry>> = Cache::in_memory();
    let service = CacheLayer::cache_aside(cache.clone())
        .key(|req: &GetEntry| (req.id != "nocache").then(|| req.keys.entry(&req.id)))
        .layer(db.clone());
    for id in ["a*", "ab", "a*", "ab", "nocache", "nocache"] {
        service.clone().oneshot(get(&keys, id)).await.unwrap();
    }
    assert_eq!(db.reads(), 4);
    // Invalidating `a*` must not take `ab` with it.
    let pattern = tower_caching::key::Pattern::prefix(keys.entry("a*").as_str());
    assert_eq!(cache.delete_pattern(&pattern).await.unwrap(), 1);
    assert!(cache.exists(&keys.entry("ab")).await.unwrap());
    assert!(cache.exists(&Key::new("entry:ab").unwrap()).await.unwrap());
}
