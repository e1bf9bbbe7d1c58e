//! `RedisStore::batch_lookups` against spawned redis-server processes: lookups at once leave
//! as `MGET`s and each gets its own value; one at a time they stay `GET`s; a paused, killed
//! or restarted server, and lookups dropped while they wait, leave nothing stuck.
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use support::RedisServer;
use tower_caching::Cache;
use tower_caching::key::Key;
use tower_caching::store::{RedisConfig, RedisStore, Store, StoreError, StoreValue};

async fn batched(server: &RedisServer, timeout: Duration) -> RedisStore {
    RedisStore::connect(RedisConfig::new(server.url()).command_timeout(timeout))
        .await
        .unwrap()
        .batch_lookups()
}

async fn calls(server: &RedisServer, command: &str) -> u64 {
    support::command_calls(&server.url(), command).await
}

async fn reset_stats(server: &RedisServer) {
    support::reset_command_stats(&server.url()).await
}

fn key(i: usize) -> Key {
    Key::new(format!("batched:{i}")).unwrap()
}

#[tokio::test]
async fn lookups_at_once_leave_together_and_each_gets_its_own_value() {
    let server = RedisServer::spawn();
    let store = batched(&server, Duration::from_secs(5)).await;
    for i in (0..300).filter(|i| i % 3 != 0) {
        store
            .set(
                &key(i),
                StoreValue::from(format!("value {i}").into_bytes()),
                None,
            )
            .await
            .unwrap();
    }
    // Something else than a string under one key: absent for a lookup, as `MGET` says.
    let mut raw = support::raw_connection(&server.url()).await;
    let _: () = redis::cmd("DEL")
        .arg("batched:1")
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("batched:1")
        .arg("field")
        .arg("x")
        .query_async(&mut raw)
        .await
        .unwrap();
    reset_stats(&server).await;

    let found = join_all((0..300).map(|i| store.get(&key(i)))).await;
    for (i, found) in found.into_iter().enumerate() {
        if i == 1 {
            // A `GET` rejects it, an `MGET` says it is absent: a miss either way.
            assert!(
                matches!(found, Ok(None) | Err(StoreError::Rejected { .. })),
                "{found:?}"
            );
            continue;
        }
        let found = found.unwrap().map(|value| value.bytes().to_vec());
        let expected = (i % 3 != 0).then(|| format!("value {i}").into_bytes());
        assert_eq!(found, expected, "lookup {i} got another's value");
    }
    let (gets, mgets) = (calls(&server, "get").await, calls(&server, "mget").await);
    assert!(mgets >= 1, "nothing was batched ({gets} GETs)");
    assert!(
        gets + mgets <= 30,
        "300 lookups at once took {gets} GETs and {mgets} MGETs"
    );
}

#[tokio::test]
async fn one_lookup_at_a_time_is_a_get() {
    let server = RedisServer::spawn();
    let store = batched(&server, Duration::from_secs(5)).await;
    store
        .set(&key(0), StoreValue::from_static(b"v"), None)
        .await
        .unwrap();
    reset_stats(&server).await;
    for _ in 0..50 {
        let value = store.get(&key(0)).await.unwrap().unwrap();
        assert_eq!(value.bytes().as_ref(), b"v");
    }
    assert_eq!(calls(&server, "get").await, 50);
    assert_eq!(calls(&server, "mget").await, 0);
}

#[tokio::test]
async fn a_typed_cache_reads_through_batches() {
    let server = RedisServer::spawn();
    let store = batched(&server, Duration::from_secs(5)).await;
    let cache: Cache<u64, RedisStore> = Cache::new(store);
    for i in 0..64 {
        cache.set(&key(i), &(i as u64), None).await.unwrap();
    }
    let keys: Vec<Key> = (0..128).map(|i| key(i % 64)).collect();
    let read = join_all(keys.iter().map(|key| cache.get(key))).await;
    for (i, value) in read.into_iter().enumerate() {
        assert_eq!(value.unwrap(), Some((i % 64) as u64));
    }
}

