//! A bounds-checked little-endian reader over a byte slice: every read names
//! what it reads, so a short input becomes a `Truncated` error that says
//! which field was cut off.

use uuid::Uuid;

use super::FormatError;

pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Fail unless `count` records of `record_len` bytes each are still
    /// present; run before sizing an allocation by a count from the file.
    pub(crate) fn ensure_records(
        &self,
        what: &'static str,
        count: u64,
        record_len: u64,
    ) -> Result<(), FormatError> {
        let needed = count.saturating_mul(record_len);
        let available = self.remaining() as u64;
        if needed > available {
            return Err(FormatError::Truncated {
                what,
                needed,
                available,
            });
        }
        Ok(())
    }

    pub(crate) fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(FormatError::Truncated {
                what,
                needed: len as u64,
                available: self.remaining() as u64,
            })?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, FormatError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, FormatError> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// An i64 field that must not be negative (offsets and sizes).
    pub(crate) fn non_negative_i64(&mut self, what: &'static str) -> Result<u64, FormatError> {
        let v = i64::from_le_bytes(self.array(what)?);
        u64::try_from(v).map_err(|_| FormatError::invalid(what, format!("{v} is negative")))
    }

    pub(crate) fn uuid(&mut self, what: &'static str) -> Result<Uuid, FormatError> {
        Ok(Uuid::from_bytes(self.array(what)?))
    }

    pub(crate) fn sha256(&mut self, what: &'static str) -> Result<[u8; 32], FormatError> {
        self.array(what)
    }
}
