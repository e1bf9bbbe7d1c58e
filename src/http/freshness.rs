//! RFC 9111 rules for a shared cache: what may be stored, for how long it is fresh, how
//! old it is, whether a request may be served from it, and how a `304` updates it.
//!
//! Everything here is computed once, when a response is stored (or revalidated), into a
//! [`Freshness`] kept beside it: a hit reads a few integers and the clock, and parses no
//! header.

use std::time::{Duration, UNIX_EPOCH};

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};

/// RFC 9111 §1.2.2: delta-seconds beyond what a cache can represent read as 2^31.
const DELTA_MAX: u64 = 2_147_483_648;

/// Statuses whose responses may be stored on heuristic freshness (RFC 9110 §15.1).
const HEURISTIC: [u16; 12] = [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Statuses this cache understands (for `must-understand`).
fn understood(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429
            | 431 | 451 | 500..=508 | 510 | 511
    )
}

/// The directives of one cache-control field (response or request), as RFC 9111 §5.2
/// parses them: case-insensitive names, the first occurrence of a directive wins, and an
/// argument that is not delta-seconds (quoted, negative, fractional) invalidates its
/// directive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    /// `max-stale` with no argument: any staleness.
    pub(crate) max_stale: Option<u64>,
    pub(crate) min_fresh: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) must_understand: bool,
    pub(crate) immutable: bool,
    pub(crate) only_if_cached: bool,
    /// Whether any directive was seen at all.
    pub(crate) present: bool,
}

/// Splits a field value on the commas outside quoted strings.
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let bytes = value.as_bytes();
    let mut cuts = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                cuts.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
    }
    cuts.push((start, bytes.len()));
    cuts.into_iter()
        .map(move |(a, b)| value[a..b].trim())
        .filter(|part| !part.is_empty())
}

/// delta-seconds: digits only, saturating at 2^31.
fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(DELTA_MAX).min(DELTA_MAX))
}

impl Directives {
    /// The directives of every `name` field line in `headers`, taken as one list.
    pub(crate) fn parse(headers: &HeaderMap, name: &HeaderName) -> Self {
        let mut d = Directives::default();
        let mut seen: Vec<String> = Vec::new();
        for value in headers.get_all(name) {
            let Ok(value) = value.to_str() else { continue };
            for directive in split_list(value) {
                let (name, argument) = match directive.split_once('=') {
                    Some((name, argument)) => (name, Some(argument)),
                    None => (directive, None),
                };
                // `max-age =1` is not `max-age`: no space may stand before the `=`.
                let name = name.to_ascii_lowercase();
                d.present = true;
                if seen.contains(&name) {
                    continue;
                }
                seen.push(name.clone());
                let delta = argument.and_then(delta_seconds);
                match name.as_str() {
                    "max-age" => d.max_age = delta,
                    "s-maxage" => d.s_maxage = delta,
                    "max-stale" => {
                        d.max_stale = match argument {
                            None => Some(u64::MAX),
                            Some(_) => delta,
                        }
                    }
                    "min-fresh" => d.min_fresh = delta,
                    "stale-while-revalidate" => d.stale_while_revalidate = delta,
                    "stale-if-error" => d.stale_if_error = delta,
                    "no-store" => d.no_store = true,
                    // `no-cache="field"` restricts only those fields; revalidating the
                    // whole response is the stricter reading, and always correct.
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "must-understand" => d.must_understand = true,
                    "immutable" => d.immutable = true,
                    "only-if-cached" => d.only_if_cached = true,
                    _ => {}
                }
            }
        }
        d
    }
}

