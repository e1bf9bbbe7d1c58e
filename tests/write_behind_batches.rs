//! A write-behind writer that takes batches (`writes_batches`): one call per batch, in queue
//! order, one write per key; a failed or panicking batch retried whole, then dead-lettered
//! write by write; a write that skips the queue is a batch of one; the same on a durable
//! queue in a spawned Redis.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::ServiceExt;
use tower_caching::key::Key;
use tower_caching::strategy::DeadLetter;
use tower_caching::{Cache, CacheLayer};
use tower_layer::Layer;

/// `(id, value)`: the row a write puts in the database.
type Row = (u32, u64);

fn key(row: &Row) -> Option<Key> {
    Key::new(format!("row:{}", row.0)).ok()
}

/// A batch writer into `table` that records each call's rows; its first `fail_first` calls
/// fail (and write nothing).
#[derive(Clone, Default)]
struct Table {
    rows: Arc<Mutex<HashMap<u32, u64>>>,
    calls: Arc<Mutex<Vec<Vec<Row>>>>,
    fail_first: Arc<AtomicUsize>,
    panic_first: Arc<AtomicUsize>,
}

impl Table {
    fn writer(
        &self,
    ) -> impl tower::Service<
        Vec<Row>,
        Response = usize,
        Error = std::io::Error,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static {
        let table = self.clone();
        tower::service_fn(move |rows: Vec<Row>| {
            let table = table.clone();
            async move {
                table.calls.lock().unwrap().push(rows.clone());
                if table
                    .panic_first
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    panic!("the batch writer panicked");
                }
                if table
                    .fail_first
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return Err(std::io::Error::other("database down"));
                }
                let written = rows.len();
                table.rows.lock().unwrap().extend(rows);
                Ok(written)
            }
        })
    }

    fn call_sizes(&self) -> Vec<usize> {
        self.calls.lock().unwrap().iter().map(Vec::len).collect()
    }
}

