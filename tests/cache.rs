//! The typed `Cache` handle on both stores: round trips, bad bytes, size limits,
//! coalescing, cancellation, close.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tower_caching::key::{Key, KeyBuilder};
use tower_caching::store::{MemoryStore, Store, StoreValue};
use tower_caching::{Cache, CacheError, LoadError};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    id: String,
    key: String,
    key_type: String,
    ispb: String,
    owner_name: String,
}

fn entry(id: &str) -> Entry {
    Entry {
        id: id.into(),
        key: format!("+55119{id}"),
        key_type: "PHONE".into(),
        ispb: "12345678".into(),
        owner_name: "Ana Souza".into(),
    }
}

async fn typed_round_trip<S: Store>(store: S, prefix: &str) {
    let cache: Cache<Entry, S> = Cache::new(store);
    let keys = KeyBuilder::new().prefix(prefix);
    let key = keys.entry("e1");
    assert_eq!(cache.get(&key).await.unwrap(), None);
    cache
        .set(&key, &entry("e1"), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Some(entry("e1")));
    assert!(cache.exists(&key).await.unwrap());
    cache
        .set_many(
            &[
                (keys.entry("e2"), entry("e2")),
                (keys.entry("e3"), entry("e3")),
            ],
            None,
        )
        .await
        .unwrap();
    let many = cache
        .get_many(&[keys.entry("e2"), keys.entry("nope"), keys.entry("e3")])
        .await
        .unwrap();
    assert_eq!(many, vec![Some(entry("e2")), None, Some(entry("e3"))]);
    assert_eq!(cache.delete_pattern(&keys.entries()).await.unwrap(), 3);
    assert!(!cache.delete(&key).await.unwrap());
}

async fn undecodable_values_are_typed_errors_and_misses<S: Store>(store: S, prefix: &str) {
    let cache: Cache<Entry, S> = Cache::new(store.clone());
    let keys = KeyBuilder::new().prefix(prefix);

    let foreign = keys.entry("foreign");
    store
        .set(&foreign, StoreValue::from_static(b"{\"id\":\"x\"}"), None)
        .await
        .unwrap();
    assert!(matches!(
        cache.get(&foreign).await,
        Err(CacheError::Corrupt { .. })
    ));

    let truncated = keys.entry("truncated");
    let other: Cache<String, S> = Cache::new(store.clone());
    other
        .set(&truncated, &"a string, not an entry".to_string(), None)
        .await
        .unwrap();
    let error = cache.get(&truncated).await.unwrap_err();
    assert!(matches!(error, CacheError::Decode(_)), "{error:?}");
    assert_eq!(error.kind(), "decode");

    // The read path treats both as misses, loads and repairs the entry.
    for key in [&foreign, &truncated] {
        let loaded = cache
            .get_or_load(key, None, || async { Ok::<_, String>(entry("fresh")) })
            .await
            .unwrap();
        assert_eq!(loaded, entry("fresh"));
        assert_eq!(cache.get(key).await.unwrap(), Some(entry("fresh")));
    }
    // A batch read skips the bad value instead of failing.
    store
        .set(&foreign, StoreValue::from_static(b"\xCA\x01garbage"), None)
        .await
        .unwrap();
    assert_eq!(
        cache
            .get_many(&[foreign.clone(), truncated.clone()])
            .await
            .unwrap(),
        vec![None, Some(entry("fresh"))]
    );
}

async fn oversized_values_are_refused_but_served<S: Store>(store: S, prefix: &str) {
    let cache: Cache<String, S> = Cache::builder(store).max_value_size(64).build();
    let key = KeyBuilder::new().prefix(prefix).config("big");
    let big = "x".repeat(100);
    let error = cache.set(&key, &big, None).await.unwrap_err();
    assert!(
        matches!(error, CacheError::ValueTooLarge { max: 64, .. }),
        "{error:?}"
    );
    let loaded = cache
        .get_or_load(&key, None, {
            let big = big.clone();
            || async move { Ok::<_, String>(big) }
        })
        .await
        .unwrap();
    assert_eq!(loaded, big);
    assert_eq!(cache.get(&key).await.unwrap(), None);
}

