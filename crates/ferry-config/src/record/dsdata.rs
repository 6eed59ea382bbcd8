//! `dsdata`: Ferry's binary data-source record, version 1.
//!
//! The Kafka key is the source id (UTF-8). The value is little-endian:
//!
//! | bytes            | field                                        |
//! |------------------|----------------------------------------------|
//! | `0..2`           | magic `b"FD"`                                |
//! | `2`              | version, `1`                                 |
//! | `3`              | flags, `0` (reserved)                        |
//! | `4..12`          | timestamp, `i64` milliseconds since the epoch |
//! | `12..14`         | float count N, `u16`, at most 4096           |
//! | `14..14+8N`      | N × `f64` IEEE-754, all finite               |
//! | next 2           | text length L, `u16`, at most 4096           |
//! | next L           | text, UTF-8                                  |
//!
//! The total is exactly `16 + 8N + L` bytes. Decoding refuses a wrong magic, version or
//! flags, a truncated record, trailing bytes, text that is not UTF-8, a non-finite float,
//! and counts over the limits, each with its own [`RejectReason`](super::RejectReason).
//! No input makes it panic.

use super::{DataRecord, DecodeError, EncodeError, MAX_FLOATS, MAX_TEXT_BYTES, check_encodable};

pub const MAGIC: [u8; 2] = *b"FD";
pub const VERSION: u8 = 1;
/// Magic, version, flags, timestamp and float count.
pub const HEADER_LEN: usize = 14;
/// The header plus the text length: a record with no floats and no text.
pub const MIN_LEN: usize = HEADER_LEN + 2;

/// The encoded size of a record with `floats` floats and `text_bytes` bytes of text.
pub const fn encoded_len(floats: usize, text_bytes: usize) -> usize {
    MIN_LEN + 8 * floats + text_bytes
}

/// A validated record borrowed from its bytes: parsing checks everything and allocates
/// nothing, so the receiver can validate at line rate.
#[derive(Debug, Clone, Copy)]
pub struct DsdataView<'a> {
    timestamp_ms: i64,
    floats: &'a [u8],
    text: &'a str,
}

impl<'a> DsdataView<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let truncated = |section, needed| DecodeError::Truncated {
            section,
            needed,
            available: bytes.len(),
        };
        let (Some(&m0), Some(&m1)) = (bytes.first(), bytes.get(1)) else {
            return Err(truncated("magic", 2));
        };
        if [m0, m1] != MAGIC {
            return Err(DecodeError::BadMagic { found: [m0, m1] });
        }
        let version = *bytes.get(2).ok_or_else(|| truncated("version", 3))?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion { found: version });
        }
        let flags = *bytes.get(3).ok_or_else(|| truncated("flags", 4))?;
        if flags != 0 {
            return Err(DecodeError::ReservedFlags { found: flags });
        }
        let timestamp_ms =
            i64::from_le_bytes(read_array(bytes, 4).ok_or_else(|| truncated("timestamp", 12))?);
        let float_count = usize::from(u16::from_le_bytes(
            read_array(bytes, 12).ok_or_else(|| truncated("float count", HEADER_LEN))?,
        ));
        if float_count > MAX_FLOATS {
            return Err(DecodeError::TooManyFloats { count: float_count });
        }
        let floats_end = HEADER_LEN + 8 * float_count;
        let floats = bytes
            .get(HEADER_LEN..floats_end)
            .ok_or_else(|| truncated("floats", floats_end))?;
        if let Some(index) = floats
            .chunks_exact(8)
            .position(|chunk| !f64::from_le_bytes(chunk_array(chunk)).is_finite())
        {
            return Err(DecodeError::NonFiniteFloat { index });
        }
        let text_len = usize::from(u16::from_le_bytes(
            read_array(bytes, floats_end)
                .ok_or_else(|| truncated("text length", floats_end + 2))?,
        ));
        if text_len > MAX_TEXT_BYTES {
            return Err(DecodeError::TextTooLong { len: text_len });
        }
        let text_start = floats_end + 2;
        let text_end = text_start + text_len;
        let text = bytes
            .get(text_start..text_end)
            .ok_or_else(|| truncated("text", text_end))?;
        if bytes.len() > text_end {
            return Err(DecodeError::TrailingBytes {
                extra: bytes.len() - text_end,
            });
        }
        let text = std::str::from_utf8(text).map_err(|err| DecodeError::InvalidUtf8 {
            valid_up_to: err.valid_up_to(),
        })?;
        Ok(Self {
            timestamp_ms,
            floats,
            text,
        })
    }

    pub const fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    pub const fn float_count(&self) -> usize {
        self.floats.len() / 8
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = f64> + 'a {
        self.floats
            .chunks_exact(8)
            .map(|chunk| f64::from_le_bytes(chunk_array(chunk)))
    }

    pub const fn text(&self) -> &'a str {
        self.text
    }

    pub fn to_record(&self) -> DataRecord {
        DataRecord {
            timestamp_ms: self.timestamp_ms,
            values: self.values().collect(),
            text: self.text.to_owned(),
        }
    }
}

/// Decodes a dsdata value into an owned record.
pub fn decode(bytes: &[u8]) -> Result<DataRecord, DecodeError> {
    DsdataView::parse(bytes).map(|view| view.to_record())
}

/// Encodes a record; refuses what [`decode`] would refuse.
pub fn encode(record: &DataRecord) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(encoded_len(record.values.len(), record.text.len()));
    encode_into(record.timestamp_ms, &record.values, &record.text, &mut out)?;
    Ok(out)
}

