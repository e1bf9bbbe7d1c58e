//! Cache keys: validated [`Key`]s, glob-safe [`Pattern`]s, the [`KeyBuilder`] with the
//! seed's key patterns, and the [`KeyExtractor`] policy that turns a request into a key.
//!
//! A key is any UTF-8 string of at most [`Key::MAX_LEN`] bytes without control characters.
//! Parts that come from users (ids, names) go through [`KeyBuilder`], which
//! percent-escapes every character with a meaning to Redis — glob characters (`*?[]\`),
//! hash-tag braces (`{}`), the `:` separator, `%`, whitespace and control characters — so a
//! user id like `a*` can neither widen a [`Pattern`] delete nor choose a Redis Cluster slot.
//!
//! # Example
//!
//! ```
//! use tower_caching::key::{Key, KeyBuilder};
//!
//! let keys = KeyBuilder::new().prefix("payments");
//! assert_eq!(keys.entry("42").as_str(), "payments:entry:42");
//! // A hostile id is escaped, not interpreted:
//! assert_eq!(keys.entry("a*{x}").as_str(), "payments:entry:a%2A%7Bx%7D");
//! // Every entry of this namespace, and only those:
//! assert_eq!(keys.entries().as_str(), "payments:entry:*");
//!
//! assert!(Key::new("line\nbreak").is_err());
//! ```

use std::borrow::Borrow;
use std::fmt;

/// A validated cache key.
///
/// Build one with [`Key::new`], [`KeyBuilder`] or a [`KeyExtractor`]. Keys compare, hash and
/// print as their string.
///
/// ```
/// use tower_caching::key::Key;
///
/// let key = Key::new("config:default")?;
/// assert_eq!(key.as_str(), "config:default");
/// # Ok::<(), tower_caching::key::KeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// The longest key accepted, in bytes. Redis allows 512 MiB, but a key this long is always
    /// a bug or an attack, and every lookup hashes and sends the whole key.
    ///
    /// ```
    /// # use tower_caching::key::Key;
    /// assert!(Key::new("k".repeat(Key::MAX_LEN)).is_ok());
    /// assert!(Key::new("k".repeat(Key::MAX_LEN + 1)).is_err());
    /// ```
    pub const MAX_LEN: usize = 1024;

    /// Validates `key`: not empty, at most [`Key::MAX_LEN`] bytes, no control characters.
    ///
    /// ```
    /// use tower_caching::key::{Key, KeyError};
    ///
    /// assert!(Key::new("entry:1").is_ok());
    /// assert_eq!(Key::new(""), Err(KeyError::Empty));
    /// assert!(matches!(Key::new("a\u{0}b"), Err(KeyError::ControlCharacter { index: 1 })));
    /// ```
    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        validate(&key)?;
        Ok(Key(key))
    }

    /// The key as a string slice.
    ///
    /// ```
    /// # use tower_caching::key::Key;
    /// assert_eq!(Key::new("a")?.as_str(), "a");
    /// # Ok::<(), tower_caching::key::KeyError>(())
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as the `String` it wraps.
    ///
    /// ```
    /// # use tower_caching::key::Key;
    /// assert_eq!(Key::new("a")?.into_string(), "a".to_string());
    /// # Ok::<(), tower_caching::key::KeyError>(())
    /// ```
    pub fn into_string(self) -> String {
        self.0
    }
}

