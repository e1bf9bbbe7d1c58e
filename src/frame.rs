//! The frame around every cached value: a header that lets any instance tell how old a
//! value is and until when it is fresh, followed by the codec's bytes.
//!
//! ```text
//! offset  size  field
//! 0       1     magic 0xCA
//! 1       1     format version (1)
//! 2       1     kind: 0 a typed value, 1 an HTTP or gRPC response (older frames: 0)
//! 3       8     stored at, Unix milliseconds, little endian
//! 11      8     fresh until, Unix milliseconds, little endian (0: no expiry)
//! 19      4     how long the load that produced it took, milliseconds (for XFetch)
//! 23      …     payload: the value as the codec encodes it
//! ```
//!
//! With fail-safe, an entry outlives its freshness: Redis or moka keep it for its TTL plus a
//! grace period, and readers tell fresh from stale by "fresh until".
//!
//! It sits below the stores and the cache, with the time helpers both use.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::codec::{Codec, CodecError};

const MAGIC: u8 = 0xCA;
const VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 23;

/// What stored a value: a typed cache, or a response cache. A key read by the other kind
/// is two caches sharing one key, which would overwrite each other's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum Kind {
    /// A value of a typed [`Cache`](crate::Cache).
    #[default]
    Value = 0,
    /// A response of the HTTP or gRPC layers.
    Response = 1,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            0 => Some(Kind::Value),
            1 => Some(Kind::Response),
            _ => None,
        }
    }

    /// What a value of this kind is, for an error message.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::Value => "a typed cache's value",
            Kind::Response => "an HTTP or gRPC response",
        }
    }
}

/// When a cached value was stored and until when it is fresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) stored_at_ms: u64,
    pub(crate) fresh_until_ms: Option<u64>,
    pub(crate) load_ms: u32,
    pub(crate) kind: Kind,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A value that could not be framed, or bytes that are not a frame.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The codec could not encode the value.
    Encode(CodecError),
    /// The bytes are not a frame this crate wrote.
    Corrupt(&'static str),
}

/// The longest TTL any store is given: about 100 years. Longer ones (`Duration::MAX`, a
/// policy's overflow) mean "practically forever" and are clamped here, so that no store
/// overflows an expiry instant or refuses the command.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `ttl`, no longer than [`MAX_TTL`].
pub(crate) fn clamp_ttl(ttl: Duration) -> Duration {
    ttl.min(MAX_TTL)
}

/// `duration` in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Header {
    pub(crate) fn new(ttl: Option<Duration>) -> Self {
        let stored_at_ms = now_ms();
        Header {
            stored_at_ms,
            fresh_until_ms: ttl.map(|ttl| stored_at_ms.saturating_add(millis(ttl)).max(1)),
            load_ms: 0,
            kind: Kind::Value,
        }
    }

    /// Whether the value is past its freshness at `now_ms` (kept only for fail-safe).
    pub(crate) fn is_stale(&self, now_ms: u64) -> bool {
        self.fresh_until_ms.is_some_and(|until| until <= now_ms)
    }
}

/// Frames `value` with `header`.
pub(crate) fn encode<V: serde::Serialize, C: Codec>(
    codec: &C,
    header: Header,
    value: &V,
) -> Result<Bytes, FrameError> {
    let mut buf = Vec::with_capacity(HEADER_LEN + 128);
    buf.extend_from_slice(&[MAGIC, VERSION, header.kind as u8]);
    buf.extend_from_slice(&header.stored_at_ms.to_le_bytes());
    buf.extend_from_slice(&header.fresh_until_ms.unwrap_or(0).to_le_bytes());
    buf.extend_from_slice(&header.load_ms.to_le_bytes());
    codec
        .encode_into(value, &mut buf)
        .map_err(FrameError::Encode)?;
    // The bytes keep their allocation for as long as a store keeps them: not the spare
    // capacity of the growing buffer too (up to as much again).
    buf.shrink_to_fit();
    Ok(Bytes::from(buf))
}

/// Splits a framed value into its header and payload.
pub(crate) fn split(bytes: &[u8]) -> Result<(Header, &[u8]), FrameError> {
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::Corrupt("shorter than the frame header"));
    }
    if bytes[0] != MAGIC {
        return Err(FrameError::Corrupt(
            "not written by tower-caching (bad magic byte)",
        ));
    }
    if bytes[1] != VERSION {
        return Err(FrameError::Corrupt("written by an unknown format version"));
    }
    let word = |at: usize| {
        let mut le = [0u8; 8];
        le.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(le)
    };
    let kind = Kind::from_byte(bytes[2]).ok_or(FrameError::Corrupt("unknown kind of value"))?;
    let fresh_until = word(11);
    let mut load_ms = [0u8; 4];
    load_ms.copy_from_slice(&bytes[19..23]);
    Ok((
        Header {
            stored_at_ms: word(3),
            fresh_until_ms: (fresh_until != 0).then_some(fresh_until),
            load_ms: u32::from_le_bytes(load_ms),
            kind,
        },
        &bytes[HEADER_LEN..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Json;

    #[test]
    fn round_trips_and_rejects_foreign_bytes() {
        let header = Header::new(Some(Duration::from_secs(5)));
        let bytes = encode(&Json, header, &"v").unwrap();
        let (back, payload) = split(&bytes).unwrap();
        assert_eq!(back, header);
        assert_eq!(payload, b"\"v\"");
        assert!(split(b"\"v\"").is_err());
        assert!(split(&[]).is_err());
        let mut other_version = bytes.to_vec();
        other_version[1] = 9;
        assert!(split(&other_version).is_err());
        let mut response = header;
        response.kind = Kind::Response;
        let bytes = encode(&Json, response, &"v").unwrap();
        assert_eq!(split(&bytes).unwrap().0.kind, Kind::Response);
    }
}
