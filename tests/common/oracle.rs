//! An independent reader of a store, the oracle the read path is checked
//! against: it decodes a whole data object as a stream of frames without
//! looking at any frame table, and flattens a template file by copying each
//! mapping out of whole diffs. It shares no code with the chunker or the
//! template read path.

use std::collections::HashMap;
use std::io::Read;

use tdfs::format::{Compression, FileKind, Header, ObjectKey};
use tdfs::store::Store;
use uuid::Uuid;

/// The header of `build`'s `file`, decoded.
pub fn read_header(store: &dyn Store, build: Uuid, file: FileKind) -> Header {
    let bytes = store
        .read_all(&ObjectKey::header(build, file), 1 << 30)
        .expect("header");
    Header::decode(&bytes).expect("header decodes")
}

/// The uncompressed bytes of a whole data `object` compressed with
/// `compression`, decoded frame after frame.
pub fn decode_object(compression: Compression, object: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match compression {
        Compression::None => out = object.to_vec(),
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(object)
                .expect("zstd decoder")
                .read_to_end(&mut out)
                .expect("zstd object decodes");
        }
        Compression::Lz4 => {
            // One decoder per frame: lz4_flex stops at a frame's end.
            let mut rest = object;
            while !rest.is_empty() {
                lz4_flex::frame::FrameDecoder::new(&mut rest)
                    .read_to_end(&mut out)
                    .expect("lz4 object decodes");
            }
        }
    }
    out
}

/// The whole uncompressed diff of `build`'s `file`, whichever compression
/// its data object has.
pub fn whole_diff(store: &dyn Store, build: Uuid, file: FileKind) -> Vec<u8> {
    for c in [Compression::None, Compression::Zstd, Compression::Lz4] {
        let key = ObjectKey::data(build, file, c);
        if let Ok(raw) = store.read_all(&key, 1 << 32) {
            return decode_object(c, &raw);
        }
    }
    panic!("build {build} has no {file} data object");
}

/// The template file flattened by the oracle: mappings over whole diffs.
pub fn oracle_flatten(store: &dyn Store, build: Uuid, file: FileKind) -> Vec<u8> {
    let header = read_header(store, build, file);
    let size = header.metadata.size as usize;
    let mut out = vec![0u8; size];
    let mut diffs: HashMap<Uuid, Vec<u8>> = HashMap::new();
    for m in header.mappings.as_slice() {
        if m.is_zero() || m.offset as usize >= size {
            continue;
        }
        let diff = diffs
            .entry(m.build_id)
            .or_insert_with(|| whole_diff(store, m.build_id, file));
        let start = m.offset as usize;
        let len = (m.length as usize).min(size - start);
        let src = m.storage_offset as usize;
        out[start..start + len].copy_from_slice(&diff[src..src + len]);
    }
    out
}
