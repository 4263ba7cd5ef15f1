//! Prefetch traces: the blocks of a template file a VM touched, in
//! first-touch order, as E2B writes them into a build's `metadata.json`
//! (version 2: `"prefetch": {"memory": {"indices": [u64…], "access_types":
//! ["r"|"w"|"p"…], "block_size": N}}`, offset of a block = index ×
//! `block_size` bytes) and as tdfs records them (the same object, for the
//! root disk under `prefetch.rootfs`, which E2B ignores, and alone in a
//! recording file `<file>.prefetch.json`).
//!
//! E2B reads no field of a metadata.json whose `version` is not a number
//! above 1 (`deserialize` in E2B's template metadata: version 1, a missing
//! or non-numeric one is the deprecated format and comes back empty), so
//! such a document lists no trace here either (`fields_ignored`).
//!
//! A trace is untrusted input: the document is at most `MAX_METADATA_LEN`
//! bytes (the caller checks it before reading), at most
//! `MAX_PREFETCH_ENTRIES` indices are kept whatever the document lists
//! (the rest are counted, never stored), and the block size must be a power
//! of two from 4 KiB to `MAX_PREFETCH_BLOCK_SIZE`. What can be repaired
//! (too many entries, indices and access types of different lengths,
//! indices past the end of the file) is, and said in `Parsed::notes`;
//! anything else is an error and the trace is skipped.

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::FileKind;
use super::PAGE_SIZE;
use super::limits::{MAX_PREFETCH_BLOCK_SIZE, MAX_PREFETCH_ENTRIES};

/// Most distinct access types a trace may use (E2B uses three).
const MAX_ACCESS_TYPE_NAMES: usize = 16;

/// The access type tdfs records: it only sees reads.
const READ: &str = "r";

/// A prefetch trace: blocks in first-touch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Bytes per block: a power of two, 4 KiB to `MAX_PREFETCH_BLOCK_SIZE`.
    pub block_size: u64,
    /// Block numbers (offset = index × `block_size`), first touch first.
    pub indices: Vec<u64>,
    /// One per index, as positions in `access_type_names`.
    access_types: Vec<u8>,
    /// The distinct access types the trace uses (`"r"`, `"w"`, `"p"`).
    access_type_names: Vec<String>,
}

/// A trace that was accepted, and what had to be repaired on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub trace: Trace,
    /// Each repair, in words ("3 indices but 2 access types: the first 2
    /// blocks are used"); empty for a sound trace.
    pub notes: Vec<String>,
}

/// Why a trace was skipped, in words that name the fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TraceError(String);

impl Trace {
    /// A trace of blocks read, in first-touch order (what tdfs records).
    ///
    /// # Errors
    /// When `block_size` is not a power of two from 4 KiB to
    /// `MAX_PREFETCH_BLOCK_SIZE`, or there are over `MAX_PREFETCH_ENTRIES`
    /// indices.
    pub fn of_reads(block_size: u64, indices: Vec<u64>) -> Result<Trace, TraceError> {
        check_block_size(block_size)?;
        if indices.len() > MAX_PREFETCH_ENTRIES {
            return Err(TraceError(format!(
                "{} blocks, over the limit of {MAX_PREFETCH_ENTRIES}",
                indices.len()
            )));
        }
        Ok(Trace {
            block_size,
            access_types: vec![0; indices.len()],
            access_type_names: vec![READ.to_string()],
            indices,
        })
    }

    /// Drop the blocks that start at or past `file_size` (bytes); returns
    /// how many were dropped.
    pub fn clamp_to(&mut self, file_size: u64) -> usize {
        let before = self.indices.len();
        let block_size = self.block_size;
        let inside = |i: &u64| i.checked_mul(block_size).is_some_and(|o| o < file_size);
        let mut types = self.access_types.iter();
        let kept: Vec<(u64, u8)> = self
            .indices
            .iter()
            .map(|i| (*i, types.next().copied().unwrap_or(0)))
            .filter(|(i, _)| inside(i))
            .collect();
        (self.indices, self.access_types) = kept.into_iter().unzip();
        before - self.indices.len()
    }

    /// The trace as E2B's JSON object (`indices`, `access_types`,
    /// `block_size`).
    pub fn to_json(&self) -> Value {
        let types: Vec<&str> = self
            .access_types
            .iter()
            .map(|t| {
                self.access_type_names
                    .get(usize::from(*t))
                    .map_or(READ, String::as_str)
            })
            .collect();
        serde_json::json!({
            "indices": self.indices,
            "access_types": types,
            "block_size": self.block_size,
        })
    }
}