async fn concurrent_misses_share_one_load<S: Store>(store: S, prefix: &str) {
    let cache: Cache<Entry, S> = Cache::new(store);
    let keys = KeyBuilder::new().prefix(prefix);
    let calls = Arc::new(AtomicU32::new(0));

    let ok = keys.entry("hot");
    let mut waiters = Vec::new();
    for _ in 0..200 {
        let (cache, key, calls) = (cache.clone(), ok.clone(), calls.clone());
        waiters.push(tokio::spawn(async move {
            cache
                .get_or_load(&key, None, move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, String>(entry("hot"))
                })
                .await
        }));
    }
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), Ok(entry("hot")));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    calls.store(0, Ordering::SeqCst);
    let failing = keys.entry("failing");
    let mut waiters = Vec::new();
    for _ in 0..200 {
        let (cache, key, calls) = (cache.clone(), failing.clone(), calls.clone());
        waiters.push(tokio::spawn(async move {
            cache
                .get_or_load(&key, None, move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<Entry, _>("database down".to_string())
                })
                .await
        }));
    }
    for waiter in waiters {
        assert_eq!(
            waiter.await.unwrap(),
            Err(LoadError::Failed(Arc::new("database down".to_string())))
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A failed load is not cached, and the next miss loads again.
    assert_eq!(cache.get(&failing).await.unwrap(), None);
    let again = cache
        .get_or_load(&failing, None, || async { Ok::<_, String>(entry("back")) })
        .await;
    assert_eq!(again, Ok(entry("back")));
}

async fn cancelled_leader_does_not_stall_waiters<S: Store>(store: S, prefix: &str) {
    let cache: Cache<Entry, S> = Cache::new(store);
    let key = KeyBuilder::new().prefix(prefix).entry("slow");
    let leader = tokio::spawn({
        let (cache, key) = (cache.clone(), key.clone());
        async move {
            cache
                .get_or_load(&key, None, || async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, String>(entry("slow"))
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let follower = tokio::spawn({
        let (cache, key) = (cache.clone(), key.clone());
        async move {
            cache
                .get_or_load(&key, None, || async {
                    Err::<Entry, _>("the follower must not load".to_string())
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    leader.abort();
    let followed = tokio::time::timeout(Duration::from_secs(2), follower)
        .await
        .expect("the follower stalled")
        .unwrap();
    assert_eq!(followed, Ok(entry("slow")));
    assert_eq!(cache.get(&key).await.unwrap(), Some(entry("slow")));
}

async fn close_refuses_later_calls<S: Store>(store: S, prefix: &str) {
    let cache: Cache<Entry, S> = Cache::new(store);
    let key = KeyBuilder::new().prefix(prefix).entry("k");
    assert_eq!(cache.close().await.unwrap(), 0);
    assert!(cache.is_closed());
    assert!(matches!(cache.get(&key).await, Err(CacheError::Closed)));
    assert!(matches!(
        cache.set(&key, &entry("k"), None).await,
        Err(CacheError::Closed)
    ));
    // get_or_load still serves from the loader.
    let loaded = cache
        .get_or_load(&key, None, || async { Ok::<_, String>(entry("k")) })
        .await;
    assert_eq!(loaded, Ok(entry("k")));
    assert_eq!(cache.close().await.unwrap(), 0);
}

async fn ttl_expiration<S: Store>(store: S, prefix: &str) {
    let cache: Cache<Entry, S> = Cache::new(store);
    let key = KeyBuilder::new().prefix(prefix).entry("ttl");
    cache
        .set(&key, &entry("ttl"), Some(Duration::from_millis(600)))
        .await
        .unwrap();
    assert!(cache.get(&key).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(cache.get(&key).await.unwrap(), None);
    assert!(!cache.exists(&key).await.unwrap());
}

async fn bulk_get_or_load_loads_only_misses_in_one_call<S: Store>(store: S, prefix: &str) {
    let cache: Cache<Entry, S> = Cache::new(store);
    let keys = KeyBuilder::new().prefix(prefix);
    cache
        .set(&keys.entry("1"), &entry("1"), None)
        .await
        .unwrap();
    let wanted: Vec<Key> = ["1", "2", "3", "4"]
        .iter()
        .map(|id| keys.entry(id))
        .collect();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let loader = |calls: Arc<Mutex<Vec<Vec<Key>>>>| {
        move |missing: Vec<Key>| async move {
            calls.lock().unwrap().push(missing.clone());
            // The database knows entries 2 and 3, not 4.
            let found: HashMap<Key, Entry> = missing
                .into_iter()
                .filter(|k| !k.as_str().ends_with(":4"))
                .map(|k| {
                    let id = k.as_str().rsplit(':').next().unwrap().to_string();
                    (k, entry(&id))
                })
                .collect();
            Ok::<_, String>(found)
        }
    };
    let values = cache
        .get_many_or_load(
            &wanted,
            Some(Duration::from_secs(60)),
            loader(calls.clone()),
        )
        .await
        .unwrap();
    assert_eq!(
        values,
        vec![Some(entry("1")), Some(entry("2")), Some(entry("3")), None]
    );
    assert_eq!(calls.lock().unwrap().clone(), vec![wanted[1..].to_vec()]);
    // The loaded values were cached; the absent one was not.
    let again = cache
        .get_many_or_load(&wanted, None, loader(calls.clone()))
        .await
        .unwrap();
    assert_eq!(again, values);
    assert_eq!(
        calls.lock().unwrap().last().unwrap(),
        &vec![wanted[3].clone()]
    );

    let failed = cache
        .get_many_or_load(&[keys.entry("9")], None, |_| async {
            Err::<HashMap<Key, Entry>, _>("down".to_string())
        })
        .await;
    assert_eq!(failed, Err(LoadError::Failed(Arc::new("down".to_string()))));
}

async fn bulk_and_single_loads_coalesce<S: Store>(store: S, prefix: &str) {
    let cache: Cache<Entry, S> = Cache::new(store);
    let keys = KeyBuilder::new().prefix(prefix);
    let single_calls = Arc::new(AtomicU32::new(0));

    // Each load says when it has started, and finishes when the test lets it: the order of
    // events below does not rest on sleeps.
    let (single_started, single_running) = tokio::sync::oneshot::channel();
    let (finish_single, single_may_finish) = tokio::sync::oneshot::channel::<()>();
    let (batch_started, batch_running) = tokio::sync::oneshot::channel();
    let (finish_batch, batch_may_finish) = tokio::sync::oneshot::channel::<()>();
    // A single-key load in flight: the batch waits for it instead of loading the key again.
    let slow_single = tokio::spawn({
        let (cache, key, calls) = (cache.clone(), keys.entry("a"), single_calls.clone());
        async move {
            cache
                .get_or_load(&key, None, move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let _ = single_started.send(());
                    let _ = single_may_finish.await;
                    Ok::<_, String>(entry("a"))
                })
                .await
        }
    });
    single_running.await.unwrap();
    let batch_keys = Arc::new(Mutex::new(Vec::new()));
    let batch = tokio::spawn({
        let (cache, wanted, seen) = (
            cache.clone(),
            vec![keys.entry("a"), keys.entry("b"), keys.entry("c")],
            batch_keys.clone(),
        );
        async move {
            cache
                .get_many_or_load(&wanted, None, move |missing: Vec<Key>| async move {
                    seen.lock().unwrap().extend(missing.clone());
                    let _ = batch_started.send(());
                    let _ = batch_may_finish.await;
                    let found: HashMap<Key, Entry> = missing
                        .into_iter()
                        .filter(|k| k.as_str().ends_with(":b"))
                        .map(|k| (k, entry("b")))
                        .collect();
                    Ok::<_, String>(found)
                })
                .await
        }
    });
    batch_running.await.unwrap();
    // A single-key load of a key the batch is loading waits for the batch…
    let from_batch = tokio::spawn({
        let (cache, key) = (cache.clone(), keys.entry("b"));
        async move {
            cache
                .get_or_load(&key, None, || async {
                    Err::<Entry, _>("must not load".to_string())
                })
                .await
        }
    });
    tokio::task::yield_now().await;
    let _ = finish_single.send(());
    let _ = finish_batch.send(());
    assert_eq!(from_batch.await.unwrap(), Ok(entry("b")));
    // …and loads itself when the batch did not find the key.
    let not_in_batch = cache
        .get_or_load(&keys.entry("c"), None, || async {
            Ok::<_, String>(entry("c-single"))
        })
        .await;
    assert_eq!(not_in_batch, Ok(entry("c-single")));

    assert_eq!(slow_single.await.unwrap(), Ok(entry("a")));
    assert_eq!(
        batch.await.unwrap(),
        Ok(vec![Some(entry("a")), Some(entry("b")), None])
    );
    assert_eq!(single_calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        batch_keys.lock().unwrap().clone(),
        vec![keys.entry("b"), keys.entry("c")]
    );
}

on_every_store!(
    typed_round_trip,
    undecodable_values_are_typed_errors_and_misses,
    oversized_values_are_refused_but_served,
    concurrent_misses_share_one_load,
    cancelled_leader_does_not_stall_waiters,
    close_refuses_later_calls,
    ttl_expiration,
    bulk_get_or_load_loads_only_misses_in_one_call,
    bulk_and_single_loads_coalesce,
);

#[tokio::test]
async fn memory_hit_reuses_the_decoded_value_and_other_types_decode_bytes() {
    let store = MemoryStore::new();
    let small: Cache<u32> = Cache::new(store.clone());
    let wide: Cache<u64> = Cache::new(store.clone());
    let key = Key::new("n").unwrap();
    small.set(&key, &7, None).await.unwrap();
    let stored = store.get(&key).await.unwrap().unwrap();
    assert_eq!(
        stored.decoded().and_then(|d| d.downcast_ref::<u32>()),
        Some(&7)
    );
    // Another value type does not see the u32 and decodes the bytes instead.
    assert_eq!(wide.get(&key).await.unwrap(), Some(7));
}

#[cfg(feature = "msgpack")]
#[tokio::test]
async fn msgpack_codec_round_trips_on_redis() {
    let cache: Cache<Entry, _, _> = Cache::builder(support::shared_redis_store().await)
        .codec(tower_caching::codec::MsgPack)
        .build();
    let key = KeyBuilder::new()
        .prefix(&support::unique_prefix("msgpack"))
        .entry("m");
    cache.set(&key, &entry("m"), None).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Some(entry("m")));
}
