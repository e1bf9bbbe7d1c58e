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

fn validate(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > Key::MAX_LEN {
        return Err(KeyError::TooLong {
            len: key.len(),
            max: Key::MAX_LEN,
        });
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
        Key(format!("tower-caching:tag:{}", escape_part(&self.0)))
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

/// A Redis glob pattern for [`Cache::delete_pattern`](crate::Cache::delete_pattern).
///
/// [`Pattern::prefix`] and [`Pattern::exact`] escape their input, so they match literally;
/// [`Pattern::glob`] takes a glob as written (`*`, `?`, `[a-z]`, `\` escapes) and is meant
/// for patterns written in code, never for user input.
///
/// ```
/// use tower_caching::key::Pattern;
///
/// assert_eq!(Pattern::prefix("entry:").as_str(), "entry:*");
/// assert_eq!(Pattern::prefix("a*").as_str(), "a\\**");
/// assert!(Pattern::prefix("a*").matches("a*b"));
/// assert!(!Pattern::prefix("a*").matches("ab"));
/// assert!(Pattern::glob("vsync:*").matches("vsync:7"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern written as a Redis glob, used as is: for patterns in code, never for
    /// user input.
    ///
    /// ```
    /// # use tower_caching::key::Pattern;
    /// assert!(Pattern::glob("entry:[ab]*").matches("entry:b7"));
    /// ```
    pub fn glob(pattern: impl Into<String>) -> Self {
        Pattern(pattern.into())
    }

    /// Every key that starts with `prefix`, taken literally.
    ///
    /// ```
    /// # use tower_caching::key::Pattern;
    /// let pattern = Pattern::prefix("user:a?");
    /// assert!(pattern.matches("user:a?1"));
    /// assert!(!pattern.matches("user:ab1"));
    /// ```
    pub fn prefix(prefix: &str) -> Self {
        let mut pattern = escape_glob(prefix);
        pattern.push('*');
        Pattern(pattern)
    }

    /// Exactly the key `key`, taken literally.
    ///
    /// ```
    /// # use tower_caching::key::Pattern;
    /// assert!(Pattern::exact("a*").matches("a*"));
    /// assert!(!Pattern::exact("a*").matches("ab"));
    /// ```
    pub fn exact(key: &str) -> Self {
        Pattern(escape_glob(key))
    }

    /// The glob as sent to Redis.
    ///
    /// ```
    /// # use tower_caching::key::Pattern;
    /// assert_eq!(Pattern::prefix("vsync:").as_str(), "vsync:*");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `key` matches, with Redis's `STRINGMATCH` rules (`*`, `?`, `[...]`, `[^...]`,
    /// ranges and `\` escapes). The in-memory store uses this to delete by pattern.
    ///
    /// ```
    /// # use tower_caching::key::Pattern;
    /// assert!(Pattern::glob("h[^e]llo").matches("hallo"));
    /// assert!(!Pattern::glob("h[^e]llo").matches("hello"));
    /// ```
    pub fn matches(&self, key: &str) -> bool {
        glob_match(self.0.as_bytes(), key.as_bytes())
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Backslash-escapes the glob metacharacters of `literal`.
fn escape_glob(literal: &str) -> String {
    let mut escaped = String::with_capacity(literal.len() + 2);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Redis `stringmatchlen`, without its case-insensitive mode.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index after the star, text index it matched to).
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    backtrack = Some((p, t));
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_class(pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match backtrack {
            Some((star_p, star_t)) => {
                p = star_p;
                t = star_t + 1;
                backtrack = Some((star_p, star_t + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[start] == b'['`; returns whether it
/// matched and the index after the class, or `None` for an unterminated class, which Redis
/// treats as matching the characters written.
fn match_class(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    if i >= pattern.len() {
        return None;
    }
    Some((matched != negate, i + 1))
}

/// Builds keys from a namespace prefix and escaped user-supplied parts: `kind:part` with
/// [`build`](KeyBuilder::build), and shorthands for the three most common kinds (`entry`,
/// `metrics`, `config`). An application's own kinds belong in the application (the
/// flagship example adds its own with an extension trait).
///
/// Every `part` is percent-escaped (see the [module docs](self)), so the result is always a
/// valid key unless it is longer than [`Key::MAX_LEN`], in which case the builder keeps the
/// part's first bytes and appends `#` and a SHA-256 digest of the whole part, so distinct
/// parts stay distinct.
///
/// ```
/// use tower_caching::key::KeyBuilder;
///
/// let keys = KeyBuilder::new();
/// assert_eq!(keys.entry("e1").as_str(), "entry:e1");
/// assert_eq!(keys.metrics("12345678").as_str(), "metrics:12345678");
/// assert_eq!(keys.build("phone", "+55 11 9").as_str(), "phone:+55%2011%209");
/// assert_eq!(keys.build("custom", "x:y#z").as_str(), "custom:x%3Ay%23z");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyBuilder {
    /// The escaped prefix and hash tag, joined: what every key starts with.
    prefix: Option<String>,
    namespace: Option<String>,
    hash_tag: Option<String>,
}

impl KeyBuilder {
    /// A builder with no namespace prefix.
    ///
    /// ```
    /// # use tower_caching::key::KeyBuilder;
    /// assert_eq!(KeyBuilder::new().entry("e1").as_str(), "entry:e1");
    /// ```
    pub fn new() -> Self {
        KeyBuilder::default()
    }

    /// Prefixes every key with `prefix:` (escaped like a part). An empty prefix means none.
    ///
    /// ```
    /// # use tower_caching::key::KeyBuilder;
    /// assert_eq!(KeyBuilder::new().prefix("payments").entry("e1").as_str(), "payments:entry:e1");
    /// ```
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.namespace = (!prefix.is_empty()).then(|| escape_part(prefix).into_owned());
        self.join_prefix();
        self
    }

    /// Puts every key of this builder in one Redis Cluster slot, with the hash tag `{tag}`
    /// after the prefix (`tag` escaped, so it cannot close the braces): multi-key commands
    /// and scripts over these keys then run on one node. Hash tags are only ever chosen
    /// here, by the programmer: braces in user-supplied parts are escaped. An empty tag
    /// means none.
    ///
    /// ```
    /// use tower_caching::key::KeyBuilder;
    ///
    /// let keys = KeyBuilder::new().prefix("payments").hash_tag("12345678");
    /// assert_eq!(keys.entry("e1").as_str(), "payments:{12345678}:entry:e1");
    /// assert_eq!(keys.entries().as_str(), "payments:{12345678}:entry:*");
    /// // User input never picks a slot:
    /// assert_eq!(KeyBuilder::new().entry("{x}").as_str(), "entry:%7Bx%7D");
    /// ```
    pub fn hash_tag(mut self, tag: &str) -> Self {
        self.hash_tag = (!tag.is_empty()).then(|| format!("{{{}}}", escape_part(tag)));
        self.join_prefix();
        self
    }

    fn join_prefix(&mut self) {
        self.prefix = match (&self.namespace, &self.hash_tag) {
            (Some(namespace), Some(tag)) => Some(format!("{namespace}:{tag}")),
            (Some(namespace), None) => Some(namespace.clone()),
            (None, Some(tag)) => Some(tag.clone()),
            (None, None) => None,
        };
    }

    /// `{prefix:}{kind}:{part}`, with `part` escaped. `kind` is written by the programmer
    /// and used as is; it may hold `:` (e.g. `dict:key`).
    ///
    /// ```
    /// # use tower_caching::key::KeyBuilder;
    /// assert_eq!(KeyBuilder::new().build("session", "a b").as_str(), "session:a%20b");
    /// ```
    pub fn build(&self, kind: &str, part: &str) -> Key {
        let part = escape_part(part);
        let mut key = String::with_capacity(
            self.prefix.as_ref().map_or(0, |p| p.len() + 1) + kind.len() + 1 + part.len(),
        );
        if let Some(prefix) = &self.prefix {
            key.push_str(prefix);
            key.push(':');
        }
        key.push_str(kind);
        key.push(':');
        key.push_str(&part);
        Key::new(key).unwrap_or_else(|_| self.build_hashed(kind, &part))
    }

    fn build_hashed(&self, kind: &str, escaped_part: &str) -> Key {
        let digest = digest(escaped_part.as_bytes());
        let room = Key::MAX_LEN
            .saturating_sub(self.prefix.as_ref().map_or(0, |p| p.len() + 1))
            .saturating_sub(kind.len() + 1 + 1 + digest.len());
        let mut cut = room.min(escaped_part.len());
        while !escaped_part.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut key = String::with_capacity(Key::MAX_LEN);
        if let Some(prefix) = &self.prefix {
            key.push_str(prefix);
            key.push(':');
        }
        key.push_str(kind);
        key.push(':');
        key.push_str(&escaped_part[..cut]);
        key.push('#');
        key.push_str(&digest);
        Key(key)
    }

    /// The pattern that matches every key of `kind` built by this builder.
    ///
    /// ```
    /// # use tower_caching::key::KeyBuilder;
    /// let keys = KeyBuilder::new().prefix("app");
    /// assert!(keys.pattern("session").matches(keys.build("session", "x").as_str()));
    /// ```
    pub fn pattern(&self, kind: &str) -> Pattern {
        match &self.prefix {
            Some(prefix) => Pattern::prefix(&format!("{prefix}:{kind}:")),
            None => Pattern::prefix(&format!("{kind}:")),
        }
    }

    /// `entry:{id}` — an entry looked up or created (TTL [`ttl::ENTRY`](crate::ttl::ENTRY)).
    ///
    /// ```
    /// # use tower_caching::key::KeyBuilder;
    /// assert_eq!(KeyBuilder::new().entry("e1").as_str(), "entry:e1");
    /// ```
    pub fn entry(&self, id: &str) -> Key {
        self.build("entry", id)
    }

    /// Every `entry:*` key.
    ///
    /// ```
    /// # use tower_caching::key::KeyBuilder;
    /// assert_eq!(KeyBuilder::new().entries().as_str(), "entry:*");
    /// ```
    pub fn entries(&self) -> Pattern {
        self.pattern("entry")
    }

    /// `metrics:{id}` — an owner's counters (TTL [`ttl::METRICS`](crate::ttl::METRICS)).
    ///
    /// ```
    /// # use tower_caching::key::KeyBuilder;
    /// assert_eq!(KeyBuilder::new().metrics("12345678").as_str(), "metrics:12345678");
    /// ```
    pub fn metrics(&self, id: &str) -> Key {
        self.build("metrics", id)
    }

    /// `config:{name}` — configuration (TTL [`ttl::CONFIG`](crate::ttl::CONFIG)).
    ///
    /// ```
    /// # use tower_caching::key::KeyBuilder;
    /// assert_eq!(KeyBuilder::new().config("default").as_str(), "config:default");
    /// ```
    pub fn config(&self, name: &str) -> Key {
        self.build("config", name)
    }
}

/// The first 128 bits of the SHA-256 of `bytes`, in hex: a stable digest (the same in
/// every process and Rust version) that nobody can make two inputs share.
pub(crate) fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(bytes);
    hash[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-escapes everything in a user-supplied key part that Redis or the key layout
/// gives a meaning to (`#` too: it marks the digest of an over-long part).
pub(crate) fn escape_part(part: &str) -> std::borrow::Cow<'_, str> {
    fn needs_escape(c: char) -> bool {
        matches!(
            c,
            '%' | ':' | '*' | '?' | '[' | ']' | '\\' | '{' | '}' | '#'
        ) || c.is_whitespace()
            || c.is_control()
    }
    // Most parts (ids, names) need no escape: no allocation for them.
    if !part.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(part);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut escaped = String::with_capacity(part.len() + 8);
    for c in part.chars() {
        if needs_escape(c) {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                escaped.push('%');
                escaped.push(char::from(HEX[usize::from(byte >> 4)]));
                escaped.push(char::from(HEX[usize::from(byte & 0xF)]));
            }
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// Turns a request into the [`Key`] it is cached under, or `None` to bypass the cache for
/// this request.
///
/// Implemented for closures `Fn(&Req) -> K` where `K` is a [`Key`], `Option<Key>`,
/// `Result<Key, KeyError>`, `String` or `&'static str` (strings are validated; an invalid
/// one bypasses the cache and is logged, it never fails the request).
///
/// ```
/// use tower_caching::key::{Key, KeyBuilder, KeyExtractor};
///
/// struct GetEntry { id: String }
///
/// let keys = KeyBuilder::new();
/// let by_id = move |req: &GetEntry| keys.entry(&req.id);
/// assert_eq!(by_id.key(&GetEntry { id: "7".into() }), Some(Key::new("entry:7")?));
///
/// let raw = |req: &GetEntry| format!("entry:{}", req.id);
/// assert_eq!(raw.key(&GetEntry { id: "bad\n".into() }), None);
/// # Ok::<(), tower_caching::key::KeyError>(())
/// ```
pub trait KeyExtractor<Req> {
    /// The key for `request`, or `None` to bypass the cache.
    fn key(&self, request: &Req) -> Option<Key>;
}

impl<Req, F, K> KeyExtractor<Req> for F
where
    F: Fn(&Req) -> K,
    K: IntoKey,
{
    fn key(&self, request: &Req) -> Option<Key> {
        self(request).into_key()
    }
}

/// A request that knows the key it is cached under: what [`DefaultKey`], the layers' default
/// extractor, asks for.
///
/// ```
/// use tower_caching::key::{CacheKey, DefaultKey, Key, KeyBuilder, KeyExtractor};
///
/// struct GetEntry { id: String }
///
/// impl CacheKey for GetEntry {
///     fn cache_key(&self) -> Option<Key> {
///         Some(KeyBuilder::new().entry(&self.id))
///     }
/// }
///
/// let key = DefaultKey.key(&GetEntry { id: "9".into() });
/// assert_eq!(key.unwrap().as_str(), "entry:9");
/// ```
pub trait CacheKey {
    /// This request's key, or `None` to bypass the cache.
    fn cache_key(&self) -> Option<Key>;
}

/// The layers' default [`KeyExtractor`]: the request's own [`CacheKey`].
/// See [`CacheKey`] for an example.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultKey;

impl<Req: CacheKey> KeyExtractor<Req> for DefaultKey {
    fn key(&self, request: &Req) -> Option<Key> {
        request.cache_key()
    }
}

/// What a [`KeyExtractor`] closure may return: a [`Key`], or `Option<Key>` to bypass the
/// cache for some requests. Sealed.
///
/// ```
/// use tower_caching::key::{IntoKey, Key};
///
/// assert!(Key::new("k").unwrap().into_key().is_some());
/// assert!(None::<Key>.into_key().is_none());
/// ```
pub trait IntoKey: sealed::Sealed {
    /// The validated key, or `None` to bypass the cache.
    fn into_key(self) -> Option<Key>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Key {}
    impl Sealed for Option<super::Key> {}
    impl Sealed for Result<super::Key, super::KeyError> {}
    impl Sealed for String {}
    impl Sealed for &'static str {}
}

impl IntoKey for Key {
    fn into_key(self) -> Option<Key> {
        Some(self)
    }
}

impl IntoKey for Option<Key> {
    fn into_key(self) -> Option<Key> {
        self
    }
}

impl IntoKey for Result<Key, KeyError> {
    fn into_key(self) -> Option<Key> {
        self.map_err(|error| tracing::warn!(%error, "invalid cache key, bypassing the cache"))
            .ok()
    }
}

impl IntoKey for String {
    fn into_key(self) -> Option<Key> {
        Key::new(self).into_key()
    }
}

impl IntoKey for &'static str {
    fn into_key(self) -> Option<Key> {
        Key::new(self).into_key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_redis() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("entry:*", "entry:1", true),
            ("entry:*", "entries", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[abc]x", "bx", true),
            ("[^abc]x", "bx", false),
            ("[a-c]x", "cx", true),
            ("[c-a]x", "bx", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("*b*d", "abcd", true),
            ("*b*d", "abcde", false),
            ("a*b*c", "aXbYbZc", true),
            ("[abc", "[abc", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                expected,
                "{pattern:?} vs {text:?}"
            );
        }
    }

    #[test]
    fn escaped_prefix_never_widens() {
        for hostile in ["a*", "a?", "[a-z]", "a\\", "*"] {
            let pattern = Pattern::prefix(&format!("entry:{hostile}"));
            assert!(pattern.matches(&format!("entry:{hostile}tail")));
            assert!(!pattern.matches("entry:zzz"), "{hostile}");
        }
    }

    #[test]
    fn overlong_parts_are_hashed_and_stay_distinct() {
        let keys = KeyBuilder::new().prefix("ns");
        let a = keys.entry(&"a".repeat(5000));
        let b = keys.entry(&format!("{}b", "a".repeat(4999)));
        assert!(a.as_str().len() <= Key::MAX_LEN);
        assert_ne!(a, b);
        assert!(keys.entries().matches(a.as_str()));
    }

    #[test]
    fn a_short_part_cannot_forge_the_digest_of_a_long_one() {
        let keys = KeyBuilder::new();
        let hashed = keys.entry(&"a".repeat(5000));
        let forged = hashed.as_str().strip_prefix("entry:").unwrap();
        assert!(forged.contains('#'));
        assert_ne!(keys.entry(forged), hashed);
    }

    #[test]
    fn escaped_parts_are_valid_keys() {
        let keys = KeyBuilder::new();
        let key = keys.entry("tab\there\nnew{line}\u{7f}");
        assert!(Key::new(key.as_str()).is_ok());
        assert!(!key.as_str().contains(['{', '}', '\n', '\t']));
    }
}
