//! A layer's header contents: the base's mappings kept for unchanged
//! blocks, and the V4/V5 builds section with every referenced ancestor's
//! frame table trimmed to the frames those mappings touch (FORMAT.md
//! "sparse" tables), the header version to write.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use uuid::Uuid;

use super::PackError;
use crate::format::{
    BuildEntry, Compression, FileKind, FrameTable, Header, Mapping, Mappings, ObjectKey,
};
use crate::store::{Store, StoreError};
use crate::template::{Builds, TemplateError};

/// Append the base's mappings of template range `[start, end)`, clipped to
/// it. Offsets past the base's mappings (a base smaller than the new image)
/// read as zeros.
pub fn copy_base_range(base: &Mappings, start: u64, end: u64, out: &mut Vec<Mapping>) {
    let mut off = start;
    while off < end {
        match base.lookup(off) {
            Some(hit) if hit.remaining > 0 => {
                let length = hit.remaining.min(end - off);
                out.push(Mapping {
                    offset: off,
                    length,
                    build_id: hit.build_id,
                    storage_offset: if hit.build_id.is_nil() {
                        0
                    } else {
                        hit.storage_offset
                    },
                });
                off += length;
            }
            _ => {
                out.push(Mapping {
                    offset: off,
                    length: end - off,
                    build_id: Uuid::nil(),
                    storage_offset: 0,
                });
                off = end;
            }
        }
    }
}

/// For every non-nil build referenced by `mappings`, the diff ranges used.
pub fn referenced_ranges(mappings: &[Mapping]) -> BTreeMap<Uuid, Vec<Range<u64>>> {
    let mut out: BTreeMap<Uuid, Vec<Range<u64>>> = BTreeMap::new();
    for m in mappings.iter().filter(|m| !m.is_zero()) {
        out.entry(m.build_id)
            .or_default()
            .push(m.storage_offset..m.storage_offset + m.length);
    }
    out
}

/// Finds the builds-section entry (size, sha, full or sparse frame table) of
/// an ancestor build: from the base header's section when it lists it, else
/// from the ancestor's own header (loaded by `Builds`, so a legacy build
/// without one reads as V3), else (V1–V3) as an uncompressed build.
pub struct AncestorEntries<'a> {
    store: &'a dyn Store,
    builds: &'a Builds,
    file: FileKind,
    base: &'a Header,
    loaded: HashMap<Uuid, BuildEntry>,
}

impl<'a> AncestorEntries<'a> {
    pub fn new(store: &'a dyn Store, builds: &'a Builds, file: FileKind, base: &'a Header) -> Self {
        AncestorEntries {
            store,
            builds,
            file,
            base,
            loaded: HashMap::new(),
        }
    }

    pub fn entry(&mut self, build: Uuid) -> Result<BuildEntry, PackError> {
        if self.base.version() >= 4
            && let Some(e) = self.base.build(&build)
        {
            return Ok(e.clone());
        }
        if let Some(e) = self.loaded.get(&build) {
            return Ok(e.clone());
        }
        let entry = if self.base.version() >= 4 {
            self.entry_in_own_header(build)?
        } else {
            self.uncompressed(build)?
        };
        self.loaded.insert(build, entry.clone());
        Ok(entry)
    }

    fn entry_in_own_header(&self, build: Uuid) -> Result<BuildEntry, PackError> {
        let header = match self.builds.header(build, self.file) {
            Ok(header) => header,
            Err(TemplateError::NotFound { .. }) => return Err(self.missing(build)),
            Err(source) => {
                return Err(PackError::Ancestor {
                    build,
                    file: self.file,
                    source,
                });
            }
        };
        match header.build(&build) {
            Some(e) if header.version() >= 4 => Ok(e.clone()),
            _ => self.uncompressed(build),
        }
    }

    /// An uncompressed ancestor: its size is that of its diff object; its
    /// checksum is unknown (all zero).
    fn uncompressed(&self, build: Uuid) -> Result<BuildEntry, PackError> {
        let key = ObjectKey::data(build, self.file, Compression::None);
        let file_size = self.store.size(&key).map_err(|e| match e {
            StoreError::NotFound { .. } => self.missing(build),
            other => PackError::Store(other),
        })?;
        Ok(BuildEntry {
            build_id: build,
            file_size,
            sha256: [0; 32],
            frames: FrameTable::uncompressed(),
        })
    }

    /// The base chain lacks `build`: neither its header nor its
    /// uncompressed diff object is in the store.
    fn missing(&self, build: Uuid) -> PackError {
        PackError::MissingAncestor {
            build,
            file: self.file,
            key: ObjectKey::data(build, self.file, Compression::None).to_string(),
        }
    }
}

/// The builds section of a layer: `own` plus every build `mappings`
/// reference, sorted by UUID bytes, each table trimmed to the frames the
/// mappings touch (a build no mapping references keeps its full table).
pub fn builds_section(
    mappings: &[Mapping],
    own: BuildEntry,
    mut ancestor: impl FnMut(Uuid) -> Result<BuildEntry, PackError>,
) -> Result<Vec<BuildEntry>, PackError> {
    let ranges = referenced_ranges(mappings);
    let mut entries = Vec::with_capacity(ranges.len() + 1);
    if !ranges.contains_key(&own.build_id) {
        entries.push(own.clone());
    }
    for (build, used) in &ranges {
        let mut entry = if *build == own.build_id {
            own.clone()
        } else {
            ancestor(*build)?
        };
        if entry.frames.is_compressed() {
            entry.frames = entry.frames.trim(used);
        }
        entries.push(entry);
    }
    entries.sort_by_key(|e| e.build_id);
    Ok(entries)
}

/// The header version to write: the requested one, or V3 when every build
/// involved is uncompressed and V4 otherwise. V1–V3 cannot describe a
/// compressed build, so asking for 3 then is an error.
pub fn choose_version(
    requested: Option<u16>,
    own: Compression,
    builds: &[BuildEntry],
) -> Result<u16, PackError> {
    let compressed = own != Compression::None || builds.iter().any(|b| b.frames.is_compressed());
    match requested {
        Some(3) if compressed => Err(PackError::BadOption(
            "--header-version 3 cannot describe compressed builds (this build or an ancestor \
             it references is compressed); use 4 or 5"
                .to_string(),
        )),
        Some(v @ 3..=5) => Ok(v),
        Some(v) => Err(PackError::BadOption(format!(
            "header version {v} cannot be written (tdfs writes 3, 4 or 5)"
        ))),
        None if compressed => Ok(4),
        None => Ok(3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::samples::mapping as m;

    #[test]
    fn referenced_ranges_group_by_build() {
        let r = referenced_ranges(&[m(0, 4096, 1, 8192), m(4096, 4096, 0, 0), m(8192, 100, 1, 0)]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[&Uuid::from_u128(1)], vec![8192..12288, 0..100]);
    }

    #[test]
    fn version_choice() {
        assert_eq!(choose_version(None, Compression::None, &[]).unwrap(), 3);
        assert_eq!(choose_version(None, Compression::Zstd, &[]).unwrap(), 4);
        assert_eq!(choose_version(Some(5), Compression::None, &[]).unwrap(), 5);
        assert!(choose_version(Some(3), Compression::Lz4, &[]).is_err());
        assert!(choose_version(Some(2), Compression::None, &[]).is_err());
    }
}
