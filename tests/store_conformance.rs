//! One conformance suite, run against every store: `MemoryStore` and `RedisStore` on a
//! spawned redis-server.

mod support;

use std::time::Duration;

use tower_caching::key::{Key, Pattern, Tag};
use tower_caching::store::{MemoryStore, Store, StoreValue};

fn key(prefix: &str, name: &str) -> Key {
    Key::new(format!("{prefix}:{name}")).unwrap()
}

fn bytes(value: &[u8]) -> StoreValue {
    StoreValue::from(value.to_vec())
}

async fn get_bytes<S: Store>(store: &S, key: &Key) -> Option<Vec<u8>> {
    store
        .get(key)
        .await
        .expect("get")
        .map(|v| v.bytes().to_vec())
}

async fn set_then_get<S: Store>(store: S, p: &str) {
    let k = key(p, "a");
    assert_eq!(get_bytes(&store, &k).await, None);
    store.set(&k, bytes(b"one"), None).await.unwrap();
    assert_eq!(get_bytes(&store, &k).await.as_deref(), Some(&b"one"[..]));
    store.set(&k, bytes(b"two"), None).await.unwrap();
    assert_eq!(get_bytes(&store, &k).await.as_deref(), Some(&b"two"[..]));
}

async fn ttl_expires<S: Store>(store: S, p: &str) {
    let short = key(p, "short");
    let long = key(p, "long");
    let forever = key(p, "forever");
    store
        .set(&short, bytes(b"x"), Some(Duration::from_millis(500)))
        .await
        .unwrap();
    store
        .set(&long, bytes(b"y"), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    store.set(&forever, bytes(b"z"), None).await.unwrap();
    assert!(store.exists(&short).await.unwrap());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(get_bytes(&store, &short).await, None);
    assert!(!store.exists(&short).await.unwrap());
    assert!(store.exists(&long).await.unwrap());
    assert!(store.exists(&forever).await.unwrap());
}

async fn overwrite_replaces_ttl<S: Store>(store: S, p: &str) {
    let k = key(p, "k");
    store
        .set(&k, bytes(b"1"), Some(Duration::from_millis(100)))
        .await
        .unwrap();
    store.set(&k, bytes(b"2"), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(get_bytes(&store, &k).await.as_deref(), Some(&b"2"[..]));
}

async fn delete_reports_presence<S: Store>(store: S, p: &str) {
    let k = key(p, "k");
    assert!(!store.delete(&k).await.unwrap());
    store.set(&k, bytes(b"v"), None).await.unwrap();
    assert!(store.delete(&k).await.unwrap());
    assert_eq!(get_bytes(&store, &k).await, None);
}

async fn delete_many_counts_present_keys<S: Store>(store: S, p: &str) {
    let keys: Vec<Key> = (0..5).map(|i| key(p, &i.to_string())).collect();
    for k in &keys[..3] {
        store.set(k, bytes(b"v"), None).await.unwrap();
    }
    assert_eq!(store.delete_many(&keys).await.unwrap(), 3);
    for k in &keys {
        assert!(!store.exists(k).await.unwrap());
    }
    assert_eq!(store.delete_many(&[]).await.unwrap(), 0);
}

async fn pattern_delete_counts_and_stays_literal<S: Store>(store: S, p: &str) {
    for name in [
        "entry:1", "entry:2", "entry:3", "entries", "other:1", "a*:1", "a*b:1", "ab:1",
    ] {
        store.set(&key(p, name), bytes(b"v"), None).await.unwrap();
    }
    let deleted = store
        .delete_pattern(&Pattern::prefix(&format!("{p}:entry:")))
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    assert!(store.exists(&key(p, "entries")).await.unwrap());
    assert!(store.exists(&key(p, "other:1")).await.unwrap());
    // `a*` is literal: it must not take `ab:1` with it.
    let deleted = store
        .delete_pattern(&Pattern::prefix(&format!("{p}:a*")))
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    assert!(store.exists(&key(p, "ab:1")).await.unwrap());
    let deleted = store
        .delete_pattern(&Pattern::prefix(&format!("{p}:nothing")))
        .await
        .unwrap();
    assert_eq!(deleted, 0);
}

async fn pattern_delete_spans_many_scan_batches<S: Store>(store: S, p: &str) {
    let entries = (0..2500)
        .map(|i| (key(p, &format!("bulk:{i}")), bytes(b"v"), None))
        .collect();
    store.set_many(entries).await.unwrap();
    let deleted = store
        .delete_pattern(&Pattern::prefix(&format!("{p}:bulk:")))
        .await
        .unwrap();
    assert_eq!(deleted, 2500);
}

async fn multi_get_and_set<S: Store>(store: S, p: &str) {
    let keys: Vec<Key> = (0..10).map(|i| key(p, &i.to_string())).collect();
    let entries = keys
        .iter()
        .step_by(2)
        .map(|k| {
            (
                k.clone(),
                bytes(k.as_str().as_bytes()),
                Some(Duration::from_secs(60)),
            )
        })
        .collect();
    store.set_many(entries).await.unwrap();
    let values = store.get_many(&keys).await.unwrap();
    assert_eq!(values.len(), 10);
    for (i, (k, v)) in keys.iter().zip(values).enumerate() {
        if i % 2 == 0 {
            assert_eq!(v.unwrap().bytes().as_ref(), k.as_str().as_bytes());
        } else {
            assert!(v.is_none());
        }
    }
    assert!(store.get_many(&[]).await.unwrap().is_empty());
    store.set_many(Vec::new()).await.unwrap();
}

async fn binary_empty_and_large_values<S: Store>(store: S, p: &str) {
    let binary: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let k = key(p, "binary");
    store.set(&k, bytes(&binary), None).await.unwrap();
    assert_eq!(get_bytes(&store, &k).await, Some(binary));

    let k = key(p, "empty");
    store.set(&k, bytes(b""), None).await.unwrap();
    assert_eq!(get_bytes(&store, &k).await, Some(Vec::new()));
    assert!(store.exists(&k).await.unwrap());

    let large: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
    let k = key(p, "large");
    store.set(&k, bytes(&large), None).await.unwrap();
    assert_eq!(get_bytes(&store, &k).await, Some(large));
}

async fn odd_keys_round_trip<S: Store>(store: S, p: &str) {
    for name in [
        "with space",
        "ünïcödé",
        "{tag}",
        "a*b?[c]",
        "back\\slash",
        "x".repeat(900).as_str(),
    ] {
        let k = key(p, name);
        store.set(&k, bytes(name.as_bytes()), None).await.unwrap();
        assert_eq!(
            get_bytes(&store, &k).await.as_deref(),
            Some(name.as_bytes()),
            "{name}"
        );
    }
}

fn tag(prefix: &str, name: &str) -> Tag {
    Tag::new(format!("{prefix}:{name}")).unwrap()
}

async fn tags_invalidate_exactly_their_entries<S: Store>(store: S, p: &str) {
    let (a, b) = (tag(p, "a"), tag(p, "b"));
    let [k1, k2, k3, k4] = ["1", "2", "3", "4"].map(|n| key(p, n));
    let ttl = Some(Duration::from_secs(60));
    store
        .set_tagged(&k1, bytes(b"1"), ttl, std::slice::from_ref(&a))
        .await
        .unwrap();
    store
        .set_tagged(&k2, bytes(b"2"), None, &[a.clone(), b.clone()])
        .await
        .unwrap();
    store
        .set_tagged(&k3, bytes(b"3"), ttl, std::slice::from_ref(&b))
        .await
        .unwrap();
    store.set(&k4, bytes(b"4"), ttl).await.unwrap();
    assert_eq!(get_bytes(&store, &k2).await.as_deref(), Some(&b"2"[..]));

    assert_eq!(store.invalidate_tag(&a).await.unwrap(), 2);
    assert_eq!(get_bytes(&store, &k1).await, None);
    assert_eq!(get_bytes(&store, &k2).await, None);
    assert!(store.exists(&k3).await.unwrap());
    assert!(store.exists(&k4).await.unwrap());
    assert_eq!(store.invalidate_tag(&a).await.unwrap(), 0);
    // k2 is gone already: only k3 is left under b.
    assert_eq!(store.invalidate_tag(&b).await.unwrap(), 1);
    assert!(!store.exists(&k3).await.unwrap());
    assert!(
        store.exists(&k4).await.unwrap(),
        "an untagged entry was removed"
    );
}

async fn tags_span_many_batches<S: Store>(store: S, p: &str) {
    let t = tag(p, "many");
    for i in 0..2500 {
        store
            .set_tagged(
                &key(p, &i.to_string()),
                bytes(b"x"),
                None,
                std::slice::from_ref(&t),
            )
            .await
            .unwrap();
    }
    assert_eq!(store.invalidate_tag(&t).await.unwrap(), 2500);
    assert!(!store.exists(&key(p, "0")).await.unwrap());
    assert!(!store.exists(&key(p, "2499")).await.unwrap());
}

async fn tagged_entries_expire_with_their_ttl<S: Store>(store: S, p: &str) {
    let t = tag(p, "t");
    let k = key(p, "k");
    store
        .set_tagged(
            &k,
            bytes(b"x"),
            Some(Duration::from_millis(100)),
            std::slice::from_ref(&t),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(get_bytes(&store, &k).await, None);
    assert_eq!(store.invalidate_tag(&t).await.unwrap(), 0);
}

async fn odd_tags_stay_literal<S: Store>(store: S, p: &str) {
    let k = key(p, "k");
    for name in ["with space", "{slot}", "a*", "ünï:cödé"] {
        let t = tag(p, name);
        store
            .set_tagged(&k, bytes(b"x"), None, std::slice::from_ref(&t))
            .await
            .unwrap();
        // A glob-like tag does not reach other tags' entries.
        assert_eq!(
            store.invalidate_tag(&tag(p, "a")).await.unwrap(),
            0,
            "{name}"
        );
        assert_eq!(store.invalidate_tag(&t).await.unwrap(), 1, "{name}");
    }
}

macro_rules! conformance {
    ($store:ident, $make:expr) => {
        mod $store {
            use super::*;

            conformance!(@tests $make;
                set_then_get,
                ttl_expires,
                overwrite_replaces_ttl,
                delete_reports_presence,
                delete_many_counts_present_keys,
                pattern_delete_counts_and_stays_literal,
                pattern_delete_spans_many_scan_batches,
                multi_get_and_set,
                binary_empty_and_large_values,
                odd_keys_round_trip,
                tags_invalidate_exactly_their_entries,
                tags_span_many_batches,
                tagged_entries_expire_with_their_ttl,
                odd_tags_stay_literal,
            );
        }
    };
    (@tests $make:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                let prefix = support::unique_prefix(stringify!($test));
                super::$test($make, &prefix).await;
            }
        )*
    };
}

conformance!(memory, MemoryStore::new());
conformance!(redis, support::shared_redis_store().await);
#[cfg(feature = "cluster")]
conformance!(cluster, support::shared_cluster_store().await);
