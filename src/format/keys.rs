//! Object keys of a build (FORMAT.md): the two template files, the blobs
//! passed through unchanged, the names of their objects, and the canonical
//! form of a build id.

use std::fmt;

use uuid::Uuid;

use super::Compression;

/// The two template files a build has, each with a header and a diff object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKind {
    Memfile,
    Rootfs,
}

impl FileKind {
    pub const ALL: [FileKind; 2] = [FileKind::Memfile, FileKind::Rootfs];

    /// The object (and mounted file) name: `memfile` or `rootfs.ext4`.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Memfile => "memfile",
            FileKind::Rootfs => "rootfs.ext4",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        FileKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A build's objects that are used as they are stored, with no header or
/// diff behind them ("blobs", as E2B's `GetBuildBlob` calls them): the
/// Firecracker snapshot state and the build's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Blob {
    Snapfile,
    Metadata,
}

impl Blob {
    pub const ALL: [Blob; 2] = [Blob::Snapfile, Blob::Metadata];

    /// The object (and mounted file) name: `snapfile` or `metadata.json`.
    pub fn name(self) -> &'static str {
        match self {
            Blob::Snapfile => "snapfile",
            Blob::Metadata => "metadata.json",
        }
    }

    /// True when the object may be written again after the build first
    /// appears: E2B's optimize phase and its pause harvest re-upload
    /// `metadata.json` with the prefetch trace added. Everything else of a
    /// build is written once.
    pub fn may_change(self) -> bool {
        self == Blob::Metadata
    }
}

impl fmt::Display for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One of the objects a build may have under its `B/` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectName {
    Header(FileKind),
    /// The diff object; its suffix depends on the compression.
    Data(FileKind, Compression),
    Blob(Blob),
}

impl ObjectName {
    pub fn as_string(&self) -> String {
        match self {
            ObjectName::Header(k) => format!("{}.header", k.name()),
            ObjectName::Data(k, c) => format!("{}{}", k.name(), c.suffix()),
            ObjectName::Blob(b) => b.name().to_string(),
        }
    }
}

/// A validated object key `{build}/{name}`. It is built only from a UUID and
/// a fixed object name, so it can never name anything outside a build's
/// prefix (no `..`, no `/`, no NUL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub build: Uuid,
    pub name: ObjectName,
}

impl ObjectKey {
    pub fn new(build: Uuid, name: ObjectName) -> Self {
        ObjectKey { build, name }
    }

    pub fn header(build: Uuid, file: FileKind) -> Self {
        ObjectKey::new(build, ObjectName::Header(file))
    }

    pub fn data(build: Uuid, file: FileKind, compression: Compression) -> Self {
        ObjectKey::new(build, ObjectName::Data(file, compression))
    }

    pub fn blob(build: Uuid, blob: Blob) -> Self {
        ObjectKey::new(build, ObjectName::Blob(blob))
    }

    /// Key of the local backend's sidecar holding the uncompressed size.
    pub fn size_sidecar(&self) -> String {
        format!("{self}.uncompressed-size")
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.build, self.name.as_string())
    }
}

/// A build id as it appears in a store listing, a path or a command line:
/// the canonical lowercase hyphenated UUID form only (no braces, URNs,
/// simple form or capitals), so one build has one name.
pub fn parse_build_id(name: &str) -> Option<Uuid> {
    if name.len() != 36 {
        return None;
    }
    let id = Uuid::try_parse(name).ok()?;
    (id.hyphenated().to_string() == name).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_match_the_format() {
        let b = Uuid::parse_str("3f1c0000-0000-4000-8000-000000000001").unwrap();
        let s = |k: ObjectKey| k.to_string();
        assert_eq!(
            s(ObjectKey::header(b, FileKind::Memfile)),
            format!("{b}/memfile.header")
        );
        assert_eq!(
            s(ObjectKey::data(b, FileKind::Rootfs, Compression::Zstd)),
            format!("{b}/rootfs.ext4.zstd")
        );
        assert_eq!(
            s(ObjectKey::data(b, FileKind::Memfile, Compression::Lz4)),
            format!("{b}/memfile.lz4")
        );
        assert_eq!(
            s(ObjectKey::data(b, FileKind::Memfile, Compression::None)),
            format!("{b}/memfile")
        );
        assert_eq!(
            ObjectKey::data(b, FileKind::Memfile, Compression::Zstd).size_sidecar(),
            format!("{b}/memfile.zstd.uncompressed-size")
        );
        assert_eq!(FileKind::from_name("rootfs.ext4"), Some(FileKind::Rootfs));
        assert_eq!(FileKind::from_name("../x"), None);
        assert_eq!(
            s(ObjectKey::blob(b, Blob::Metadata)),
            format!("{b}/metadata.json")
        );
        assert_eq!(
            s(ObjectKey::blob(b, Blob::Snapfile)),
            format!("{b}/snapfile")
        );
    }

    #[test]
    fn build_ids_are_canonical_uuids_only() {
        let id = Uuid::new_v4();
        assert_eq!(parse_build_id(&id.to_string()), Some(id));
        assert_eq!(parse_build_id(&id.simple().to_string()), None);
        assert_eq!(parse_build_id(".."), None);
        assert_eq!(parse_build_id("../../../../../../etc/passwd"), None);
        assert_eq!(parse_build_id(&format!("{{{id}}}")), None);
        // Keys are lowercase: an uppercase name would be a second name.
        assert_eq!(parse_build_id(&id.to_string().to_uppercase()), None);
    }
}
