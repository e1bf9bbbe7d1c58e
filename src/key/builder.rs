use super::{Key, Pattern, validate};

/// Builds keys from a namespace prefix and escaped user-supplied parts: `kind:part` with
/// [`build`](KeyBuilder::build), and shorthands for the three most common kinds (`entry`,
/// `metrics`, `config`). An application's own kinds belong in the application (the
/// flagship example adds its own with an extension trait).
///
/// Every `part` is percent-escaped (see the [module docs](super)), so the result is always a
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
        let mut key = String::with_capacity(
            self.prefix.as_ref().map_or(0, |p| p.len() + 1) + kind.len() + 1 + part.len() + 8,
        );
        if let Some(prefix) = &self.prefix {
            key.push_str(prefix);
            key.push(':');
        }
        key.push_str(kind);
        key.push(':');
        // Escaped straight into the key: one allocation, not two.
        let part_at = key.len();
        escape_into(&mut key, part);
        match validate(&key) {
            Ok(()) => Key(key),
            Err(_) => self.build_hashed(kind, &key[part_at..]),
        }
    }

    /// The part a key of `kind` was [built](KeyBuilder::build) from, for a key this builder
    /// made: what a warm-up's loader needs to load a key of a
    /// [hot-key snapshot](crate::warm). `None` for a key of another kind or builder, and for
    /// a part too long to be kept whole (its key holds a digest of it).
    ///
    /// ```
    /// # use tower_caching::key::KeyBuilder;
    /// let keys = KeyBuilder::new().prefix("app");
    /// let key = keys.entry("a b:c");
    /// assert_eq!(keys.part_of("entry", &key).as_deref(), Some("a b:c"));
    /// assert_eq!(keys.part_of("metrics", &key), None);
    /// assert_eq!(KeyBuilder::new().part_of("entry", &key), None);
    /// assert_eq!(keys.part_of("entry", &keys.entry(&"x".repeat(2000))), None);
    /// ```
    pub fn part_of(&self, kind: &str, key: &Key) -> Option<String> {
        let mut rest = key.as_str();
        if let Some(prefix) = &self.prefix {
            rest = rest.strip_prefix(prefix.as_str())?.strip_prefix(':')?;
        }
        let escaped = rest.strip_prefix(kind)?.strip_prefix(':')?;
        if escaped.contains('#') {
            return None;
        }
        let mut bytes = Vec::with_capacity(escaped.len());
        let mut input = escaped.bytes();
        while let Some(byte) = input.next() {
            if byte == b'%' {
                let high = char::from(input.next()?).to_digit(16)?;
                let low = char::from(input.next()?).to_digit(16)?;
                bytes.push((high * 16 + low) as u8);
            } else {
                bytes.push(byte);
            }
        }
        let part = String::from_utf8(bytes).ok()?;
        // Only what `build` would have made: no other spelling of the same part.
        (escape_part(&part) == escaped).then_some(part)
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

/// Whether a key part's `c` is escaped: everything Redis or the key layout gives a meaning
/// to (`#` too: it marks the digest of an over-long part).
fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '%' | ':' | '*' | '?' | '[' | ']' | '\\' | '{' | '}' | '#'
    ) || c.is_whitespace()
        || c.is_control()
}
/// `needs_escape` of each ASCII character.
const ASCII_ESCAPED: [bool; 128] = {
    let mut table = [false; 128];
    let mut byte = 0;
    while byte < 128 {
        let c = byte as u8 as char;
        table[byte] = matches!(
            c,
            '%' | ':' | '*' | '?' | '[' | ']' | '\\' | '{' | '}' | '#'
        ) || c.is_ascii_whitespace()
            // The one ASCII char `char::is_whitespace` counts that this does not.
            || c == '\x0B'
            || c.is_ascii_control();
        byte += 1;
    }
    table
};

/// Percent-escapes what [`needs_escape`] in a user-supplied key part.
pub(crate) fn escape_part(part: &str) -> std::borrow::Cow<'_, str> {
    // Most parts (ids, names) need no escape: no allocation for them, and for ASCII ones
    // one table lookup a byte rather than a char decode and three tests.
    let plain = if part.is_ascii() {
        !part.bytes().any(|byte| ASCII_ESCAPED[usize::from(byte)])
    } else {
        !part.chars().any(needs_escape)
    };
    if plain {
        return std::borrow::Cow::Borrowed(part);
    }
    let mut escaped = String::with_capacity(part.len() + 8);
    escape_into(&mut escaped, part);
    std::borrow::Cow::Owned(escaped)
}

/// Appends `part` to `out`, percent-escaped as [`escape_part`] does: runs of plain
/// characters copied whole, ASCII ones told by table.
pub(crate) fn escape_into(out: &mut String, part: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut plain_from = 0;
    for (at, c) in part.char_indices() {
        let escaped = if c.is_ascii() {
            ASCII_ESCAPED[c as usize]
        } else {
            needs_escape(c)
        };
        if !escaped {
            continue;
        }
        out.push_str(&part[plain_from..at]);
        let mut buf = [0u8; 4];
        for byte in c.encode_utf8(&mut buf).bytes() {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
        plain_from = at + c.len_utf8();
    }
    out.push_str(&part[plain_from..]);
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_ascii_table_agrees_with_the_char_rule() {
        for byte in 0..128u8 {
            let c = char::from(byte);
            assert_eq!(ASCII_ESCAPED[usize::from(byte)], needs_escape(c), "{c:?}");
            let part = format!("a{c}b");
            assert_eq!(
                matches!(escape_part(&part), std::borrow::Cow::Owned(_)),
                needs_escape(c),
                "{c:?}"
            );
        }
    }

    #[test]
    fn escaping_in_place_matches_the_char_rule() {
        for part in [
            "",
            "plain",
            "GET 8:/entries/0b9d6b0e?9:view=full",
            "a b\tc\u{85}d\u{a0}é%:*?[]\\{}#",
            "ünïcødé and ascii: mixed",
            "\u{7f}\u{0}\u{9f}",
        ] {
            let mut expected = String::new();
            for c in part.chars() {
                if needs_escape(c) {
                    let mut buf = [0u8; 4];
                    for byte in c.encode_utf8(&mut buf).bytes() {
                        expected.push_str(&format!("%{byte:02X}"));
                    }
                } else {
                    expected.push(c);
                }
            }
            assert_eq!(escape_part(part), expected, "{part:?}");
            let key = KeyBuilder::new().prefix("p").build("kind", part);
            assert_eq!(key.as_str(), format!("p:kind:{expected}"));
        }
    }
}