/// Whether every `name` field line, joined, is a Structured Field dictionary (RFC 8941
/// §3.2): `key[=item](;key[=item])*` members, lowercase keys, well-formed bare items.
fn is_sf_dictionary(headers: &HeaderMap, name: &HeaderName) -> bool {
    fn key(s: &[u8], i: &mut usize) -> bool {
        if !s
            .get(*i)
            .is_some_and(|c| c.is_ascii_lowercase() || *c == b'*')
        {
            return false;
        }
        while s
            .get(*i)
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(c))
        {
            *i += 1;
        }
        true
    }
    fn item(s: &[u8], i: &mut usize) -> bool {
        match s.get(*i) {
            Some(b'"') => {
                *i += 1;
                loop {
                    match s.get(*i) {
                        Some(b'\\') => *i += 2,
                        Some(b'"') => {
                            *i += 1;
                            return true;
                        }
                        Some(c) if (0x20..0x7f).contains(c) => *i += 1,
                        _ => return false,
                    }
                }
            }
            Some(b'?') => {
                *i += 2;
                matches!(s.get(*i - 1), Some(b'0' | b'1'))
            }
            Some(b':') => {
                *i += 1;
                while s
                    .get(*i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || b"+/=".contains(c))
                {
                    *i += 1;
                }
                let closed = s.get(*i) == Some(&b':');
                *i += 1;
                closed
            }
            Some(c) if c.is_ascii_digit() || *c == b'-' => {
                *i += 1;
                while s.get(*i).is_some_and(|c| c.is_ascii_digit() || *c == b'.') {
                    *i += 1;
                }
                true
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'*' => {
                while s
                    .get(*i)
                    .is_some_and(|c| c.is_ascii_graphic() && !b"\",;=()<>@[]{}?".contains(c))
                {
                    *i += 1;
                }
                true
            }
            _ => false,
        }
    }
    let joined = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(", ");
    let s = joined.trim().as_bytes();
    let mut i = 0;
    let skip_spaces = |i: &mut usize| {
        while s.get(*i).is_some_and(|c| *c == b' ' || *c == b'\t') {
            *i += 1;
        }
    };
    loop {
        if !key(s, &mut i) {
            return false;
        }
        if s.get(i) == Some(&b'=') {
            i += 1;
            if !item(s, &mut i) {
                return false;
            }
        }
        while s.get(i) == Some(&b';') {
            i += 1;
            skip_spaces(&mut i);
            if !key(s, &mut i) {
                return false;
            }
            if s.get(i) == Some(&b'=') {
                i += 1;
                if !item(s, &mut i) {
                    return false;
                }
            }
        }
        skip_spaces(&mut i);
        match s.get(i) {
            None => return true,
            Some(b',') => {
                i += 1;
                skip_spaces(&mut i);
                if i >= s.len() {
                    return false;
                }
            }
            Some(_) => return false,
        }
    }
}

/// Seconds since the epoch of an HTTP-date (IMF-fixdate, RFC 850 or asctime).
fn http_date(headers: &HeaderMap, name: &HeaderName) -> Option<Result<u64, ()>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        // Two field lines of a singleton field: invalid.
        return Some(Err(()));
    }
    let parsed = first
        .to_str()
        .ok()
        .and_then(|text| httpdate::parse_http_date(text.trim()).ok())
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok());
    Some(parsed.map(|d| d.as_secs()).ok_or(()))
}

/// The `Age` field: the first value, when it is delta-seconds (RFC 9111 §5.1).
fn age_value(headers: &HeaderMap) -> u64 {
    headers
        .get(header::AGE)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| delta_seconds(text.split(',').next()?.trim()))
        .unwrap_or(0)
}

/// Which `Cache-Control`-like fields a shared cache obeys, in order of precedence.
#[derive(Clone, Debug)]
pub(crate) struct Targets {
    /// `CDN-Cache-Control` (RFC 9213), when the cache acts as a CDN.
    pub(crate) cdn: bool,
}

