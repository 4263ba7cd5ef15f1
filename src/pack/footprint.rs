//! What a replay of a trace costs under a header: how much of the trace
//! lies in one contiguous stretch of storage, and how many fetch units
//! (frames of a compressed diff, 4 MiB chunks of an uncompressed one) it
//! touches. `tdfs inspect` shows it, and `tdfs pack` and `tdfs working-set`
//! report it, so the effect of a layout is seen without a mount.

use std::collections::HashSet;

use serde::Serialize;
use uuid::Uuid;

use super::working_set::first_touch_blocks;
use crate::chunker::CHUNK_SIZE;
use crate::format::trace::Trace;
use crate::format::{Header, Mapping};

/// The cost of replaying one trace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Footprint {
    /// Bytes of the file the trace's blocks cover (within the file).
    pub trace_bytes: u64,
    /// Of those, bytes that read as zeros (never fetched).
    pub zero_bytes: u64,
    /// Bytes of the longest stretch of the trace, in first-touch order of
    /// the header's blocks, stored contiguously in one build's diff.
    pub contiguous_bytes: u64,
    /// Stretches of contiguous storage the trace falls into (1 when the
    /// whole stored working set lies in one stretch).
    pub runs: usize,
    /// Fetch units (frames or chunks, over every build) a replay touches.
    pub units: usize,
    /// Whether the blocks of the trace that the header's own build stores
    /// sit at the start of its diff, in first-touch order (the
    /// working-set-first layout); `None` when the build stores none of
    /// them. The file's short last block, which that layout stores last,
    /// is not counted.
    pub own_first: Option<bool>,
}

/// The footprint of replaying `trace` over `header`'s mappings.
pub fn footprint(header: &Header, trace: &Trace) -> Footprint {
    let size = header.metadata.size;
    let block_size = header.metadata.block_size.max(1);
    let own = header.metadata.build_id;
    let mut fp = Footprint::default();

    // Contiguity, at the layout's grain: the header's blocks.
    let mut run: Option<(Uuid, u64, u64)> = None;
    let mut own_cursor = 0u64;
    for block in first_touch_blocks(trace, block_size, size) {
        let start = block * block_size;
        let end = (start + block_size).min(size);
        for piece in pieces(header, start, end) {
            if piece.is_zero() {
                fp.zero_bytes += piece.length;
                continue;
            }
            if piece.build_id == own && !(end == size && piece.length < block_size) {
                let in_place = piece.storage_offset == own_cursor;
                fp.own_first = Some(fp.own_first.unwrap_or(true) && in_place);
                own_cursor = piece.storage_offset + piece.length;
            }
            fp.trace_bytes += piece.length;
            match &mut run {
                Some((b, s_end, len)) if *b == piece.build_id && *s_end == piece.storage_offset => {
                    *s_end += piece.length;
                    *len += piece.length;
                }
                _ => {
                    fp.runs += 1;
                    run = Some((
                        piece.build_id,
                        piece.storage_offset + piece.length,
                        piece.length,
                    ));
                }
            }
            fp.contiguous_bytes = fp.contiguous_bytes.max(run.map_or(0, |r| r.2));
        }
    }
    fp.trace_bytes += fp.zero_bytes;

    // Units, at the replay's grain: the trace's own blocks.
    let mut units: HashSet<(Uuid, u64)> = HashSet::new();
    for &index in &trace.indices {
        let Some(start) = index.checked_mul(trace.block_size).filter(|&s| s < size) else {
            continue;
        };
        let end = start.saturating_add(trace.block_size).min(size);
        for piece in pieces(header, start, end).filter(|p| !p.is_zero()) {
            let range = piece.storage_offset..piece.storage_offset + piece.length;
            match header.build(&piece.build_id).map(|e| &e.frames) {
                Some(frames) if frames.is_compressed() => {
                    let frames = frames.frames();
                    let first = frames.partition_point(|f| f.end_u() <= range.start);
                    for (i, _) in frames[first..]
                        .iter()
                        .enumerate()
                        .take_while(|(_, f)| f.start_u < range.end)
                    {
                        units.insert((piece.build_id, (first + i) as u64));
                    }
                }
                _ => {
                    for chunk in range.start / CHUNK_SIZE..range.end.div_ceil(CHUNK_SIZE) {
                        units.insert((piece.build_id, chunk));
                    }
                }
            }
        }
    }
    fp.units = units.len();
    fp
}

/// The mappings of `[start, end)`, clipped to it, with storage offsets
/// shifted to match.
fn pieces(header: &Header, start: u64, end: u64) -> impl Iterator<Item = Mapping> + '_ {
    let maps = header.mappings.as_slice();
    let first = maps.partition_point(|m| m.end() <= start);
    maps[first..]
        .iter()
        .take_while(move |m| m.offset < end)
        .map(move |m| {
            let s = m.offset.max(start);
            let e = m.end().min(end);
            Mapping {
                offset: s,
                length: e - s,
                build_id: m.build_id,
                storage_offset: if m.is_zero() {
                    0
                } else {
                    m.storage_offset + (s - m.offset)
                },
            }
        })
}