/// The key under `prefetch` of metadata.json holding `file`'s trace:
/// `memory` (E2B's) or `rootfs` (tdfs's own).
pub fn metadata_key(file: FileKind) -> &'static str {
    match file {
        FileKind::Memfile => "memory",
        FileKind::Rootfs => "rootfs",
    }
}

/// `file`'s trace in a build's `metadata.json`; `None` when it lists none.
///
/// # Errors
/// When the document is not JSON, its `prefetch` part has the wrong shape,
/// or the block size is not a power of two from 4 KiB to
/// `MAX_PREFETCH_BLOCK_SIZE`.
pub fn parse_metadata(bytes: &[u8], file: FileKind) -> Result<Option<Parsed>, TraceError> {
    let doc: MetadataDoc = serde_json::from_slice(bytes)
        .map_err(|e| TraceError(format!("metadata.json is not valid: {e}")))?;
    if let Some(why) = version_ignores_fields(doc.version.as_ref()) {
        log::debug!("metadata.json lists no trace: {why}");
        return Ok(None);
    }
    let Some(prefetch) = doc.prefetch else {
        return Ok(None);
    };
    let raw = match file {
        FileKind::Memfile => prefetch.memory,
        FileKind::Rootfs => prefetch.rootfs,
    };
    raw.map(RawTrace::check).transpose()
}

/// Why E2B reads none of the fields of metadata.json `bytes` (its
/// `version` is missing, not a number, or at most 1), in words; `None` when
/// it reads them, or when `bytes` is not a JSON object with a readable
/// `version` at all (E2B fails on it; `parse_metadata` says why).
pub fn fields_ignored(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct VersionOnly {
        #[serde(default)]
        version: Option<Value>,
    }
    let doc: VersionOnly = serde_json::from_slice(bytes).ok()?;
    version_ignores_fields(doc.version.as_ref())
}

/// E2B's rule on a metadata.json `version`: fields are read only when it is
/// a JSON number above 1 (`DeprecatedVersion`); then it must be a whole
/// number (E2B's field is a uint64, anything else fails its decode).
fn version_ignores_fields(version: Option<&Value>) -> Option<String> {
    let e2b = "E2B reads a metadata.json whose version is not a number above 1 as having \
               no fields, so no prefetch trace";
    match version {
        Some(v) if v.as_f64().is_some_and(|n| n > 1.0) => match v.as_u64() {
            Some(_) => None,
            None => Some(format!(
                "version {v} is not a whole number: E2B cannot read this metadata.json"
            )),
        },
        Some(v) => Some(format!("version is {v}: {e2b}")),
        None => Some(format!("it has no version: {e2b}")),
    }
}

/// A recording file (`<file>.prefetch.json`: one trace object).
///
/// # Errors
/// As `parse_metadata`.
pub fn parse_trace_file(bytes: &[u8]) -> Result<Parsed, TraceError> {
    let raw: RawTrace = serde_json::from_slice(bytes)
        .map_err(|e| TraceError(format!("not a prefetch trace: {e}")))?;
    raw.check()
}

/// `metadata` (a build's metadata.json, or `None` for a minimal one) with
/// the given traces set under `prefetch`: every other key is kept as it is.
///
/// # Errors
/// When `metadata` is not a JSON object, or its `prefetch` is not one.
pub fn merge_into_metadata(
    metadata: Option<&[u8]>,
    traces: &[(FileKind, &Trace)],
    minimal: impl FnOnce() -> Value,
) -> Result<Vec<u8>, TraceError> {
    let mut doc = match metadata {
        Some(bytes) => serde_json::from_slice::<Value>(bytes)
            .map_err(|e| TraceError(format!("metadata.json is not valid JSON: {e}")))?,
        None => minimal(),
    };
    let Some(top) = doc.as_object_mut() else {
        return Err(TraceError("metadata.json is not a JSON object".into()));
    };
    let prefetch = top
        .entry("prefetch")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(prefetch) = prefetch.as_object_mut() else {
        return Err(TraceError(
            "metadata.json's \"prefetch\" is not a JSON object".into(),
        ));
    };
    for (file, trace) in traces {
        prefetch.insert(metadata_key(*file).to_string(), trace.to_json());
    }
    serde_json::to_vec_pretty(&doc).map_err(|e| TraceError(e.to_string()))
}

