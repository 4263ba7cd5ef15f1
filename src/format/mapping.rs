//! Mappings (FORMAT.md "Versions 1–3", "Version 5"): the ranges of a
//! template file and where each is stored, checked into one canonical
//! sorted, gap-free list, and the lookup of the mapping holding an offset.

use std::collections::HashSet;

use uuid::Uuid;

use super::{FormatError, PAGE_SIZE};

/// Most entries of a V5 build-id table.
pub const MAX_V5_BUILDS: u32 = 65_535;
/// Most mappings of a V5 mapping section.
pub const MAX_V5_MAPPINGS: u32 = 8_388_608;

/// One mapping record: template range `[offset, offset+length)` comes from
/// `build_id`'s diff at `storage_offset`. The nil build id means zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub offset: u64,
    pub length: u64,
    pub build_id: Uuid,
    pub storage_offset: u64,
}

impl Mapping {
    /// End of the template range. Cannot overflow in a validated
    /// `Mappings`; saturates on hand-built values.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }
    pub fn is_zero(&self) -> bool {
        self.build_id.is_nil()
    }
}

/// Where one template offset is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingHit {
    /// Nil: the bytes are zeros.
    pub build_id: Uuid,
    /// Byte offset inside that build's (uncompressed) diff; meaningless for nil.
    pub storage_offset: u64,
    /// Bytes from the looked-up offset to the end of the mapping.
    pub remaining: u64,
}

/// A validated mapping list: sorted, gap-free, non-overlapping, page-aligned,
/// covering exactly `[0, size)`. A last mapping that reaches past `size` (up
/// to `size` rounded up to a page, which readers accept) is clipped to `size`,
/// so every list has one canonical form whatever the writer did.
/// V5 gaps are filled with nil mappings on decode, so lookups never miss.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mappings {
    items: Vec<Mapping>,
}

fn is_page_aligned(v: u64) -> bool {
    v.is_multiple_of(PAGE_SIZE)
}

/// `size` rounded up to a page; None when that overflows.
fn page_round_up(size: u64) -> Option<u64> {
    size.checked_next_multiple_of(PAGE_SIZE)
}

fn invalid(detail: String) -> FormatError {
    FormatError::invalid("mappings", detail)
}

/// Checks every mapping on its own: non-zero length, page alignment, no
/// overflow of its template or storage range.
fn check_one(i: usize, m: &Mapping, size: u64) -> Result<(), FormatError> {
    if m.length == 0 {
        return Err(invalid(format!(
            "mapping {i} at offset {} has length 0",
            m.offset
        )));
    }
    let end = m.offset.checked_add(m.length).ok_or_else(|| {
        invalid(format!(
            "mapping {i} (offset {}, length {}) overflows",
            m.offset, m.length
        ))
    })?;
    // Only a last mapping that ends exactly at an unaligned size may have an
    // unaligned end; the chain check rejects anything after it.
    if !is_page_aligned(m.offset) || !(is_page_aligned(end) || end == size) {
        return Err(invalid(format!(
            "mapping {i} [{}, {end}) is not aligned to {PAGE_SIZE}-byte pages",
            m.offset
        )));
    }
    if !m.is_zero() {
        if !is_page_aligned(m.storage_offset) {
            return Err(invalid(format!(
                "mapping {i} has storage offset {} not aligned to {PAGE_SIZE}-byte pages",
                m.storage_offset
            )));
        }
        if m.storage_offset.checked_add(m.length).is_none() {
            return Err(invalid(format!(
                "mapping {i} storage range (offset {}, length {}) overflows",
                m.storage_offset, m.length
            )));
        }
    }
    Ok(())
}

impl Mappings {
    /// Validate `items` for a template of `size` bytes. Zero mappings get
    /// storage offset 0 (their stored value is meaningless).
    pub fn new(mut items: Vec<Mapping>, size: u64) -> Result<Self, FormatError> {
        let max_end = page_round_up(size)
            .ok_or_else(|| invalid(format!("template size {size} overflows")))?;
        let mut expected = 0u64;
        for (i, m) in items.iter_mut().enumerate() {
            check_one(i, m, size)?;
            if m.offset != expected {
                return Err(invalid(format!(
                    "mapping {i} starts at {} but the previous one ends at {expected} \
                     ({}); mappings must be sorted and cover the file without gaps",
                    m.offset,
                    if m.offset < expected {
                        "overlap"
                    } else {
                        "gap"
                    }
                )));
            }
            if m.is_zero() {
                m.storage_offset = 0;
            }
            expected = m.end();
        }
        if expected < size || expected > max_end {
            return Err(invalid(format!(
                "mappings end at {expected} but the template is {size} bytes"
            )));
        }
        if let Some(last) = items.last_mut() {
            // Canonical form: end exactly at `size` (see the type docs). The
            // clipped length stays > 0 because the last start is page aligned
            // and below `size`.
            last.length -= expected - size;
        }
        Ok(Mappings { items })
    }

