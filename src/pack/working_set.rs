//! The working-set-first layout (issue 22; the REAP idea): a build's own
//! diff holds first the blocks of its trace that the build stores itself,
//! in first-touch order, then its other blocks in template order, and the
//! header's mappings point at the new places. A replay of the trace then
//! reads one contiguous stretch of the object instead of one unit in every
//! few, and a plain reader still finds every block through the mappings.
//!
//! The unit of layout is the header's block (4 KiB, or 2 MiB for a
//! hugepage memfile): a trace recorded at another block size is mapped onto
//! the blocks it touches. Storage offsets stay multiples of the block size
//! (every moved block is whole; the image's last block, when shorter, is
//! always stored last), so a frame whose size is a multiple of the block
//! size never splits a block.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::format::trace::Trace;
use crate::format::{Mapping, Mappings};

/// How a build's own diff is ordered (`tdfs pack --layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The trace's own blocks first, in first-touch order, then the rest
    /// in template order; the same as `Template` without a trace.
    WorkingSet,
    /// Every block in template order (what E2B's writers do).
    Template,
}

impl Layout {
    /// The name `--layout` takes.
    pub fn name(self) -> &'static str {
        match self {
            Layout::WorkingSet => "working-set",
            Layout::Template => "template",
        }
    }
}

/// The blocks of `block_size` bytes (of a file of `size` bytes) that
/// `trace` touches, first touch first, each once. A trace block larger than
/// `block_size` touches every block it covers, a smaller one the block that
/// holds it; blocks at or past `size` are skipped (pack refuses such traces
/// before this is called, a mount skips them).
pub fn first_touch_blocks(trace: &Trace, block_size: u64, size: u64) -> Vec<u64> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for &index in &trace.indices {
        let Some(start) = index.checked_mul(trace.block_size).filter(|&s| s < size) else {
            continue;
        };
        let end = start.saturating_add(trace.block_size).min(size);
        for block in start / block_size..end.div_ceil(block_size) {
            if seen.insert(block) {
                out.push(block);
            }
        }
    }
    out
}

/// One copy from the template-order diff into the new one, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub from: u64,
    pub to: u64,
    pub len: u64,
}

/// The new mappings (template order, not yet merged) and the copies that
/// make the new diff, sorted by destination and covering it without gaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayout {
    pub mappings: Vec<Mapping>,
    pub moves: Vec<Move>,
}

/// Re-place build `own`'s blocks of `mappings` (whole blocks of
/// `block_size` at block-aligned template offsets, as a scan writes them):
/// the blocks of `first_touch` that `own` stores come first, in that order,
/// then every other `own` block in template order. Mappings of other
/// builds and zeros are kept as they are.
pub fn working_set_first(
    mappings: &Mappings,
    own: Uuid,
    block_size: u64,
    first_touch: &[u64],
) -> Relayout {
    let size = mappings.end();
    // The blocks moved to the front, with their new storage offsets. A
    // block that is not wholly `own`'s (or is the short last block) stays
    // with the rest.
    let mut front: HashMap<u64, u64> = HashMap::new();
    let mut cursor = 0u64;
    for &block in first_touch {
        let start = block * block_size;
        let Some(hit) = mappings.lookup(start) else {
            continue;
        };
        if hit.build_id != own || hit.remaining < block_size || front.contains_key(&block) {
            continue;
        }
        front.insert(block, cursor);
        cursor += block_size;
    }

    let mut rest = cursor;
    let mut moves = Vec::new();
    let mut out = Vec::with_capacity(mappings.len() + 2 * front.len());
    for m in mappings.as_slice() {
        if m.build_id != own {
            out.push(*m);
            continue;
        }
        let mut off = m.offset;
        while off < m.end() {
            let end = ((off / block_size + 1) * block_size).min(m.end());
            let len = end - off;
            let from = m.storage_offset + (off - m.offset);
            let to = match front.get(&(off / block_size)) {
                Some(&to) if len == block_size => to,
                _ => {
                    rest += len;
                    rest - len
                }
            };
            push_mapping(&mut out, off, len, own, to);
            push_move(&mut moves, from, to, len);
            off = end;
        }
    }
    debug_assert_eq!(out.last().map_or(0, Mapping::end), size);
    moves.sort_by_key(|m| m.to);
    Relayout {
        mappings: out,
        moves,
    }
}