/// Appends the encoding to `out`, so a producer can reuse one buffer.
pub fn encode_into(
    timestamp_ms: i64,
    values: &[f64],
    text: &str,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    check_encodable(values, text)?;
    out.reserve(encoded_len(values.len(), text.len()));
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    // Both lengths are at most 4096, checked above, so they fit a u16.
    out.extend_from_slice(&(values.len() as u16).to_le_bytes());
    for value in values {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn read_array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// `chunks_exact(8)` yields 8-byte chunks, so this never pads.
fn chunk_array(chunk: &[u8]) -> [u8; 8] {
    let mut array = [0u8; 8];
    array.copy_from_slice(&chunk[..8]);
    array
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RejectReason;

    fn sample() -> DataRecord {
        DataRecord {
            timestamp_ms: 1_700_000_000_000,
            values: vec![1.0, -0.5, 1e300],
            text: "ok ✓".to_owned(),
        }
    }

    fn reason(bytes: &[u8]) -> RejectReason {
        DsdataView::parse(bytes).unwrap_err().reason()
    }

    #[test]
    fn layout_matches_the_spec() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(bytes.len(), 16 + 8 * 3 + "ok ✓".len());
        assert_eq!(&bytes[0..2], b"FD");
        assert_eq!(bytes[2], 1);
        assert_eq!(bytes[3], 0);
        assert_eq!(&bytes[4..12], &1_700_000_000_000i64.to_le_bytes());
        assert_eq!(&bytes[12..14], &3u16.to_le_bytes());
        assert_eq!(&bytes[14..22], &1.0f64.to_le_bytes());
        assert_eq!(&bytes[38..40], &("ok ✓".len() as u16).to_le_bytes());
    }

    #[test]
    fn round_trips() {
        for record in [
            sample(),
            DataRecord::default(),
            DataRecord {
                timestamp_ms: i64::MIN,
                values: vec![f64::MAX; MAX_FLOATS],
                text: "x".repeat(MAX_TEXT_BYTES),
            },
        ] {
            let bytes = encode(&record).unwrap();
            assert_eq!(decode(&bytes).unwrap(), record);
            let view = DsdataView::parse(&bytes).unwrap();
            assert_eq!(view.float_count(), record.values.len());
            assert_eq!(view.text(), record.text);
        }
    }

    #[test]
    fn rejects_each_fault_with_its_reason() {
        let good = encode(&sample()).unwrap();
        let with = |at: usize, byte: u8| {
            let mut bytes = good.clone();
            bytes[at] = byte;
            bytes
        };
        assert_eq!(reason(&with(0, b'X')), RejectReason::BadMagic);
        assert_eq!(reason(&with(2, 2)), RejectReason::UnsupportedVersion);
        assert_eq!(reason(&with(3, 1)), RejectReason::ReservedFlags);
        for len in 0..good.len() {
            assert_eq!(reason(&good[..len]), RejectReason::Truncated, "len {len}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(reason(&trailing), RejectReason::TrailingBytes);

        let mut bad_text = good.clone();
        let last = bad_text.len() - 1;
        bad_text[last] = 0xff;
        assert_eq!(reason(&bad_text), RejectReason::InvalidUtf8);

        let mut nan = good.clone();
        nan[22..30].copy_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(
            DsdataView::parse(&nan).unwrap_err(),
            DecodeError::NonFiniteFloat { index: 1 }
        );
        let mut inf = good.clone();
        inf[14..22].copy_from_slice(&f64::NEG_INFINITY.to_le_bytes());
        assert_eq!(reason(&inf), RejectReason::NonFiniteFloat);

        let mut many = good[..14].to_vec();
        many[12..14].copy_from_slice(&4097u16.to_le_bytes());
        assert_eq!(reason(&many), RejectReason::TooManyFloats);

        let mut long_text = encode(&DataRecord::default()).unwrap();
        long_text[14..16].copy_from_slice(&4097u16.to_le_bytes());
        long_text.extend(std::iter::repeat_n(b'a', 4097));
        assert_eq!(reason(&long_text), RejectReason::TextTooLong);
    }

    #[test]
    fn encoder_refuses_what_the_decoder_refuses() {
        let mut record = sample();
        record.values[0] = f64::INFINITY;
        assert_eq!(
            encode(&record),
            Err(EncodeError::NonFiniteFloat { index: 0 })
        );
        record.values = vec![0.0; MAX_FLOATS + 1];
        assert!(matches!(
            encode(&record),
            Err(EncodeError::TooManyFloats { .. })
        ));
        record.values.clear();
        record.text = "y".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(
            encode(&record),
            Err(EncodeError::TextTooLong { .. })
        ));
    }

    /// Deterministic xorshift, so the fuzz below needs no dependency and always replays.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let good = encode(&sample()).unwrap();
        for round in 0..200_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                let len = (rng.next() % 80) as usize;
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                // Mutations of a valid record reach the deeper checks.
                let mut bytes = good.clone();
                for _ in 0..=(rng.next() % 3) {
                    let at = (rng.next() as usize) % bytes.len();
                    bytes[at] = rng.next() as u8;
                }
                let keep = bytes.len() - (rng.next() % 3) as usize;
                bytes.truncate(keep);
                bytes
            };
            if let Ok(view) = DsdataView::parse(&bytes) {
                assert_eq!(
                    bytes.len(),
                    encoded_len(view.float_count(), view.text().len())
                );
                assert!(view.values().all(f64::is_finite));
                assert_eq!(encode(&view.to_record()).unwrap(), bytes);
            }
        }
    }
}