/// Lookups that waited behind a stalled server and were dropped, or timed out, are not
/// fetched later and leave no place taken: once the server answers again, lookups are as
/// quick as before.
#[tokio::test]
async fn lookups_dropped_or_timed_out_behind_a_paused_server_leave_nothing_stuck() {
    let server = RedisServer::spawn();
    let timeout = Duration::from_millis(400);
    let store = batched(&server, timeout).await;
    store
        .set(&key(0), StoreValue::from_static(b"v"), None)
        .await
        .unwrap();

    server.pause(true);
    // Dropped while they wait: 100 lookups given up after 50 ms.
    let dropped = join_all((0..100).map(|_| {
        let store = store.clone();
        async move { tokio::time::timeout(Duration::from_millis(50), store.get(&key(0))).await }
    }))
    .await;
    assert!(
        dropped.iter().all(Result::is_err),
        "a lookup answered while paused"
    );
    // Timed out while they wait: each within its bound, as a timeout.
    let started = Instant::now();
    let timed_out = join_all((0..100).map(|_| store.get(&key(0)))).await;
    let took = started.elapsed();
    for result in timed_out {
        assert!(
            matches!(result, Err(StoreError::Timeout { .. })),
            "{result:?}"
        );
    }
    assert!(took < timeout * 6, "timeouts took {took:?}");
    server.pause(false);

    // What the connection still owes arrives; then lookups are answered at once again.
    let settled = Instant::now() + Duration::from_secs(10);
    loop {
        if store.get(&key(0)).await.is_ok() {
            break;
        }
        assert!(Instant::now() < settled, "lookups never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reset_stats(&server).await;
    let found = join_all((0..200).map(|_| store.get(&key(0)))).await;
    assert!(found.iter().all(|found| found.as_ref().unwrap().is_some()));
    let (gets, mgets) = (calls(&server, "get").await, calls(&server, "mget").await);
    assert!(
        gets + mgets <= 30,
        "given-up lookups were sent anyway, or places stayed taken: {gets} GETs, {mgets} MGETs"
    );
}

#[tokio::test]
async fn a_killed_server_fails_the_batch_and_a_restarted_one_serves_it() {
    let mut server = RedisServer::spawn();
    let store = batched(&server, Duration::from_millis(500)).await;
    store
        .set(&key(0), StoreValue::from_static(b"v"), None)
        .await
        .unwrap();
    server.kill();
    let failed = join_all((0..100).map(|_| store.get(&key(0)))).await;
    assert!(
        failed.iter().all(Result::is_err),
        "a lookup answered from a dead server"
    );
    server.restart();
    let recovered = Instant::now() + Duration::from_secs(15);
    loop {
        let results = join_all((0..100).map(|_| store.get(&key(0)))).await;
        // The restarted server is empty: every lookup answers, and answers absent.
        if results.iter().all(|result| matches!(result, Ok(None))) {
            break;
        }
        assert!(Instant::now() < recovered, "lookups never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Dropping a lookup's future while its own command is out (not waiting) frees its place.
#[tokio::test]
async fn dropping_lookups_in_flight_frees_their_places() {
    let server = RedisServer::spawn();
    let store = batched(&server, Duration::from_secs(5)).await;
    store
        .set(&key(0), StoreValue::from_static(b"v"), None)
        .await
        .unwrap();
    for _ in 0..20 {
        // Polled once (sent), then dropped.
        let lookups: Vec<_> = (0..8).map(|_| store.get(&key(0))).collect();
        for mut lookup in lookups {
            let _ = futures_util::poll!(&mut lookup);
        }
    }
    reset_stats(&server).await;
    for _ in 0..10 {
        let value = tokio::time::timeout(Duration::from_secs(2), store.get(&key(0)))
            .await
            .expect("a lookup waited for places nothing frees")
            .unwrap();
        assert!(value.is_some());
    }
    assert_eq!(
        calls(&server, "mget").await,
        0,
        "one at a time, yet it waited"
    );
}

/// A value too large to read within the command timeout, asked for in a batch: the `MGET`
/// times out, the store finds out why and removes it, as after a `GET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_timed_out_on_a_huge_value_has_it_removed() {
    let server = RedisServer::spawn();
    // 50 MiB do not cross loopback in 20 ms; a small value does, most of the time (a small
    // lookup that times out only costs this test another round).
    let store = batched(&server, Duration::from_millis(20)).await;
    let mut raw = support::raw_connection(&server.url()).await;
    let _: () = redis::cmd("SET")
        .arg("batched:huge")
        .arg(vec![b'x'; 50 << 20])
        .query_async(&mut raw)
        .await
        .unwrap();
    reset_stats(&server).await;
    let removed = Instant::now() + Duration::from_secs(20);
    for round in 0.. {
        // Four lookups of absent keys take the places; the huge one waits, and leaves in a
        // batch. Fresh keys each round: a key whose `GET` timed out on a loaded machine is
        // inspected, and a lookup of it meanwhile would be refused without taking a place.
        let huge = Key::new("batched:huge").unwrap();
        let mut lookups: Vec<_> = (0..4)
            .map(|i| store.get(&Key::new(format!("batched:absent:{round}:{i}")).unwrap()))
            .collect();
        lookups.push(store.get(&huge));
        let _ = join_all(lookups).await;
        let len: u64 = redis::cmd("STRLEN")
            .arg("batched:huge")
            .query_async(&mut raw)
            .await
            .unwrap();
        if len == 0 {
            break;
        }
        assert!(Instant::now() < removed, "the 50 MiB value is still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(calls(&server, "mget").await >= 1);
    // Only the absent keys were ever read with `GET`, four per round: the huge one was
    // found, and removed, through the batch.
    assert_eq!(calls(&server, "get").await % 4, 0);
}