/// Append a mapping, merged into the previous one where both template and
/// storage continue it.
fn push_mapping(out: &mut Vec<Mapping>, offset: u64, length: u64, build: Uuid, storage: u64) {
    if let Some(last) = out.last_mut()
        && last.build_id == build
        && last.end() == offset
        && last.storage_offset + last.length == storage
    {
        last.length += length;
        return;
    }
    out.push(Mapping {
        offset,
        length,
        build_id: build,
        storage_offset: storage,
    });
}

/// Append a copy, merged into the previous one where both sides continue it.
fn push_move(moves: &mut Vec<Move>, from: u64, to: u64, len: u64) {
    if let Some(last) = moves.last_mut()
        && last.from + last.len == from
        && last.to + last.len == to
    {
        last.len += len;
        return;
    }
    moves.push(Move { from, to, len });
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = 4096;

    fn m(offset: u64, length: u64, build: u128, storage_offset: u64) -> Mapping {
        Mapping {
            offset,
            length,
            build_id: Uuid::from_u128(build),
            storage_offset,
        }
    }

    #[test]
    fn trace_blocks_map_onto_layout_blocks() {
        let t = Trace::of_reads(B, vec![5, 1, 600, 2, 3]).unwrap();
        // 2 MiB blocks: 4 KiB entries 1..=5 all lie in block 0.
        assert_eq!(first_touch_blocks(&t, 2 << 20, 8 << 20), vec![0, 1]);
        let big = Trace::of_reads(4 * B, vec![1, 0]).unwrap();
        assert_eq!(first_touch_blocks(&big, B, 6 * B), vec![4, 5, 0, 1, 2, 3]);
        // Past the end: skipped.
        assert_eq!(first_touch_blocks(&t, B, 3 * B), vec![1, 2]);
    }

    #[test]
    fn trace_blocks_go_first_in_touch_order_then_template_order() {
        let own = Uuid::from_u128(7);
        // Blocks 0..3 own (storage 0..3), 3 zeros, 4..6 own (storage 3..5),
        // 6 from build 2, 7 own but short (half a block).
        let maps = Mappings::new(
            vec![
                m(0, 3 * B, 7, 0),
                m(3 * B, B, 0, 0),
                m(4 * B, 2 * B, 7, 3 * B),
                m(6 * B, B, 2, 40 * B),
                m(7 * B, B / 2, 7, 5 * B),
            ],
            7 * B + B / 2,
        )
        .unwrap();
        // The trace: 5, 3 (zeros: not own), 7 (short: stays last), 1, 6 (other build).
        let r = working_set_first(&maps, own, B, &[5, 3, 7, 1, 6]);
        assert_eq!(
            r.mappings,
            vec![
                m(0, B, 7, 2 * B),
                m(B, B, 7, B),
                m(2 * B, B, 7, 3 * B),
                m(3 * B, B, 0, 0),
                m(4 * B, B, 7, 4 * B),
                m(5 * B, B, 7, 0),
                m(6 * B, B, 2, 40 * B),
                m(7 * B, B / 2, 7, 5 * B),
            ]
        );
        assert_eq!(
            r.moves,
            vec![
                Move {
                    from: 4 * B,
                    to: 0,
                    len: B
                },
                Move {
                    from: B,
                    to: B,
                    len: B
                },
                Move {
                    from: 0,
                    to: 2 * B,
                    len: B
                },
                Move {
                    from: 2 * B,
                    to: 3 * B,
                    len: 2 * B
                },
                Move {
                    from: 5 * B,
                    to: 5 * B,
                    len: B / 2
                },
            ]
        );
        // Without a trace the layout is the template order itself.
        let same = working_set_first(&maps, own, B, &[]);
        assert_eq!(
            Mappings::new(same.mappings, maps.end())
                .unwrap()
                .normalized(),
            maps.normalized()
        );
    }
}
