//! Go's `encoding/binary` uvarint (LEB128) and varint (zig-zag, then LEB128).

use super::FormatError;
use super::cursor::Cursor;

/// Longest encoding of a u64 (as Go's `binary.MaxVarintLen64`).
const MAX_VARINT_LEN: usize = 10;

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_varint(out: &mut Vec<u8>, v: i64) {
    // Zig-zag: small magnitudes of either sign get short encodings.
    let zigzag = ((v as u64) << 1) ^ ((v >> 63) as u64);
    put_uvarint(out, zigzag);
}

/// Read one uvarint; like Go, more than 10 bytes or a 10th byte above 1 is an
/// overflow (error), never a silently wrapped value.
pub(crate) fn read_uvarint(cur: &mut Cursor<'_>, what: &'static str) -> Result<u64, FormatError> {
    let mut value: u64 = 0;
    for i in 0..MAX_VARINT_LEN {
        let byte = cur.u8(what)?;
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(FormatError::invalid(what, "varint overflows 64 bits"));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(FormatError::invalid(what, "varint longer than 10 bytes"))
}

pub(crate) fn read_varint(cur: &mut Cursor<'_>, what: &'static str) -> Result<i64, FormatError> {
    let zigzag = read_uvarint(cur, what)?;
    let magnitude = (zigzag >> 1) as i64;
    Ok(if zigzag & 1 == 0 {
        magnitude
    } else {
        !magnitude
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uv(bytes: &[u8]) -> Result<u64, FormatError> {
        read_uvarint(&mut Cursor::new(bytes), "test")
    }

    #[test]
    fn matches_go_encodings() {
        // Values and encodings from Go's binary.PutUvarint / PutVarint.
        let cases: [(u64, &[u8]); 5] = [
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
        ];
        for (v, enc) in cases {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            assert_eq!(out, enc, "{v}");
            assert_eq!(uv(enc), Ok(v));
        }
        let signed: [(i64, &[u8]); 4] = [(0, &[0]), (-1, &[1]), (1, &[2]), (-64, &[0x7f])];
        for (v, enc) in signed {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out, enc, "{v}");
            assert_eq!(read_varint(&mut Cursor::new(enc), "test"), Ok(v));
        }
    }

    #[test]
    fn extremes_round_trip() {
        for v in [u64::MAX, u64::MAX >> 1, 1 << 63, 1 << 35] {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            assert_eq!(uv(&out), Ok(v));
        }
        for v in [i64::MIN, i64::MAX, -12345678901, 12345678901] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(read_varint(&mut Cursor::new(&out), "test"), Ok(v));
        }
    }

    #[test]
    fn rejects_overflow_and_truncation() {
        assert!(matches!(uv(&[0xff; 9]), Err(FormatError::Truncated { .. })));
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        assert!(matches!(uv(&too_big), Err(FormatError::Invalid { .. })));
        assert!(matches!(uv(&[0x80; 11]), Err(FormatError::Invalid { .. })));
        assert!(matches!(uv(&[]), Err(FormatError::Truncated { .. })));
    }
}