/// What the cache keeps beside a stored response to answer from it without parsing it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Freshness {
    /// When the response was as old as zero (ms since the epoch): the current age is the
    /// time since then (RFC 9111 §4.2.3's corrected initial age plus resident time).
    pub(crate) born_ms: u64,
    /// The freshness lifetime (ms).
    pub(crate) lifetime_ms: u64,
    /// Never served without revalidation (`no-cache`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) no_cache: bool,
    /// Never served stale (`must-revalidate`, `proxy-revalidate`, `s-maxage`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) no_stale: bool,
    /// `stale-while-revalidate` window (s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) swr: Option<u64>,
    /// `stale-if-error` window (s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sie: Option<u64>,
    /// The request's values of the fields the response `Vary`s on, normalised; `None` for
    /// a field the request lacked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) vary: Vec<(String, Option<String>)>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The response or request says `no-store`, or `private`.
    Forbidden,
    /// Nothing says how long it stays fresh, and no heuristic applies.
    NoFreshness,
    /// `Vary: *`, or a `Vary` that cannot be read.
    VaryStar,
    /// A status that is never stored (`206`, `304`, 1xx).
    Status,
}

/// The request's side of storing: when it was sent, whether it carried credentials.
pub(crate) struct Exchange<'a> {
    pub(crate) request_headers: &'a HeaderMap,
    pub(crate) request_time_ms: u64,
    pub(crate) response_time_ms: u64,
}