fn check_block_size(block_size: u64) -> Result<(), TraceError> {
    if !(PAGE_SIZE..=MAX_PREFETCH_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two()
    {
        return Err(TraceError(format!(
            "block_size {block_size} is not a power of two from {PAGE_SIZE} to {MAX_PREFETCH_BLOCK_SIZE}"
        )));
    }
    Ok(())
}

/// The part of metadata.json tdfs reads; other keys are skipped unread.
#[derive(Deserialize)]
struct MetadataDoc {
    #[serde(default)]
    version: Option<Value>,
    #[serde(default)]
    prefetch: Option<PrefetchDoc>,
}

#[derive(Deserialize)]
struct PrefetchDoc {
    #[serde(default)]
    memory: Option<RawTrace>,
    #[serde(default)]
    rootfs: Option<RawTrace>,
}

/// A trace object as read: lists capped, not yet checked.
#[derive(Deserialize)]
struct RawTrace {
    indices: Capped<u64>,
    /// Optional: a trace without it is not checked for length.
    #[serde(default)]
    access_types: Option<Capped<String>>,
    block_size: u64,
}

impl RawTrace {
    fn check(self) -> Result<Parsed, TraceError> {
        check_block_size(self.block_size)?;
        let mut notes = Vec::new();
        let mut indices = self.indices.kept;
        if self.indices.total > MAX_PREFETCH_ENTRIES as u64 {
            notes.push(format!(
                "{} blocks listed, over the limit of {MAX_PREFETCH_ENTRIES}: the first {MAX_PREFETCH_ENTRIES} are used",
                self.indices.total
            ));
        }
        let mut names: Vec<String> = Vec::new();
        let mut access_types = Vec::with_capacity(indices.len());
        match self.access_types {
            Some(types) => {
                if types.total != self.indices.total {
                    let used = types.total.min(self.indices.total);
                    notes.push(format!(
                        "{} indices but {} access types: the first {used} blocks are used",
                        self.indices.total, types.total
                    ));
                }
                for t in types.kept.into_iter().take(indices.len()) {
                    let at = match names.iter().position(|n| *n == t) {
                        Some(at) => at,
                        None if names.len() < MAX_ACCESS_TYPE_NAMES => {
                            names.push(t);
                            names.len() - 1
                        }
                        None => {
                            return Err(TraceError(format!(
                                "over {MAX_ACCESS_TYPE_NAMES} distinct access types"
                            )));
                        }
                    };
                    access_types.push(at as u8);
                }
                indices.truncate(access_types.len());
            }
            None => {
                names.push(READ.to_string());
                access_types.resize(indices.len(), 0);
            }
        }
        Ok(Parsed {
            trace: Trace {
                block_size: self.block_size,
                indices,
                access_types,
                access_type_names: names,
            },
            notes,
        })
    }
}

/// A JSON list of which at most `MAX_PREFETCH_ENTRIES` items are kept;
/// `total` counts all of them.
struct Capped<T> {
    kept: Vec<T>,
    total: u64,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Capped<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CappedVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for CappedVisitor<T> {
            type Value = Capped<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Capped<T>, A::Error> {
                // The size hint is the document's claim: capped before use.
                let hint = seq.size_hint().unwrap_or(0).min(MAX_PREFETCH_ENTRIES);
                let mut kept = Vec::with_capacity(hint);
                let mut total = 0u64;
                while total < MAX_PREFETCH_ENTRIES as u64 {
                    match seq.next_element()? {
                        Some(item) => kept.push(item),
                        None => return Ok(Capped { kept, total }),
                    }
                    total += 1;
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    total += 1;
                }
                Ok(Capped { kept, total })
            }
        }
        deserializer.deserialize_seq(CappedVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(trace: &str) -> Result<Option<Parsed>, TraceError> {
        let doc = format!(
            r#"{{"version": 2, "template": {{"x": 1}}, "prefetch": {{"memory": {trace}}}}}"#
        );
        parse_metadata(doc.as_bytes(), FileKind::Memfile)
    }

    #[test]
    fn e2b_trace_is_read_and_other_keys_ignored() {
        let p = memory(
            r#"{"indices": [5, 1, 9], "access_types": ["r", "w", "p"], "block_size": 4096}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.trace.indices, vec![5, 1, 9]);
        assert_eq!(p.trace.block_size, 4096);
        assert!(p.notes.is_empty());
        assert_eq!(
            p.trace.to_json()["access_types"],
            serde_json::json!(["r", "w", "p"])
        );
        let none = parse_metadata(br#"{"version": 2}"#, FileKind::Memfile).unwrap();
        assert!(none.is_none());
        let rootfs = parse_metadata(
            br#"{"version": 2, "prefetch": {"memory": {"indices": [1], "block_size": 4096}}}"#,
            FileKind::Rootfs,
        )
        .unwrap();
        assert!(rootfs.is_none());
    }

    #[test]
    fn bad_traces_are_refused_or_repaired() {
        assert!(parse_metadata(b"not json", FileKind::Memfile).is_err());
        for bs in [0u64, 4095, 12288, 2048, 1 << 31] {
            let err = memory(&format!(r#"{{"indices": [1], "block_size": {bs}}}"#)).unwrap_err();
            assert!(err.to_string().contains("power of two"), "{err}");
        }
        let p = memory(r#"{"indices": [1, 2, 3], "access_types": ["r", "r"], "block_size": 4096}"#)
            .unwrap()
            .unwrap();
        assert_eq!(p.trace.indices, vec![1, 2]);
        assert!(
            p.notes[0].contains("3 indices but 2 access types"),
            "{:?}",
            p.notes
        );
        assert!(memory(r#"{"indices": [-1], "block_size": 4096}"#).is_err());
    }

    #[test]
    fn millions_of_entries_are_capped() {
        let n = MAX_PREFETCH_ENTRIES + 10;
        let list: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let doc = format!(r#"{{"indices": [{}], "block_size": 4096}}"#, list.join(","));
        let p = parse_trace_file(doc.as_bytes()).unwrap();
        assert_eq!(p.trace.indices.len(), MAX_PREFETCH_ENTRIES);
        assert!(p.notes[0].contains("over the limit"), "{:?}", p.notes);
        assert!(p.trace.indices.capacity() <= MAX_PREFETCH_ENTRIES);
    }

    #[test]
    fn metadata_version_1_or_not_a_number_lists_no_trace() {
        let trace = r#"{"memory": {"indices": [5], "block_size": 4096}}"#;
        let with = |version: &str| format!(r#"{{{version}"prefetch": {trace}}}"#);
        for version in [r#""version": 3, "#, r#""version": 2, "#] {
            let doc = with(version);
            assert!(fields_ignored(doc.as_bytes()).is_none(), "{doc}");
            let parsed = parse_metadata(doc.as_bytes(), FileKind::Memfile).unwrap();
            assert_eq!(parsed.unwrap().trace.indices, vec![5], "{doc}");
        }
        // As E2B's TestDeserialize_VersionEdgeCases: all read as no fields.
        for version in [
            r#""version": 1, "#,
            r#""version": 1.0, "#,
            r#""version": -1, "#,
            r#""version": null, "#,
            r#""version": true, "#,
            r#""version": "2", "#,
            r#""version": 2.5, "#,
            "",
        ] {
            let doc = with(version);
            assert!(fields_ignored(doc.as_bytes()).is_some(), "{doc}");
            let parsed = parse_metadata(doc.as_bytes(), FileKind::Memfile).unwrap();
            assert!(parsed.is_none(), "{doc}");
        }
        let why = fields_ignored(with(r#""version": 1, "#).as_bytes()).unwrap();
        assert!(
            why.contains("version is 1") && why.contains("no prefetch trace"),
            "{why}"
        );
        assert!(fields_ignored(b"not json").is_none());
    }

    #[test]
    fn clamp_drops_blocks_past_the_end() {
        let mut t = Trace::of_reads(4096, vec![0, 3, u64::MAX, 1]).unwrap();
        assert_eq!(t.clamp_to(3 * 4096), 2);
        assert_eq!(t.indices, vec![0, 1]);
        assert_eq!(t.to_json()["access_types"], serde_json::json!(["r", "r"]));
    }

    #[test]
    fn merge_keeps_every_key() {
        let t = Trace::of_reads(4096, vec![7]).unwrap();
        let given = br#"{"version": 2, "context": {"a": [1]}, "prefetch": {"other": 1}}"#;
        let out =
            merge_into_metadata(Some(given), &[(FileKind::Rootfs, &t)], || Value::Null).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["version"], 2);
        assert_eq!(v["context"]["a"][0], 1);
        assert_eq!(v["prefetch"]["other"], 1);
        assert_eq!(v["prefetch"]["rootfs"]["indices"][0], 7);
        let back = parse_metadata(&out, FileKind::Rootfs).unwrap().unwrap();
        assert_eq!(back.trace, t);
        assert!(merge_into_metadata(Some(b"[1]"), &[], || Value::Null).is_err());
    }
}