pub(super) fn validate(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > Key::MAX_LEN {
        return Err(KeyError::TooLong {
            len: key.len(),
            max: Key::MAX_LEN,
        });
    }
    // A control character is a byte below 0x20, 0x7F, or (C1) 0xC2 then 0x80-0x9F: keys
    // without such bytes, nearly all, skip the char decode.
    if !key.bytes().any(|b| b < 0x20 || b == 0x7F || b == 0xC2) {
        return Ok(());
    }
    if let Some(index) = key
        .char_indices()
        .find(|(_, c)| c.is_control())
        .map(|(i, _)| i)
    {
        return Err(KeyError::ControlCharacter { index });
    }
    Ok(())
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Key {
    type Error = KeyError;
    fn try_from(key: String) -> Result<Self, KeyError> {
        Key::new(key)
    }
}

impl TryFrom<&str> for Key {
    type Error = KeyError;
    fn try_from(key: &str) -> Result<Self, KeyError> {
        Key::new(key)
    }
}

/// Why a string is not a valid [`Key`].
///
/// ```
/// use tower_caching::key::{Key, KeyError};
/// let error = Key::new("x".repeat(2000)).unwrap_err();
/// assert_eq!(error, KeyError::TooLong { len: 2000, max: Key::MAX_LEN });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is the empty string.
    #[error("cache key is empty")]
    Empty,
    /// The key is longer than [`Key::MAX_LEN`].
    #[error("cache key is {len} bytes long, the limit is {max}")]
    TooLong {
        /// The key's length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The key holds a control character (newline, NUL, …) at byte `index`.
    #[error("cache key has a control character at byte {index}")]
    ControlCharacter {
        /// Byte offset of the first control character.
        index: usize,
    },
}

/// A tag: a name that groups entries so that one call drops them all, wherever their keys
/// live — see [`Cache::tag_with`](crate::Cache::tag_with) and
/// [`Cache::invalidate_tag`](crate::Cache::invalidate_tag).
///
/// A tag is any UTF-8 string of at most [`Tag::MAX_LEN`] bytes without control characters.
/// Tags share one namespace per store: two applications on one Redis should prefix theirs,
/// as they prefix their keys.
///
/// ```
/// use tower_caching::key::Tag;
///
/// let tag = Tag::new("participant:12345678")?;
/// assert_eq!(tag.as_str(), "participant:12345678");
/// assert!(Tag::new("").is_err());
/// # Ok::<(), tower_caching::key::KeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(std::sync::Arc<str>);

impl Tag {
    /// The longest tag accepted, in bytes: its escaped index key must stay a valid [`Key`].
    ///
    /// ```
    /// # use tower_caching::key::Tag;
    /// assert!(Tag::new("t".repeat(Tag::MAX_LEN)).is_ok());
    /// ```
    pub const MAX_LEN: usize = 256;

    /// Validates `tag`: not empty, at most [`Tag::MAX_LEN`] bytes, no control characters.
    ///
    /// ```
    /// use tower_caching::key::{KeyError, Tag};
    /// assert!(matches!(Tag::new("x".repeat(300)), Err(KeyError::TooLong { .. })));
    /// ```
    pub fn new(tag: impl AsRef<str>) -> Result<Self, KeyError> {
        let tag = tag.as_ref();
        if tag.len() > Tag::MAX_LEN {
            return Err(KeyError::TooLong {
                len: tag.len(),
                max: Tag::MAX_LEN,
            });
        }
        validate(tag)?;
        Ok(Tag(tag.into()))
    }

    /// The tag as a string slice.
    ///
    /// ```
    /// # use tower_caching::key::Tag;
    /// assert_eq!(Tag::new("t")?.as_str(), "t");
    /// # Ok::<(), tower_caching::key::KeyError>(())
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of the tag's index in a shared store: `tower-caching:tag:{escaped tag}`. The
    /// tag is escaped like a key part, so it picks no Redis Cluster slot of its own.
    #[cfg(feature = "redis")]
    pub(crate) fn index_key(&self) -> Key {
        Key(format!(
            "tower-caching:tag:{}",
            builder::escape_part(&self.0)
        ))
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) mod builder;
mod extract;
mod pattern;

pub use self::builder::KeyBuilder;
pub use self::extract::{CacheKey, DefaultKey, IntoKey, KeyExtractor};
pub use self::pattern::Pattern;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_scan_finds_every_control_character() {
        for c in (0..=0x10FFFFu32)
            .filter_map(char::from_u32)
            .step_by(7)
            .chain([
                '\u{0}', '\u{1f}', '\u{7f}', '\u{80}', '\u{85}', '\u{9f}', '\u{a0}', 'é', 'Â',
            ])
        {
            let key = format!("k{c}k");
            let expected = c
                .is_control()
                .then_some(KeyError::ControlCharacter { index: 1 });
            assert_eq!(validate(&key).err(), expected, "{c:?}");
        }
        for c in (0..0xA0u32).filter_map(char::from_u32) {
            assert_eq!(validate(&format!("k{c}")).is_err(), c.is_control(), "{c:?}");
        }
    }
}