impl Freshness {
    /// Whether a shared cache may store `status` + `headers` answering `exchange`, and
    /// with what freshness. `default` is the lifetime to give a response that states none
    /// (`None`: only the RFC's heuristic), `ceiling` caps every lifetime.
    pub(crate) fn of(
        status: StatusCode,
        headers: &HeaderMap,
        exchange: &Exchange<'_>,
        targets: &Targets,
        default: Option<Duration>,
        ceiling: Option<Duration>,
    ) -> Result<Freshness, Refusal> {
        let code = status.as_u16();
        if code < 200 || code == 206 || code == 304 {
            return Err(Refusal::Status);
        }
        let cc = Directives::parse(headers, &header::CACHE_CONTROL);
        let cdn_name = HeaderName::from_static("cdn-cache-control");
        // RFC 9213 §2.1: a field that is not a valid Structured Field dictionary is ignored.
        let cdn = targets
            .cdn
            .then(|| is_sf_dictionary(headers, &cdn_name))
            .filter(|valid| *valid)
            .map(|_| Directives::parse(headers, &cdn_name))
            .filter(|d| d.present);
        // RFC 9213: a targeted field, when present, replaces Cache-Control for this cache.
        let governing = cdn.as_ref().unwrap_or(&cc);
        let request = Directives::parse(exchange.request_headers, &header::CACHE_CONTROL);
        let no_store = governing.no_store && !(governing.must_understand && understood(code));
        if governing.must_understand && !understood(code) {
            return Err(Refusal::Forbidden);
        }
        if no_store || governing.private || request.no_store {
            return Err(Refusal::Forbidden);
        }
        let authorized = exchange.request_headers.contains_key(header::AUTHORIZATION);
        if authorized && !(cc.public || cc.must_revalidate || cc.s_maxage.is_some()) {
            return Err(Refusal::Forbidden);
        }

        let mut vary = Vec::new();
        for value in headers.get_all(header::VARY) {
            let Ok(value) = value.to_str() else {
                return Err(Refusal::VaryStar);
            };
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if name == "*" {
                    return Err(Refusal::VaryStar);
                }
                let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                    return Err(Refusal::VaryStar);
                };
                if vary.iter().any(|(n, _)| n == name.as_str()) {
                    continue;
                }
                let value = normalised(exchange.request_headers, &name);
                vary.push((name.as_str().to_owned(), value));
            }
        }

        let date = match http_date(headers, &header::DATE) {
            Some(Ok(date)) => Some(date * 1000),
            _ => None,
        };
        let response_time = exchange.response_time_ms;
        let date_ms = date.unwrap_or(response_time);
        // §4.2.3
        let apparent_age = response_time.saturating_sub(date_ms);
        let response_delay = response_time.saturating_sub(exchange.request_time_ms);
        let corrected_age = age_value(headers)
            .saturating_mul(1000)
            .saturating_add(response_delay);
        let initial_age = apparent_age.max(corrected_age);
        let born_ms = response_time.saturating_sub(initial_age);

        // §4.2.1
        let explicit = if let Some(cdn) = &cdn {
            cdn.s_maxage.or(cdn.max_age).map(|s| s * 1000)
        } else {
            None
        };
        let explicit = explicit
            .or(cc.s_maxage.map(|s| s * 1000))
            .or(cc.max_age.map(|s| s * 1000))
            .or_else(|| match http_date(headers, &header::EXPIRES) {
                None => None,
                // An invalid Expires (or a second one) means "already expired".
                Some(Err(())) => Some(0),
                Some(Ok(expires)) => Some((expires * 1000).saturating_sub(date_ms)),
            })
            // An invalid max-age (quoted, negative) on its own also means stale.
            .or((cc.present && !cc.no_cache && has_directive(headers, "max-age")).then_some(0));
        let lifetime = match explicit {
            Some(lifetime) => lifetime,
            None => {
                let heuristic = HEURISTIC.contains(&code) || cc.public;
                let last_modified = match http_date(headers, &header::LAST_MODIFIED) {
                    Some(Ok(lm)) => Some(lm * 1000),
                    _ => None,
                };
                match (heuristic, last_modified, default) {
                    (_, _, Some(default)) => default.as_millis() as u64,
                    // §4.2.2: a tenth of the time since Last-Modified, as is customary.
                    (true, Some(lm), None) if lm <= date_ms => (date_ms - lm) / 10,
                    _ if cc.no_cache || governing.no_cache => 0,
                    _ => return Err(Refusal::NoFreshness),
                }
            }
        };
        let lifetime = match ceiling {
            Some(ceiling) => lifetime.min(ceiling.as_millis() as u64),
            None => lifetime,
        };
        Ok(Freshness {
            born_ms,
            lifetime_ms: lifetime,
            no_cache: governing.no_cache,
            no_stale: governing.must_revalidate
                || governing.proxy_revalidate
                || governing.s_maxage.is_some(),
            swr: governing.stale_while_revalidate,
            sie: governing.stale_if_error,
            vary,
        })
    }

    /// The current age (ms) at `now`.
    pub(crate) fn age_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.born_ms)
    }

    /// How long the store should keep the response: its freshness, then `keep` (or its
    /// stale windows, when longer) for revalidation and stale use.
    pub(crate) fn retention(&self, now: u64, keep: Duration) -> Duration {
        let stale_use = self
            .swr
            .into_iter()
            .chain(self.sie)
            .max()
            .map_or(Duration::ZERO, Duration::from_secs);
        let remaining = (self.born_ms + self.lifetime_ms).saturating_sub(now);
        Duration::from_millis(remaining) + keep.max(stale_use)
    }

    /// Whether a request with these headers selects this stored response (§4.1).
    pub(crate) fn selects(&self, request: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, stored)| {
            HeaderName::from_bytes(name.as_bytes())
                .is_ok_and(|name| normalised(request, &name) == *stored)
        })
    }

    /// What the response may be used for at `now`, for a request with `request`'s
    /// directives (§4.2, §4.2.4, RFC 5861).
    pub(crate) fn usable(&self, now: u64, request: &Directives) -> Use {
        let age = self.age_ms(now);
        if self.no_cache || request.no_cache {
            return Use::Revalidate;
        }
        let mut lifetime = self.lifetime_ms;
        if let Some(max_age) = request.max_age {
            lifetime = lifetime.min(max_age.saturating_mul(1000));
        }
        let min_fresh = request.min_fresh.unwrap_or(0).saturating_mul(1000);
        if age.saturating_add(min_fresh) < lifetime {
            return Use::Fresh;
        }
        let staleness = age.saturating_sub(self.lifetime_ms);
        if !self.no_stale {
            if let Some(max_stale) = request.max_stale
                && request.max_age.is_none()
                && staleness <= max_stale.saturating_mul(1000)
            {
                return Use::Fresh;
            }
            if let Some(swr) = self.swr
                && staleness <= swr.saturating_mul(1000)
            {
                return Use::WhileRevalidating;
            }
        }
        Use::Revalidate
    }

    /// Whether the response may stand in for an origin error at `now` (`stale-if-error`).
    pub(crate) fn serves_on_error(&self, now: u64) -> bool {
        !self.no_stale
            && self.sie.is_some_and(|sie| {
                self.age_ms(now).saturating_sub(self.lifetime_ms) <= sie.saturating_mul(1000)
            })
    }
}

