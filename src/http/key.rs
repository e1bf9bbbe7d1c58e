use http::Request;
use http::header::HeaderName;

use crate::key::{IntoKey, Key, KeyBuilder, KeyExtractor};

/// A [`KeyExtractor`] of HTTP requests that also tells which request headers its key
/// covers: [`HttpCache`](super::HttpCache) forwards only those to the inner service on the
/// cached path, so an unkeyed header can never change what another client is served. The
/// key itself comes from [`KeyExtractor::key`], the one key trait of the crate.
///
/// Implemented by [`HttpKey`], [`PathKey`] and closures `Fn(&Request<B>) -> K` (any
/// [`IntoKey`] result; closures cover no header).
///
/// ```
/// use http::Request;
/// use tower_caching::key::{Key, KeyExtractor};
///
/// // Keyed by a tenant header only: a closure covers no header, so the cached path does
/// // not forward `x-tenant` to the handler — key it with `HttpKey::header` when it must.
/// let by_tenant = |req: &Request<()>| {
///     let tenant = req.headers().get("x-tenant")?.to_str().ok()?;
///     Key::new(format!("tenant:{tenant}:{}", req.uri().path())).ok()
/// };
/// let request = Request::get("/plan").header("x-tenant", "acme").body(()).unwrap();
/// assert_eq!(by_tenant.key(&request).unwrap().as_str(), "tenant:acme:/plan");
/// ```
pub trait RequestKey<B>: KeyExtractor<Request<B>> {
    /// Whether the key covers request header `name`.
    fn covers_header(&self, name: &HeaderName) -> bool {
        let _ = name;
        false
    }

    /// Whether the key covers the query string; when it does not, the cached path hands
    /// the inner service the path alone (default: it does — a closure may read the query).
    fn covers_query(&self) -> bool {
        true
    }

    /// The key of a `GET` of `uri` (path and query) with no headers, if this key can tell:
    /// a shared cache invalidates the `Location` and `Content-Location` of a successful
    /// unsafe request with it. Default: it cannot (a closure needs a whole request).
    fn key_for_uri(&self, uri: &http::Uri) -> Option<Key> {
        let _ = uri;
        None
    }
}

impl<B, F, K> RequestKey<B> for F
where
    F: Fn(&Request<B>) -> K,
    K: IntoKey,
{
}

/// The default HTTP key: method, path and the query with its parameters sorted by name (so
/// `?b=2&a=1` and `?a=1&b=2` share an entry, while the order of a repeated parameter is
/// kept: `?a=1&a=2` and `?a=2&a=1` do not), plus the values of the headers named with
/// [`HttpKey::header`] (what a `Vary` response header would list).
///
/// ```
/// use http::Request;
/// use tower_caching::{http::HttpKey, key::KeyExtractor};
///
/// let key = HttpKey::new().header("accept-language");
/// let a = Request::get("/entries?b=2&a=1").header("accept-language", "pt").body(()).unwrap();
/// let b = Request::get("/entries?a=1&b=2").header("accept-language", "pt").body(()).unwrap();
/// let c = Request::get("/entries?a=1&b=2").header("accept-language", "en").body(()).unwrap();
/// assert_eq!(key.key(&a), key.key(&b));
/// assert_ne!(key.key(&b), key.key(&c));
/// ```
#[derive(Clone, Debug, Default)]
pub struct HttpKey {
    builder: KeyBuilder,
    headers: Vec<HeaderName>,
}

impl HttpKey {
    /// Method, path and canonical query, under the kind `http`. See [`HttpKey`] for an
    /// example.
    pub fn new() -> Self {
        HttpKey::default()
    }

    /// Prefixes keys with `prefix`.
    ///
    /// ```
    /// use http::Request;
    /// use tower_caching::{http::HttpKey, key::KeyExtractor};
    ///
    /// let request = Request::get("/entries/e1").body(()).unwrap();
    /// let key = HttpKey::new().prefix("api").key(&request).unwrap();
    /// assert!(key.as_str().starts_with("api:http:"));
    /// ```
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.builder = self.builder.prefix(prefix);
        self
    }

    /// Adds a request header to the key. Names that are not valid header names are ignored.
    /// See [`HttpKey`] for an example.
    pub fn header(mut self, name: &str) -> Self {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            self.headers.push(name);
        }
        self
    }
}

