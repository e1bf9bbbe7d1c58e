//! What writes could not do to a failing store, remembered until the store answers again
//! (FusionCache's auto-recovery): the keys, patterns and tags whose invalidation or set
//! failed, each stamped with when it was owed, latest wins.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::key::{Key, Pattern, Tag};
use crate::metrics::Observer;

/// How many keys one repair round deletes, in one round trip.
const BATCH: usize = 1000;

/// The book of owed repairs.
#[derive(Debug)]
pub(super) struct Repairs {
    /// How many keys, patterns and tags are owed: every get reads it, so while nothing is
    /// owed the hit path pays one relaxed load.
    owed: AtomicUsize,
    /// Stamps operations, so that a write issued after a repair was owed settles it and one
    /// issued before does not.
    clock: AtomicU64,
    /// Whether a repair task runs.
    pub(super) draining: AtomicBool,
    capacity: usize,
    book: Mutex<Book>,
    observer: Observer,
}

#[derive(Debug, Default)]
struct Book {
    keys: HashMap<Key, u64>,
    by_stamp: BTreeMap<u64, Key>,
    patterns: Vec<(Pattern, u64)>,
    tags: Vec<(Tag, u64)>,
    dropped: u64,
}

impl Book {
    fn len(&self) -> usize {
        self.keys.len() + self.patterns.len() + self.tags.len()
    }
}

/// One round of repairs: what was owed when it was taken, with the stamps it was owed at.
#[derive(Debug, Default)]
pub(super) struct Round {
    pub(super) keys: Vec<(Key, u64)>,
    pub(super) patterns: Vec<(Pattern, u64)>,
    pub(super) tags: Vec<(Tag, u64)>,
}

impl Round {
    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.patterns.is_empty() && self.tags.is_empty()
    }
}

