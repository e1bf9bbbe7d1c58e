//! The frame around every cached value: a header that lets any instance tell how old a
//! value is and until when it is fresh, followed by the codec's bytes.
//!
//! ```text
//! offset  size  field
//! 0       1     magic 0xCA
//! 1       1     format version (1)
//! 2       1     kind: 0 a typed value, 1 an HTTP or gRPC response (older frames: 0);
//!               high bit set: the payload is compressed
//! 3       8     stored at, Unix milliseconds, little endian
//! 11      8     fresh until, Unix milliseconds, little endian (0: no expiry)
//! 19      4     how long the load that produced it took, milliseconds (for XFetch)
//! 23      …     payload: the value as the codec encodes it, or, compressed, the codec's
//!               length (4 bytes, little endian) and its LZ4 block
//! ```
//!
//! Compressed and plain frames coexist: each says which it is, so a change of the threshold
//! (or turning compression off) leaves every stored value readable.
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
/// The flag on the kind byte of a compressed frame.
const COMPRESSED: u8 = 0x80;

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
    /// Whether the payload is compressed (set by [`encode`] and [`split`]).
    pub(crate) compressed: bool,
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
    /// A compressed payload whose frame would expand to `size` bytes, past the cache's
    /// limit `max`: not expanded (a decompression bomb allocates nothing).
    TooLarge { size: usize, max: usize },
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
            compressed: false,
        }
    }

    /// Whether the value is past its freshness at `now_ms` (kept only for fail-safe).
    pub(crate) fn is_stale(&self, now_ms: u64) -> bool {
        self.fresh_until_ms.is_some_and(|until| until <= now_ms)
    }
}

/// A framed value, with the length of its encoding before compression.
pub(crate) struct Encoded {
    pub(crate) bytes: Bytes,
    /// Header and codec output, uncompressed: what a reader expands it to.
    pub(crate) plain_len: usize,
}

/// Frames `value` with `header`, compressing an encoding longer than `compress_above`
/// bytes when that saves at least a tenth of it.
pub(crate) fn encode<V, C: Codec<V>>(
    codec: &C,
    header: Header,
    value: &V,
    compress_above: Option<usize>,
) -> Result<Encoded, FrameError> {
    let mut buf = Vec::with_capacity(HEADER_LEN + 128);
    write_header(&mut buf, header, false);
    codec
        .encode_into(value, &mut buf)
        .map_err(FrameError::Encode)?;
    let plain_len = buf.len();
    let payload_len = plain_len - HEADER_LEN;
    if let (Some(above), Ok(length)) = (compress_above, u32::try_from(payload_len))
        && payload_len > above
    {
        let mut packed = Vec::with_capacity(
            HEADER_LEN + 4 + lz4_flex::block::get_maximum_output_size(payload_len),
        );
        write_header(&mut packed, header, true);
        packed.extend_from_slice(&length.to_le_bytes());
        let start = packed.len();
        packed.resize(packed.capacity(), 0);
        let written = lz4_flex::block::compress_into(&buf[HEADER_LEN..], &mut packed[start..])
            .map_err(|_| FrameError::Corrupt("the compressor's output did not fit"))?;
        packed.truncate(start + written);
        if packed.len() <= plain_len - plain_len / 10 {
            buf = packed;
        }
    }
    // The bytes keep their allocation for as long as a store keeps them: not the spare
    // capacity of the growing buffer too (up to as much again).
    buf.shrink_to_fit();
    Ok(Encoded {
        bytes: Bytes::from(buf),
        plain_len,
    })
}

fn write_header(buf: &mut Vec<u8>, header: Header, compressed: bool) {
    let kind = header.kind as u8 | if compressed { COMPRESSED } else { 0 };
    buf.extend_from_slice(&[MAGIC, VERSION, kind]);
    buf.extend_from_slice(&header.stored_at_ms.to_le_bytes());
    buf.extend_from_slice(&header.fresh_until_ms.unwrap_or(0).to_le_bytes());
    buf.extend_from_slice(&header.load_ms.to_le_bytes());
}

/// The codec's bytes of a compressed `payload` (as [`split`] returns it), if their frame is
/// no longer than `max`: the claimed length is checked before anything is allocated, and the
/// expansion must produce exactly that many bytes.
pub(crate) fn expand(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    let Some((length, block)) = payload.split_first_chunk::<4>() else {
        return Err(FrameError::Corrupt(
            "a compressed payload without its length",
        ));
    };
    let size = u32::from_le_bytes(*length) as usize;
    if HEADER_LEN + size > max {
        return Err(FrameError::TooLarge {
            size: HEADER_LEN + size,
            max,
        });
    }
    let mut plain = vec![0; size];
    match lz4_flex::block::decompress_into(block, &mut plain) {
        Ok(written) if written == size => Ok(plain),
        _ => Err(FrameError::Corrupt(
            "a compressed payload that does not expand",
        )),
    }
}