/// The query string with its `&`-separated parameters sorted by name; the values of a
/// repeated name keep their order (a last-wins parser answers `?a=1&a=2` unlike
/// `?a=2&a=1`).
pub(crate) fn canonical_query(query: Option<&str>) -> std::borrow::Cow<'_, str> {
    let query = query.unwrap_or("");
    fn name(param: &str) -> &str {
        param.split('=').next().unwrap_or("")
    }
    // Already canonical (no empty parameter, names in order), as most queries are: as is.
    let mut params = query.split('&');
    let mut canonical = true;
    if let Some(first) = params.next() {
        let mut last = name(first);
        canonical = !first.is_empty() || query.is_empty();
        for param in params {
            if !canonical {
                break;
            }
            canonical = !param.is_empty() && name(param) >= last;
            last = name(param);
        }
    }
    if canonical {
        return std::borrow::Cow::Borrowed(query);
    }
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    params.sort_by_key(|param| name(param));
    std::borrow::Cow::Owned(params.join("&"))
}

/// The key of the `GET` of the same resource (HEAD is answered from it; unsafe methods
/// invalidate it).
pub(crate) fn key_as_get<B, K: RequestKey<B>>(key: &K, request: &mut Request<B>) -> Option<Key> {
    let method = std::mem::replace(request.method_mut(), http::Method::GET);
    let built = key.key(request);
    *request.method_mut() = method;
    built
}

impl HttpKey {
    fn build(&self, method: &http::Method, uri: &http::Uri, headers: &http::HeaderMap) -> Key {
        // Every field is length-prefixed, so no path, query or header value can be crafted
        // to read as another request's fields.
        use std::fmt::Write;
        let path = uri.path();
        let query = canonical_query(uri.query());
        // Written into one buffer (a `String` never fails to be written to).
        let mut part = String::with_capacity(path.len() + query.len() + 24);
        let _ = write!(
            part,
            "{method} {}:{path}?{}:{query}",
            path.len(),
            query.len()
        );
        for name in &self.headers {
            let values = headers.get_all(name);
            let _ = write!(part, "|{name}={}", values.iter().count());
            for value in values {
                match std::str::from_utf8(value.as_bytes()) {
                    Ok(text) => {
                        let _ = write!(part, ":t{}:{text}", text.len());
                    }
                    Err(_) => {
                        let digest = crate::key::builder::digest(value.as_bytes());
                        let _ = write!(part, ":b{}:{digest}", digest.len());
                    }
                }
            }
        }
        self.builder.build("http", &part)
    }
}

impl<B> KeyExtractor<Request<B>> for HttpKey {
    fn key(&self, request: &Request<B>) -> Option<Key> {
        Some(self.build(request.method(), request.uri(), request.headers()))
    }
}

impl<B> RequestKey<B> for HttpKey {
    fn covers_header(&self, name: &HeaderName) -> bool {
        self.headers.contains(name)
    }

    /// Only a key of no headers can be built from a URI alone.
    fn key_for_uri(&self, uri: &http::Uri) -> Option<Key> {
        self.headers
            .is_empty()
            .then(|| self.build(&http::Method::GET, uri, &http::HeaderMap::new()))
    }
}

/// A key built from path parameters: `PathKey::new("/entries/{id}", "entry:{id}")` keys
/// `GET /entries/42` as `entry:42` — the same key a typed service uses, so the HTTP cache and
/// the repository cache can share entries and invalidations. Parameter values are escaped
/// like every user-supplied key part. A path that does not match the template, or a key
/// template naming a parameter the path lacks, bypasses the cache.
///
/// ```
/// use http::Request;
/// use tower_caching::{http::PathKey, key::KeyExtractor};
///
/// let key = PathKey::new("/participants/{ispb}/metrics", "metrics:{ispb}");
/// let request = Request::get("/participants/1234/metrics").body(()).unwrap();
/// assert_eq!(key.key(&request).unwrap().as_str(), "metrics:1234");
/// let hostile = Request::get("/participants/a*/metrics").body(()).unwrap();
/// assert_eq!(key.key(&hostile).unwrap().as_str(), "metrics:a%2A");
/// assert!(key.key(&Request::get("/other").body(()).unwrap()).is_none());
/// ```
#[derive(Clone, Debug)]
pub struct PathKey {
    path: Vec<Segment>,
    key: Vec<Segment>,
    builder: KeyBuilder,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// Splits `template` into literals and `{name}` parameters.
fn parse_template(template: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        if open > 0 {
            segments.push(Segment::Literal(rest[..open].to_owned()));
        }
        segments.push(Segment::Param(rest[open + 1..open + close].to_owned()));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Literal(rest.to_owned()));
    }
    segments
}

