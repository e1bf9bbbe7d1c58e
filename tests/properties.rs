//! Property tests: codecs round-trip and never panic on hostile bytes; keys built from any
//! input are valid, distinct, and cannot widen a pattern or choose a cluster slot.

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tower_caching::Cache;
use tower_caching::codec::{Codec, Json};
use tower_caching::key::{Key, KeyBuilder, Pattern};
use tower_caching::store::{MemoryStore, Store, StoreValue};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    id: String,
    owner_name: String,
    lookups: u64,
    tags: Vec<String>,
    score: Option<i32>,
}

fn entries() -> impl Strategy<Value = Entry> {
    (
        any::<String>(),
        any::<String>(),
        any::<u64>(),
        prop::collection::vec(any::<String>(), 0..4),
        any::<Option<i32>>(),
    )
        .prop_map(|(id, owner_name, lookups, tags, score)| Entry {
            id,
            owner_name,
            lookups,
            tags,
            score,
        })
}

fn round_trips<C: Codec<Entry>>(codec: C, entry: &Entry) {
    let mut bytes = Vec::new();
    codec.encode_into(entry, &mut bytes).unwrap();
    assert_eq!(&codec.decode(&bytes).unwrap(), entry);
}

proptest! {
    #[test]
    fn json_round_trips(entry in entries()) {
        round_trips(Json, &entry);
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_round_trips(entry in entries()) {
        round_trips(tower_caching::codec::MsgPack, &entry);
    }

    #[test]
    fn decoding_garbage_is_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Codec::<Entry>::decode(&Json, &bytes);
        #[cfg(feature = "msgpack")]
        let _ = Codec::<Entry>::decode(&tower_caching::codec::MsgPack, &bytes);
    }

    #[test]
    fn garbage_under_a_key_is_an_error_or_a_miss(bytes in prop::collection::vec(any::<u8>(), 0..64), header in any::<bool>()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let store = MemoryStore::new();
            let key = Key::new("k").unwrap();
            // Half of the cases start with a valid-looking frame header.
            let mut value = if header { vec![0xCA, 1, 0] } else { Vec::new() };
            value.extend_from_slice(&bytes);
            store.set(&key, StoreValue::from(value), None).await.unwrap();
            let cache: Cache<Entry> = Cache::new(store);
            let _ = cache.get(&key).await;
            let loaded = cache
                .get_or_load(&key, None, || async { Ok::<_, String>(Entry { id: "x".into(), owner_name: String::new(), lookups: 0, tags: vec![], score: None }) })
                .await;
            assert!(loaded.is_ok());
        });
    }

    #[test]
    fn built_keys_are_valid_and_keep_user_parts_inert(part in any::<String>(), prefix in "[a-z]{0,8}") {
        let key = KeyBuilder::new().prefix(&prefix).entry(&part);
        prop_assert!(Key::new(key.as_str()).is_ok());
        prop_assert!(key.as_str().len() <= Key::MAX_LEN);
        let user = key.as_str().rsplit_once("entry:").map(|(_, p)| p).unwrap_or("");
        prop_assert!(!user.contains(['*', '?', '[', ']', '\\', '{', '}', ':']), "{user:?}");
        prop_assert!(!user.chars().any(|c| c.is_whitespace() || c.is_control()), "{user:?}");
    }

    #[test]
    fn a_built_key_gives_back_its_part(part in any::<String>(), prefix in "[a-z]{0,8}") {
        let keys = KeyBuilder::new().prefix(&prefix);
        let key = keys.build("entry", &part);
        match keys.part_of("entry", &key) {
            Some(back) => prop_assert_eq!(back, part),
            // Only a part too long to be kept whole is given up (its key holds a digest).
            None => prop_assert!(key.as_str().contains('#')),
        }
    }

    #[test]
    fn distinct_parts_make_distinct_keys(a in any::<String>(), b in any::<String>()) {
        prop_assume!(a != b);
        let keys = KeyBuilder::new();
        prop_assert_ne!(keys.entry(&a), keys.entry(&b));
    }

    #[test]
    fn a_user_part_cannot_widen_its_pattern(part in any::<String>(), other in any::<String>()) {
        prop_assume!(part != other);
        let keys = KeyBuilder::new();
        // Invalidating one id's keys never touches another id's key.
        let pattern = Pattern::exact(keys.entry(&part).as_str());
        prop_assert!(pattern.matches(keys.entry(&part).as_str()));
        prop_assert!(!pattern.matches(keys.entry(&other).as_str()));
    }

    #[test]
    fn prefix_patterns_match_exactly_their_prefix(literal in any::<String>(), suffix in any::<String>(), other in any::<String>()) {
        let pattern = Pattern::prefix(&literal);
        let with_suffix = format!("{literal}{suffix}");
        prop_assert!(pattern.matches(&with_suffix));
        prop_assert_eq!(pattern.matches(&other), other.starts_with(&literal));
    }
}