#[tokio::test]
async fn a_batch_writer_gets_one_call_per_batch_in_queue_order() {
    let cache: Cache<u64> = Cache::in_memory();
    let table = Table::default();
    let service = CacheLayer::write_behind(cache.clone())
        .key(key)
        .value(|row: &Row| Some(row.1))
        // Never a batch before the flush: it finds all of them queued.
        .batch_interval(Duration::from_secs(3600))
        .max_batch(1_000)
        .writes_batches()
        .layer(table.writer());
    // 250 distinct keys, then a newer write of key 7: it replaces the queued one.
    for id in 0..250u32 {
        service.clone().oneshot((id, 1)).await.unwrap();
    }
    service.clone().oneshot((7, 2)).await.unwrap();
    assert_eq!(cache.get(&key(&(7, 0)).unwrap()).await.unwrap(), Some(2));

    assert_eq!(cache.flush_pending_writes().await.unwrap(), 250);
    assert_eq!(table.call_sizes(), [250]);
    let calls = table.calls.lock().unwrap().clone();
    let ids: Vec<u32> = calls.iter().flatten().map(|row| row.0).collect();
    let mut expected: Vec<u32> = (0..250).filter(|id| *id != 7).collect();
    expected.push(7); // its last write came last
    assert_eq!(ids, expected, "queue order, one write per key");
    let rows = table.rows.lock().unwrap().clone();
    assert_eq!(rows.len(), 250);
    assert_eq!(rows[&7], 2);
    assert!(
        rows.iter()
            .all(|(id, v)| *v == if *id == 7 { 2 } else { 1 })
    );

    // Nothing queued: no call with an empty batch.
    assert_eq!(cache.flush_pending_writes().await.unwrap(), 0);
    assert_eq!(table.calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_failed_batch_is_retried_whole_and_written_once_it_succeeds() {
    let cache: Cache<u64> = Cache::in_memory();
    let table = Table::default();
    table.fail_first.store(2, Ordering::SeqCst);
    let service = CacheLayer::write_behind(cache.clone())
        .key(key)
        .value(|row: &Row| Some(row.1))
        .batch_interval(Duration::from_secs(3600))
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .writes_batches()
        .layer(table.writer());
    for id in 0..10u32 {
        service.clone().oneshot((id, u64::from(id))).await.unwrap();
    }
    assert_eq!(cache.flush_pending_writes().await.unwrap(), 10);
    // The first call failed whole; each write then retried on its own (jittered) backoff,
    // in batches of those due together; after the two failed calls, each written once.
    let calls = table.calls.lock().unwrap().clone();
    assert_eq!(calls[0].len(), 10);
    let mut succeeded: Vec<u32> = calls[2..].iter().flatten().map(|row| row.0).collect();
    succeeded.sort();
    assert_eq!(succeeded, (0..10).collect::<Vec<_>>(), "{calls:?}");
    let rows = table.rows.lock().unwrap().clone();
    assert_eq!(rows, (0..10).map(|id| (id, u64::from(id))).collect());
}

#[tokio::test]
async fn a_batch_that_keeps_failing_is_dead_lettered_write_by_write() {
    let cache: Cache<u64> = Cache::in_memory();
    let table = Table::default();
    table.fail_first.store(usize::MAX, Ordering::SeqCst);
    let letters = Arc::new(Mutex::new(Vec::new()));
    let service = CacheLayer::write_behind(cache.clone())
        .key(key)
        .value(|row: &Row| Some(row.1))
        .batch_interval(Duration::from_secs(3600))
        .max_attempts(3)
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .on_dead_letter({
            let letters = letters.clone();
            move |letter: DeadLetter<Row>| {
                letters.lock().unwrap().push((
                    letter.request,
                    letter.attempts,
                    letter.error.to_string(),
                ))
            }
        })
        .writes_batches()
        .layer(table.writer());
    for id in 0..4u32 {
        service.clone().oneshot((id, 9)).await.unwrap();
    }
    assert_eq!(cache.flush_pending_writes().await.unwrap(), 0);
    // Each write tried three times, in whatever batches their backoffs fell into.
    let calls = table.calls.lock().unwrap().clone();
    assert_eq!(calls[0].len(), 4);
    for id in 0..4u32 {
        let tries = calls.iter().flatten().filter(|row| row.0 == id).count();
        assert_eq!(tries, 3, "{calls:?}");
    }
    let mut letters = letters.lock().unwrap().clone();
    letters.sort();
    assert_eq!(letters.len(), 4);
    for (i, (request, attempts, error)) in letters.into_iter().enumerate() {
        assert_eq!(request, (i as u32, 9));
        assert_eq!(attempts, 3);
        assert!(
            error.starts_with("the batch of ") && error.ends_with("failed: database down"),
            "{error}"
        );
    }
    assert!(table.rows.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_panicking_batch_writer_is_a_failed_attempt_not_a_dead_worker() {
    let cache: Cache<u64> = Cache::in_memory();
    let table = Table::default();
    table.panic_first.store(1, Ordering::SeqCst);
    let service = CacheLayer::write_behind(cache.clone())
        .key(key)
        .value(|row: &Row| Some(row.1))
        .batch_interval(Duration::from_secs(3600))
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .writes_batches()
        .layer(table.writer());
    for id in 0..5u32 {
        service.clone().oneshot((id, 3)).await.unwrap();
    }
    assert_eq!(cache.flush_pending_writes().await.unwrap(), 5);
    let calls = table.calls.lock().unwrap().clone();
    assert_eq!(calls[0].len(), 5);
    assert_eq!(
        calls[1..].iter().map(Vec::len).sum::<usize>(),
        5,
        "{calls:?}"
    );
    // The worker lives on: the next writes are written too.
    service.clone().oneshot((9, 4)).await.unwrap();
    assert_eq!(cache.flush_pending_writes().await.unwrap(), 1);
    assert_eq!(table.rows.lock().unwrap().len(), 6);
}

#[tokio::test]
async fn the_worker_writes_full_batches_on_its_own() {
    let cache: Cache<u64> = Cache::in_memory();
    let table = Table::default();
    let service = CacheLayer::write_behind(cache.clone())
        .key(key)
        .value(|row: &Row| Some(row.1))
        .batch_interval(Duration::from_millis(20))
        .max_batch(64)
        .capacity(256)
        .writes_batches()
        .layer(table.writer());
    // Four times the capacity: the queue drains by itself, in batches, while writes arrive.
    let writes = futures_util::future::join_all((0..1024u32).map(|id| {
        let service = service.clone();
        async move { service.oneshot((id, 1)).await.unwrap() }
    }));
    tokio::time::timeout(Duration::from_secs(30), writes)
        .await
        .expect("writes are acknowledged while the worker drains the queue");
    cache.flush_pending_writes().await.unwrap();
    assert_eq!(table.rows.lock().unwrap().len(), 1024);
    let sizes = table.call_sizes();
    assert_eq!(sizes.iter().sum::<usize>(), 1024, "each write once");
    assert!(
        sizes.iter().all(|size| (1..=64).contains(size)),
        "{sizes:?}"
    );
    assert!(
        sizes.len() < 1024 / 4,
        "batches, not single writes: {sizes:?}"
    );
}

#[tokio::test]
async fn after_close_a_write_is_a_batch_of_one() {
    let cache: Cache<u64> = Cache::in_memory();
    let table = Table::default();
    let service = CacheLayer::write_behind(cache.clone())
        .key(key)
        .value(|row: &Row| Some(row.1))
        .writes_batches()
        .layer(table.writer());
    service.clone().oneshot((1, 1)).await.unwrap();
    assert_eq!(cache.close().await.unwrap(), 1);
    // Straight to the writer: its own response, for a batch of one.
    assert_eq!(service.clone().oneshot((2, 2)).await.unwrap(), 1);
    assert_eq!(table.call_sizes(), [1, 1]);
    assert_eq!(table.rows.lock().unwrap().get(&2), Some(&2));
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_queue_hands_its_rounds_to_the_batch_writer() {
    use tower_caching::store::{RedisConfig, RedisStore};
    use tower_caching::strategy::StreamQueue;

    let server = support::RedisServer::spawn();
    let store = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    let cache: Cache<u64> = Cache::in_memory();
    let table = Table::default();
    table.fail_first.store(1, Ordering::SeqCst);
    let service = CacheLayer::write_behind(cache.clone())
        .key(key)
        .value(|row: &Row| Some(row.1))
        .batch_interval(Duration::from_secs(3600))
        .max_batch(100)
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .durable(StreamQueue::new(&store, "batches"))
        .writes_batches()
        .layer(table.writer());
    futures_util::future::join_all((0..150u32).map(|id| service.clone().oneshot((id, 5))))
        .await
        .into_iter()
        .for_each(|written| assert_eq!(written.unwrap(), 0));
    // The worker writes once 100 wait; the flush, the rest and the retries.
    for _ in 0..500 {
        cache.flush_pending_writes().await.unwrap();
        if table.rows.lock().unwrap().len() == 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows = table.rows.lock().unwrap().clone();
    assert_eq!(rows, (0..150).map(|id| (id, 5)).collect());
    let calls = table.calls.lock().unwrap().clone();
    // One call per round of the worker (a new instance's worker runs rounds while writes
    // arrive), not one per write; the first call failed whole.
    let sizes = table.call_sizes();
    assert!(sizes.iter().all(|size| *size <= 100), "{sizes:?}");
    assert!(sizes.iter().any(|size| *size > 1), "{sizes:?}");
    assert!(calls.len() < 150, "batches, not single writes: {sizes:?}");
    let written: usize = calls[1..].iter().map(Vec::len).sum();
    assert!(written >= 150, "{sizes:?}");
    cache.close().await.unwrap();
}