impl PathKey {
    /// How specific the path template is, for choosing among templates that match one path
    /// as axum does: more literal bytes first, then fewer parameters.
    #[cfg(feature = "config")]
    pub(crate) fn specificity(&self) -> (usize, std::cmp::Reverse<usize>) {
        let (literal, params) = self
            .path
            .iter()
            .fold((0, 0), |(l, p), segment| match segment {
                Segment::Literal(text) => (l + text.len(), p),
                Segment::Param(_) => (l, p + 1),
            });
        (literal, std::cmp::Reverse(params))
    }

    /// Matches paths against `path` (axum's `{name}` syntax) and builds keys from `key`.
    ///
    /// ```
    /// use http::Request;
    /// use tower_caching::{http::PathKey, key::KeyExtractor};
    ///
    /// let key = PathKey::new("/entries/{id}", "entry:{id}");
    /// let request = Request::get("/entries/e1").body(()).unwrap();
    /// assert_eq!(key.key(&request).unwrap().as_str(), "entry:e1");
    /// assert!(key.key(&Request::get("/other").body(()).unwrap()).is_none());
    /// ```
    pub fn new(path: &str, key: &str) -> Self {
        PathKey {
            path: parse_template(path),
            key: parse_template(key),
            builder: KeyBuilder::new(),
        }
    }

    /// Prefixes keys with `prefix`.
    ///
    /// ```
    /// use http::Request;
    /// use tower_caching::{http::PathKey, key::KeyExtractor};
    ///
    /// let key = PathKey::new("/entries/{id}", "entry:{id}").prefix("payments");
    /// let request = Request::get("/entries/e1").body(()).unwrap();
    /// assert_eq!(key.key(&request).unwrap().as_str(), "payments:entry:e1");
    /// ```
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.builder = self.builder.prefix(prefix);
        self
    }

    /// The path parameters of `path`, or `None` when it does not match.
    pub(crate) fn params<'a>(&self, path: &'a str) -> Option<Vec<(&str, &'a str)>> {
        let mut params = Vec::new();
        let mut rest = path;
        let mut segments = self.path.iter().peekable();
        while let Some(segment) = segments.next() {
            match segment {
                Segment::Literal(literal) => rest = rest.strip_prefix(literal.as_str())?,
                Segment::Param(name) => {
                    // A parameter runs to the next literal, within one path segment.
                    let end = match segments.peek() {
                        Some(Segment::Literal(next)) => rest.find(next.as_str())?,
                        _ => rest.len(),
                    };
                    let value = &rest[..end];
                    if value.is_empty() || value.contains('/') {
                        return None;
                    }
                    params.push((name.as_str(), value));
                    rest = &rest[end..];
                }
            }
        }
        rest.is_empty().then_some(params)
    }

    /// The key template filled with `params` (escaped), or `None` if one is missing.
    pub(crate) fn fill(&self, params: &[(&str, &str)]) -> Option<Key> {
        // The template's first literal up to its last ':' is the kind; the rest is the part,
        // escaped, so that `entry:{id}` gives exactly `KeyBuilder::entry(id)`.
        let mut kind = String::new();
        let mut part = String::new();
        let mut in_part = false;
        for segment in &self.key {
            match segment {
                Segment::Literal(literal) if !in_part => match literal.rfind(':') {
                    Some(colon) => {
                        kind.push_str(&literal[..colon]);
                        part.push_str(&literal[colon + 1..]);
                        in_part = true;
                    }
                    None => kind.push_str(literal),
                },
                Segment::Literal(literal) => part.push_str(literal),
                Segment::Param(name) => {
                    in_part = true;
                    let (_, value) = params.iter().find(|(n, _)| n == name)?;
                    part.push_str(&percent_decode(value));
                }
            }
        }
        Some(self.builder.build(&kind, &part))
    }
}

