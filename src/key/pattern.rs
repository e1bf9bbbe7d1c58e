use std::fmt;

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
                    if let Some((matched, next)) = match_class(pattern, p, text[t])
                        && matched
                    {
                        p = next;
                        t += 1;
                        continue;
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
}
