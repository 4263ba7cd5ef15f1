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

/// One of the objects a build may have under its `B/` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectName {
    Header(FileKind),
    /// The diff object; its suffix depends on the compression.
    Data(FileKind, Compression),
    Snapfile,
    Metadata,
}

impl ObjectName {
    pub fn as_string(&self) -> String {
        match self {
            ObjectName::Header(k) => format!("{}.header", k.name()),
            ObjectName::Data(k, c) => format!("{}{}", k.name(), c.suffix()),
            ObjectName::Snapfile => "snapfile".to_string(),
            ObjectName::Metadata => "metadata.json".to_string(),
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
    }
}