/// Decodes `%XX` escapes of a path parameter (leaving invalid ones as they are), as a
/// router would before handing it to a handler.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl<B> KeyExtractor<Request<B>> for PathKey {
    fn key(&self, request: &Request<B>) -> Option<Key> {
        self.fill(&self.params(request.uri().path())?)
    }
}

/// A path key covers no query: the cached path hands the handler the path alone, so
/// `/entries/e1?callback=evil` cannot answer for `/entries/e1`.
impl<B> RequestKey<B> for PathKey {
    fn covers_query(&self) -> bool {
        false
    }

    fn key_for_uri(&self, uri: &http::Uri) -> Option<Key> {
        self.fill(&self.params(uri.path())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_queries_are_sorted_by_name_and_borrowed_when_they_already_are() {
        fn slow(query: &str) -> String {
            let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
            params.sort_by_key(|param| param.split('=').next().unwrap_or(""));
            params.join("&")
        }
        for query in [
            "",
            "a",
            "a=1",
            "a=1&b=2",
            "b=2&a=1",
            "a=2&a=1",
            "&a=1",
            "a=1&",
            "a=1&&b=2",
            "&",
            "&&",
            "b&a",
            "a&b",
            "a=1&b=2&a=0",
            "x=%20&y",
            "=v&a=1",
            "a=1&=v",
        ] {
            let fast = canonical_query(Some(query));
            assert_eq!(fast, slow(query), "{query:?}");
            if matches!(fast, std::borrow::Cow::Borrowed(_)) {
                assert_eq!(fast, query, "borrowed only when already canonical");
            }
        }
        assert_eq!(canonical_query(None), "");
    }

    #[test]
    fn path_templates_match_and_fill() {
        let key = PathKey::new("/a/{x}/b/{y}", "pair:{x}-{y}");
        assert_eq!(key.params("/a/1/b/2"), Some(vec![("x", "1"), ("y", "2")]));
        assert_eq!(key.params("/a/1/b/2/c"), None);
        assert_eq!(key.params("/a//b/2"), None);
        assert_eq!(key.params("/a/1/2/b/3"), None);
        assert_eq!(
            key.fill(&[("x", "1"), ("y", "2")]).unwrap().as_str(),
            "pair:1-2"
        );
        assert_eq!(
            PathKey::new("/e/{id}", "entry:{id}")
                .key(&Request::get("/e/a%20b").body(()).unwrap())
                .unwrap()
                .as_str(),
            "entry:a%20b"
        );
        let unknown = PathKey::new("/e/{id}", "entry:{nope}");
        assert_eq!(unknown.key(&Request::get("/e/1").body(()).unwrap()), None);
    }

    #[test]
    fn a_query_cannot_pose_as_a_keyed_header() {
        let key = HttpKey::new().header("accept-language");
        let forged = Request::get("/x?a=1|accept-language=1:t2:pt")
            .body(())
            .unwrap();
        let real = Request::get("/x?a=1")
            .header("accept-language", "pt")
            .body(())
            .unwrap();
        assert_ne!(key.key(&forged), key.key(&real));
        let two = Request::get("/x")
            .header("accept-language", "pt,en")
            .body(())
            .unwrap();
        let split = Request::get("/x")
            .header("accept-language", "pt")
            .header("accept-language", "en")
            .body(())
            .unwrap();
        assert_ne!(key.key(&two), key.key(&split));
    }

    #[test]
    fn path_keys_equal_key_builder_keys() {
        let key = PathKey::new("/dict/{key}", "dict:key:{key}").prefix("svc");
        let request = Request::get("/dict/+55%7B1%7D").body(()).unwrap();
        assert_eq!(
            key.key(&request),
            Some(KeyBuilder::new().prefix("svc").build("dict:key", "+55{1}"))
        );
    }
}