/// What a stored response may be used for, now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// Served as it is.
    Fresh,
    /// Served stale while it is revalidated in the background.
    WhileRevalidating,
    /// Revalidated (or fetched anew) before it is used.
    Revalidate,
}

fn has_directive(headers: &HeaderMap, name: &str) -> bool {
    headers.get_all(header::CACHE_CONTROL).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            split_list(value).any(|d| {
                d.split('=')
                    .next()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
        })
    })
}

/// A request field's value as `Vary` compares it: field lines joined, whitespace around
/// list commas removed; `None` when absent.
pub(crate) fn normalised(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let mut out = String::new();
    for value in values {
        let text = String::from_utf8_lossy(value.as_bytes());
        for part in text.split(',') {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(part.trim());
        }
    }
    Some(out)
}

/// Whether the client's conditional request is satisfied by a stored response with
/// `stored` headers: a `304` may answer it (RFC 9110 §13.1.2, §13.1.3, §13.2.2).
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let etag = etag.trim().trim_start_matches("W/");
        return request.get_all(header::IF_NONE_MATCH).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .map(str::trim)
                    .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == etag)
            })
        }) && inm.to_str().is_ok();
    }
    let Some(Ok(since)) = http_date(request, &header::IF_MODIFIED_SINCE) else {
        return false;
    };
    let modified = match http_date(stored, &header::LAST_MODIFIED) {
        Some(Ok(lm)) => lm,
        _ => match http_date(stored, &header::DATE) {
            Some(Ok(date)) => date,
            _ => return false,
        },
    };
    modified <= since
}