    /// Like `new`, but gaps (and a short tail) read as zeros: V5 semantics.
    /// Items must still be sorted and non-overlapping.
    pub fn with_gaps_as_zeros(items: Vec<Mapping>, size: u64) -> Result<Self, FormatError> {
        let mut filled = Vec::with_capacity(items.len());
        let mut expected = 0u64;
        for (i, m) in items.into_iter().enumerate() {
            check_one(i, &m, size)?;
            if m.offset < expected {
                return Err(invalid(format!(
                    "mapping {i} starts at {} inside the previous one (ends at {expected}); \
                     mappings must be sorted and must not overlap",
                    m.offset
                )));
            }
            if m.offset > expected {
                filled.push(zero_range(expected, m.offset - expected));
            }
            expected = m.end();
            filled.push(m);
        }
        if expected < size {
            filled.push(zero_range(expected, size - expected));
        }
        Mappings::new(filled, size)
    }

    /// The whole template of `size` bytes from `build`'s diff at storage
    /// offset 0: what E2B's `NewHeader` makes of a V1–V4 header with no
    /// mappings, and what a legacy build (a data object, no header) is.
    /// Empty when `size` is 0.
    ///
    /// # Errors
    /// When `size` rounded up to a page overflows.
    pub fn whole_build(build: Uuid, size: u64) -> Result<Self, FormatError> {
        let length = page_round_up(size)
            .ok_or_else(|| invalid(format!("template size {size} overflows")))?;
        let items = if size == 0 {
            Vec::new()
        } else {
            vec![Mapping {
                offset: 0,
                length,
                build_id: build,
                storage_offset: 0,
            }]
        };
        Mappings::new(items, size)
    }