/// Splits a framed value into its header and payload.
pub(crate) fn split(bytes: &[u8]) -> Result<(Header, &[u8]), FrameError> {
    Ok((header(bytes)?, &bytes[HEADER_LEN..]))
}

/// The header of a framed value: its first [`HEADER_LEN`] bytes, checked.
pub(crate) fn header(bytes: &[u8]) -> Result<Header, FrameError> {
    let Some(bytes) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Corrupt("shorter than the frame header"));
    };
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
    let compressed = bytes[2] & COMPRESSED != 0;
    let kind = Kind::from_byte(bytes[2] & !COMPRESSED)
        .ok_or(FrameError::Corrupt("unknown kind of value"))?;
    let fresh_until = word(11);
    let mut load_ms = [0u8; 4];
    load_ms.copy_from_slice(&bytes[19..23]);
    Ok(Header {
        stored_at_ms: word(3),
        fresh_until_ms: (fresh_until != 0).then_some(fresh_until),
        load_ms: u32::from_le_bytes(load_ms),
        kind,
        compressed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Json;

    #[test]
    fn round_trips_and_rejects_foreign_bytes() {
        let header = Header::new(Some(Duration::from_secs(5)));
        let bytes = encode(&Json, header, &"v".to_string(), None).unwrap().bytes;
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
        let bytes = encode(&Json, response, &"v".to_string(), None)
            .unwrap()
            .bytes;
        assert_eq!(split(&bytes).unwrap().0.kind, Kind::Response);
    }

    #[test]
    fn compresses_long_encodings_that_shrink_and_expands_them_back() {
        let header = Header::new(None);
        let long = "tower-caching ".repeat(200);
        let encoded = encode(&Json, header, &long, Some(1024)).unwrap();
        assert!(
            encoded.bytes.len() < encoded.plain_len / 5,
            "{}",
            encoded.bytes.len()
        );
        let (back, payload) = split(&encoded.bytes).unwrap();
        assert!(back.compressed);
        assert_eq!(
            (back.kind, back.stored_at_ms),
            (Kind::Value, header.stored_at_ms)
        );
        let plain = expand(payload, 1 << 20).unwrap();
        assert_eq!(plain.len(), encoded.plain_len - HEADER_LEN);
        assert_eq!(serde_json::from_slice::<String>(&plain).unwrap(), long);
        // At the threshold, or off: plain.
        let short = "x".repeat(1000);
        let at = encode(&Json, header, &short, Some(1024)).unwrap();
        assert!(!split(&at.bytes).unwrap().0.compressed);
        let off = encode(&Json, header, &long, None).unwrap();
        assert!(!split(&off.bytes).unwrap().0.compressed);
        // What does not shrink by a tenth is kept plain rather than stored longer.
        let random: String = (0..4096).map(|_| fastrand::alphanumeric()).collect();
        let kept = encode(&Json, header, &random, Some(1024)).unwrap();
        assert!(!split(&kept.bytes).unwrap().0.compressed);
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_it_allocates() {
        // 4 GiB claimed, a dozen bytes of block: refused by the claim alone.
        let mut bomb = u32::MAX.to_le_bytes().to_vec();
        bomb.extend_from_slice(&[0x1f, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            expand(&bomb, 1 << 20),
            Err(FrameError::TooLarge { size, .. }) if size == HEADER_LEN + u32::MAX as usize
        ));
        // A claim that the block does not live up to, either way: corrupt.
        let text = b"hello hello hello hello";
        let packed = lz4_flex::block::compress(text);
        for claimed in [5u32, 24, 1000] {
            let mut lying = claimed.to_le_bytes().to_vec();
            lying.extend_from_slice(&packed);
            assert!(
                matches!(expand(&lying, 1 << 20), Err(FrameError::Corrupt(_))),
                "{claimed}"
            );
        }
        let mut honest = (text.len() as u32).to_le_bytes().to_vec();
        honest.extend_from_slice(&packed);
        assert_eq!(expand(&honest, 1 << 20).unwrap(), text);
        assert!(matches!(
            expand(&[1, 2], 1 << 20),
            Err(FrameError::Corrupt(_))
        ));
        let limit = HEADER_LEN + text.len();
        assert!(expand(&honest, limit).is_ok());
        assert!(matches!(
            expand(&honest, limit - 1),
            Err(FrameError::TooLarge { size, max }) if size == limit && max == limit - 1
        ));
    }
}