impl Repairs {
    pub(super) fn new(capacity: usize, observer: Observer) -> Self {
        Repairs {
            observer,
            owed: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            capacity: capacity.max(1),
            book: Mutex::new(Book::default()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, book: &Book) {
        self.owed.store(book.len(), Ordering::Release);
        self.observer.repairs_owed(book.len());
    }

    /// A stamp for an operation about to be sent.
    pub(super) fn stamp(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// How many keys, patterns and tags are owed.
    pub(super) fn owed(&self) -> usize {
        self.owed.load(Ordering::Acquire)
    }

    /// Owes a delete of every key of `keys`. Past the capacity the oldest debt is dropped
    /// (and counted): its key may serve its old value until its TTL.
    pub(super) fn owe_keys<'a>(&self, keys: impl IntoIterator<Item = &'a Key>) {
        let mut book = self.book();
        for key in keys {
            let stamp = self.stamp();
            if let Some(old) = book.keys.insert(key.clone(), stamp) {
                book.by_stamp.remove(&old);
            }
            book.by_stamp.insert(stamp, key.clone());
            if book.keys.len() > self.capacity
                && let Some((_, oldest)) = book.by_stamp.pop_first()
            {
                book.keys.remove(&oldest);
                book.dropped += 1;
                crate::log::warn_summarised!(
                    "repair_dropped",
                    dropped = book.dropped,
                    capacity = self.capacity,
                    "too many keys owe a repair: the oldest is forgotten and may serve its old value until it expires"
                );
            }
        }
        self.publish(&book);
    }

    /// Owes a pattern delete.
    pub(super) fn owe_pattern(&self, pattern: &Pattern) {
        let stamp = self.stamp();
        let mut book = self.book();
        book.patterns.retain(|(owed, _)| owed != pattern);
        book.patterns.push((pattern.clone(), stamp));
        self.publish(&book);
    }

    /// Owes a tag invalidation.
    pub(super) fn owe_tag(&self, tag: &Tag) {
        let stamp = self.stamp();
        let mut book = self.book();
        book.tags.retain(|(owed, _)| owed != tag);
        book.tags.push((tag.clone(), stamp));
        self.publish(&book);
    }

    /// An operation stamped `stamp` set or deleted `keys`: it settles what they owed
    /// before it. Writes sent earlier may still land before it, never after (one
    /// connection keeps its order), so the key now holds what the latest write wanted.
    pub(super) fn settle_keys<'a>(&self, keys: impl IntoIterator<Item = &'a Key>, stamp: u64) {
        if self.owed() == 0 {
            return;
        }
        let mut book = self.book();
        for key in keys {
            if book.keys.get(key).is_some_and(|owed| *owed < stamp) {
                let owed = book.keys.remove(key).expect("just seen");
                book.by_stamp.remove(&owed);
            }
        }
        self.publish(&book);
    }

    /// A pattern delete stamped `stamp` succeeded.
    pub(super) fn settle_pattern(&self, pattern: &Pattern, stamp: u64) {
        if self.owed() == 0 {
            return;
        }
        let mut book = self.book();
        book.patterns
            .retain(|(owed, at)| !(owed == pattern && *at < stamp));
        self.publish(&book);
    }

    /// A tag invalidation stamped `stamp` succeeded.
    pub(super) fn settle_tag(&self, tag: &Tag, stamp: u64) {
        if self.owed() == 0 {
            return;
        }
        let mut book = self.book();
        book.tags.retain(|(owed, at)| !(owed == tag && *at < stamp));
        self.publish(&book);
    }

    /// Whether reads of `key` must not trust the store yet: it owes a repair (a pattern
    /// matching it, or any tag, whose keys are unknown here).
    pub(super) fn bypasses(&self, key: &Key) -> bool {
        if self.owed() == 0 {
            return false;
        }
        let book = self.book();
        !book.tags.is_empty()
            || book.keys.contains_key(key)
            || book.patterns.iter().any(|(p, _)| p.matches(key.as_str()))
    }

    /// What to repair next: up to a batch of keys, and every pattern and tag.
    pub(super) fn next_round(&self) -> Round {
        let book = self.book();
        Round {
            keys: book
                .by_stamp
                .iter()
                .take(BATCH)
                .map(|(stamp, key)| (key.clone(), *stamp))
                .collect(),
            patterns: book.patterns.clone(),
            tags: book.tags.clone(),
        }
    }

    /// The keys of `round` were deleted: what they owed then is paid, what they owed
    /// since is not.
    pub(super) fn repaired_keys(&self, keys: &[(Key, u64)]) {
        let mut book = self.book();
        for (key, stamp) in keys {
            if book.keys.get(key) == Some(stamp) {
                book.keys.remove(key);
                book.by_stamp.remove(stamp);
            }
        }
        self.publish(&book);
    }

    /// A pattern of a round was deleted.
    pub(super) fn repaired_pattern(&self, pattern: &Pattern, stamp: u64) {
        let mut book = self.book();
        book.patterns
            .retain(|(owed, at)| !(owed == pattern && *at == stamp));
        self.publish(&book);
    }

    /// A tag of a round was invalidated.
    pub(super) fn repaired_tag(&self, tag: &Tag, stamp: u64) {
        let mut book = self.book();
        book.tags
            .retain(|(owed, at)| !(owed == tag && *at == stamp));
        self.publish(&book);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key::new(name).unwrap()
    }

    #[test]
    fn a_later_write_settles_an_owed_key_an_earlier_one_does_not() {
        let repairs = Repairs::new(10, Observer::default());
        let before = repairs.stamp();
        repairs.owe_keys([&key("a")]);
        repairs.settle_keys([&key("a")], before);
        assert!(repairs.bypasses(&key("a")), "a write sent before the debt");
        let after = repairs.stamp();
        repairs.settle_keys([&key("a")], after);
        assert!(!repairs.bypasses(&key("a")));
        assert_eq!(repairs.owed(), 0);
    }

    #[test]
    fn a_repair_round_pays_only_what_was_owed_when_it_was_taken() {
        let repairs = Repairs::new(10, Observer::default());
        repairs.owe_keys([&key("a"), &key("b")]);
        let round = repairs.next_round();
        repairs.owe_keys([&key("a")]); // failed again meanwhile
        repairs.repaired_keys(&round.keys);
        assert!(repairs.bypasses(&key("a")));
        assert!(!repairs.bypasses(&key("b")));
    }

    #[test]
    fn the_book_is_bounded_and_forgets_the_oldest() {
        let repairs = Repairs::new(2, Observer::default());
        repairs.owe_keys([&key("a"), &key("b"), &key("c")]);
        assert_eq!(repairs.owed(), 2);
        assert!(!repairs.bypasses(&key("a")));
        assert!(repairs.bypasses(&key("c")));
    }

    #[test]
    fn patterns_bypass_matching_keys_and_tags_bypass_all() {
        let repairs = Repairs::new(10, Observer::default());
        repairs.owe_pattern(&Pattern::prefix("entry:"));
        assert!(repairs.bypasses(&key("entry:1")));
        assert!(!repairs.bypasses(&key("config:1")));
        let round = repairs.next_round();
        repairs.repaired_pattern(&round.patterns[0].0, round.patterns[0].1);
        assert_eq!(repairs.owed(), 0);
        repairs.owe_tag(&Tag::new("t").unwrap());
        assert!(repairs.bypasses(&key("config:1")));
    }
}