    pub fn as_slice(&self) -> &[Mapping] {
        &self.items
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The template size the list covers.
    pub fn end(&self) -> u64 {
        self.items.last().map_or(0, Mapping::end)
    }

    /// The non-nil builds the mappings reference, in order of first appearance.
    pub fn referenced_builds(&self) -> Vec<Uuid> {
        let mut seen = HashSet::new();
        self.items
            .iter()
            .filter(|m| !m.is_zero() && seen.insert(m.build_id))
            .map(|m| m.build_id)
            .collect()
    }

    /// The same template with the fewest mappings: adjacent mappings of one
    /// build with contiguous storage merge, and so do adjacent zero ranges.
    pub fn normalized(&self) -> Mappings {
        let mut items: Vec<Mapping> = Vec::with_capacity(self.items.len());
        for m in &self.items {
            if let Some(last) = items.last_mut() {
                let contiguous = last.build_id == m.build_id
                    && (m.is_zero() || last.storage_offset + last.length == m.storage_offset);
                if contiguous {
                    last.length += m.length;
                    continue;
                }
            }
            items.push(*m);
        }
        Mappings { items }
    }

    /// Binary search for the mapping holding `off`; None past the end.
    pub fn lookup(&self, off: u64) -> Option<MappingHit> {
        let index = self
            .items
            .partition_point(|m| m.offset <= off)
            .checked_sub(1)?;
        let m = &self.items[index];
        let shift = off - m.offset;
        let remaining = m.length.checked_sub(shift).filter(|&r| r > 0)?;
        Some(MappingHit {
            build_id: m.build_id,
            // `new` checked that storage_offset + length does not overflow.
            storage_offset: m.storage_offset + shift,
            remaining,
        })
    }
}

fn zero_range(offset: u64, length: u64) -> Mapping {
    Mapping {
        offset,
        length,
        build_id: Uuid::nil(),
        storage_offset: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::samples::mapping as m;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn lookup_walks_the_chain() {
        let maps = Mappings::new(
            vec![m(0, 2 * P, 1, 8 * P), m(2 * P, P, 0, 77), m(3 * P, P, 2, 0)],
            4 * P,
        )
        .unwrap();
        // The nil mapping's meaningless storage offset is normalized.
        assert_eq!(maps.as_slice()[1].storage_offset, 0);
        let hit = maps.lookup(P + 5).unwrap();
        assert_eq!(hit.build_id, Uuid::from_u128(1));
        assert_eq!(hit.storage_offset, 9 * P + 5);
        assert_eq!(hit.remaining, P - 5);
        assert!(maps.lookup(2 * P).unwrap().build_id.is_nil());
        let last = maps.lookup(4 * P - 1).unwrap();
        assert_eq!((last.storage_offset, last.remaining), (P - 1, 1));
        assert_eq!(maps.lookup(4 * P), None);
        assert_eq!(maps.lookup(u64::MAX), None);
        assert_eq!(Mappings::new(vec![], 0).unwrap().lookup(0), None);
        assert_eq!(
            maps.referenced_builds(),
            [Uuid::from_u128(1), Uuid::from_u128(2)]
        );
    }

    #[test]
    fn unaligned_size_accepts_both_writer_styles() {
        let size = 3 * P + 100;
        // E2B writers end exactly at size; others at the page boundary.
        let exact = Mappings::new(vec![m(0, 3 * P, 1, 0), m(3 * P, 100, 2, 0)], size).unwrap();
        let rounded = Mappings::new(vec![m(0, 3 * P, 1, 0), m(3 * P, P, 2, 0)], size).unwrap();
        assert_eq!(exact, rounded);
        assert_eq!(exact.end(), size);
        assert_eq!(exact.lookup(size - 1).unwrap().remaining, 1);
        assert_eq!(exact.lookup(size), None);
        // Beyond the rounded-up page is an error, as is ending short.
        assert!(Mappings::new(vec![m(0, 3 * P, 1, 0), m(3 * P, 2 * P, 2, 0)], size).is_err());
        assert!(Mappings::new(vec![m(0, 3 * P, 1, 0)], size).is_err());
        // An unaligned end anywhere but at `size` is an error.
        assert!(Mappings::new(vec![m(0, 100, 1, 0), m(100, 3 * P, 2, 0)], size).is_err());
    }

    #[test]
    fn rejects_invalid_lists() {
        let cases: Vec<(Vec<Mapping>, u64)> = vec![
            (vec![m(0, P, 1, 0), m(2 * P, P, 1, 0)], 3 * P), // gap
            (vec![m(0, 2 * P, 1, 0), m(P, 2 * P, 1, 0)], 3 * P), // overlap
            (vec![m(P, P, 1, 0)], 2 * P),                    // does not start at 0
            (vec![m(0, 0, 1, 0), m(0, P, 1, 0)], P),         // zero length
            (vec![m(0, P, 1, 100)], P),                      // unaligned storage
            (vec![m(0, P + 1, 1, 0)], 2 * P),                // unaligned length
            (vec![m(0, 2 * P, 1, 0)], P),                    // past the end
            (vec![m(0, P, 1, u64::MAX - 10)], P),            // storage overflow
            (vec![m(0, P, 1, 0), m(P, u64::MAX, 1, 0)], P),  // offset overflow
            (vec![], P),                                     // covers nothing
        ];
        for (items, size) in cases {
            let err = Mappings::new(items.clone(), size).unwrap_err();
            assert!(
                matches!(
                    err,
                    FormatError::Invalid {
                        what: "mappings",
                        ..
                    }
                ),
                "{items:?}: {err}"
            );
        }
        assert!(Mappings::new(vec![], u64::MAX).is_err());
    }

    #[test]
    fn gaps_read_as_zeros() {
        let maps =
            Mappings::with_gaps_as_zeros(vec![m(P, P, 1, 4 * P), m(3 * P, 2 * P, 2, 0)], 8 * P)
                .unwrap();
        let layout: Vec<(u64, u64, bool)> = maps
            .as_slice()
            .iter()
            .map(|x| (x.offset, x.length, x.is_zero()))
            .collect();
        assert_eq!(
            layout,
            [
                (0, P, true),
                (P, P, false),
                (2 * P, P, true),
                (3 * P, 2 * P, false),
                (5 * P, 3 * P, true)
            ]
        );
        assert_eq!(
            Mappings::with_gaps_as_zeros(vec![], 3 * P + 1)
                .unwrap()
                .len(),
            1
        );
        assert!(
            Mappings::with_gaps_as_zeros(vec![m(2 * P, P, 1, 0), m(0, P, 1, 0)], 3 * P).is_err()
        );
        assert!(
            Mappings::with_gaps_as_zeros(vec![m(0, 2 * P, 1, 0), m(P, P, 1, 0)], 3 * P).is_err()
        );
        assert!(Mappings::with_gaps_as_zeros(vec![m(0, 0, 1, 0)], P).is_err());
    }

    #[test]
    fn normalized_merges_contiguous_runs() {
        let maps = Mappings::new(
            vec![
                m(0, P, 1, 0),
                m(P, P, 1, P),         // contiguous: merges
                m(2 * P, P, 1, 5 * P), // jump in storage: stays
                m(3 * P, P, 0, 0),
                m(4 * P, P, 0, 9),     // adjacent zeros merge
                m(5 * P, P, 2, 6 * P), // other build
            ],
            6 * P,
        )
        .unwrap();
        let norm = maps.normalized();
        assert_eq!(
            norm.as_slice(),
            [
                m(0, 2 * P, 1, 0),
                m(2 * P, P, 1, 5 * P),
                m(3 * P, 2 * P, 0, 0),
                m(5 * P, P, 2, 6 * P)
            ]
        );
        for off in (0..6 * P).step_by(1000) {
            let (a, b) = (maps.lookup(off).unwrap(), norm.lookup(off).unwrap());
            assert_eq!(a.build_id, b.build_id);
            if !a.build_id.is_nil() {
                assert_eq!(a.storage_offset, b.storage_offset);
            }
        }
    }
}