/// The request fields that make a request conditional; a cache that fetches a whole
/// response for its store removes the client's own.
pub(crate) const CONDITIONALS: [HeaderName; 5] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Adds the validators of a stored response to a request (§4.3.1).
pub(crate) fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        request.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored.get(header::LAST_MODIFIED) {
        request.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

/// The fields of a `304` that do not replace the stored ones (§3.2).
fn keeps_stored(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::CONTENT_ENCODING
        || name == header::CONTENT_RANGE
}

/// Updates stored `headers` with those of a `304` (§4.3.4).
pub(crate) fn merge_not_modified(headers: &mut HeaderMap, not_modified: &HeaderMap) {
    let mut replaced: Vec<&HeaderName> = Vec::new();
    for (name, value) in not_modified {
        if keeps_stored(name) || !super::is_stored_header(name) {
            continue;
        }
        if !replaced.contains(&name) {
            headers.remove(name);
            replaced.push(name);
        }
        headers.append(name.clone(), value.clone());
    }
}

/// The header fields named by `Connection` (hop-by-hop for this one connection, §7.6.1 of
/// RFC 9110): never stored or forwarded.
pub(crate) fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn fresh_for(response: &[(&str, &str)]) -> Result<u64, Refusal> {
        let request = HeaderMap::new();
        let now = 1_700_000_000_000;
        let exchange = Exchange {
            request_headers: &request,
            request_time_ms: now,
            response_time_ms: now,
        };
        let targets = Targets { cdn: true };
        Freshness::of(
            StatusCode::OK,
            &headers(response),
            &exchange,
            &targets,
            None,
            None,
        )
        .map(|f| f.lifetime_ms.saturating_sub(f.age_ms(now)) / 1000)
    }

    #[test]
    fn directives_parse_as_the_rfc_says() {
        assert_eq!(fresh_for(&[("cache-control", "max-age=3600")]), Ok(3600));
        assert_eq!(fresh_for(&[("cache-control", "MaX-aGe=10")]), Ok(10));
        assert_eq!(fresh_for(&[("cache-control", "max-age=003600")]), Ok(3600));
        assert_eq!(
            fresh_for(&[("cache-control", "max-age=99999999999")]),
            Ok(DELTA_MAX)
        );
        assert_eq!(fresh_for(&[("cache-control", "max-age='3600'")]), Ok(0));
        assert_eq!(fresh_for(&[("cache-control", "max-age=-1")]), Ok(0));
        assert_eq!(
            fresh_for(&[("cache-control", "extension=\"max-age=3600\", max-age=1")]),
            Ok(1)
        );
        assert_eq!(
            fresh_for(&[("cache-control", "max-age=100, s-maxage=1")]),
            Ok(1)
        );
        assert_eq!(
            fresh_for(&[("cache-control", "max-age=100"), ("age", "30")]),
            Ok(70)
        );
        assert_eq!(
            fresh_for(&[("cache-control", "no-store, max-age=100")]),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            fresh_for(&[("cache-control", "private, max-age=100")]),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            fresh_for(&[("vary", "*"), ("cache-control", "max-age=9")]),
            Err(Refusal::VaryStar)
        );
        assert_eq!(fresh_for(&[]), Err(Refusal::NoFreshness));
        assert_eq!(fresh_for(&[("expires", "yesterday")]), Ok(0));
        assert_eq!(
            fresh_for(&[
                ("cdn-cache-control", "max-age=50"),
                ("cache-control", "no-store")
            ]),
            Ok(50)
        );
        // Not a Structured Field dictionary: ignored, so Cache-Control governs.
        assert_eq!(
            fresh_for(&[
                ("cdn-cache-control", "max-age=50, &&&"),
                ("cache-control", "no-store")
            ]),
            Err(Refusal::Forbidden)
        );
    }

    #[test]
    fn expires_counts_from_date_and_heuristics_need_last_modified() {
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let expires = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_700_000_100));
        let lm = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_699_999_000));
        assert_eq!(
            fresh_for(&[("date", &date), ("expires", &expires)]),
            Ok(100)
        );
        assert_eq!(
            fresh_for(&[("date", &date), ("last-modified", &lm)]),
            Ok(100)
        );
    }

    #[test]
    fn requests_narrow_or_widen_what_is_fresh() {
        let f = Freshness {
            born_ms: 0,
            lifetime_ms: 10_000,
            ..Freshness::default()
        };
        let plain = Directives::default();
        assert_eq!(f.usable(5_000, &plain), Use::Fresh);
        assert_eq!(f.usable(10_000, &plain), Use::Revalidate);
        let max_age = Directives::parse(
            &headers(&[("cache-control", "max-age=2")]),
            &header::CACHE_CONTROL,
        );
        assert_eq!(f.usable(5_000, &max_age), Use::Revalidate);
        let stale_ok = Directives::parse(
            &headers(&[("cache-control", "max-stale=5")]),
            &header::CACHE_CONTROL,
        );
        assert_eq!(f.usable(14_000, &stale_ok), Use::Fresh);
        let strict = Freshness {
            no_stale: true,
            ..f.clone()
        };
        assert_eq!(strict.usable(14_000, &stale_ok), Use::Revalidate);
        let swr = Freshness { swr: Some(5), ..f };
        assert_eq!(swr.usable(12_000, &plain), Use::WhileRevalidating);
        assert_eq!(swr.usable(16_000, &plain), Use::Revalidate);
    }

    #[test]
    fn conditionals_compare_weakly() {
        let stored = headers(&[("etag", "\"abc\"")]);
        assert!(not_modified(
            &headers(&[("if-none-match", "W/\"abc\"")]),
            &stored
        ));
        assert!(not_modified(
            &headers(&[("if-none-match", "\"x\", \"abc\"")]),
            &stored
        ));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"x\"")]),
            &stored
        ));
    }
}
