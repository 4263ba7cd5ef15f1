//! Extended attributes of template files (`user.tdfs.*`, read with
//! `getfattr -d`) and the size-probe protocol of getxattr/listxattr.

use crate::format::Header;
use crate::template::own_compression;

const PREFIX: &str = "user.tdfs.";

/// Attribute names without the prefix, in listing order.
const NAMES: [&str; 9] = [
    "build_id",
    "base_build_id",
    "generation",
    "block_size",
    "compression",
    "header_version",
    "prefetch",
    "passthrough",
    "cached_bytes",
];

/// The NUL-terminated list of attribute names of a template file.
pub fn names() -> Vec<u8> {
    let mut list = Vec::new();
    for name in NAMES {
        list.extend_from_slice(PREFIX.as_bytes());
        list.extend_from_slice(name.as_bytes());
        list.push(0);
    }
    list
}

/// The value of attribute `name` of the template file `header` describes,
/// whose own diff has `cached_bytes()` bytes cached, whose prefetch stands
/// as `prefetch()` says and whose FUSE passthrough as `passthrough()` does;
/// None when it has no such attribute. Only the header is read: no diff is
/// opened.
pub fn value(
    header: &Header,
    cached_bytes: impl FnOnce() -> u64,
    prefetch: impl FnOnce() -> String,
    passthrough: impl FnOnce() -> String,
    name: &str,
) -> Option<String> {
    let meta = &header.metadata;
    Some(match name.strip_prefix(PREFIX)? {
        "build_id" => meta.build_id.to_string(),
        "base_build_id" => meta.base_build_id.to_string(),
        "generation" => meta.generation.to_string(),
        "block_size" => meta.block_size.to_string(),
        "compression" => own_compression(header).name().to_string(),
        "header_version" => header.version().to_string(),
        "cached_bytes" => cached_bytes().to_string(),
        "prefetch" => prefetch(),
        "passthrough" => passthrough(),
        _ => return None,
    })
}

/// How to answer a getxattr/listxattr whose value is `value` and whose
/// caller's buffer holds `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrReply<'a> {
    /// `size` was 0: the caller asks how big the value is.
    Size(u32),
    Data(&'a [u8]),
    /// The buffer is too small (ERANGE).
    TooSmall,
}

pub fn size_probe(value: &[u8], size: u32) -> XattrReply<'_> {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        XattrReply::Size(len)
    } else if size < len {
        XattrReply::TooSmall
    } else {
        XattrReply::Data(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_probe_protocol() {
        assert_eq!(size_probe(b"abc", 0), XattrReply::Size(3));
        assert_eq!(size_probe(b"abc", 2), XattrReply::TooSmall);
        assert_eq!(size_probe(b"abc", 3), XattrReply::Data(b"abc"));
        assert_eq!(size_probe(b"abc", 4096), XattrReply::Data(b"abc"));
        assert_eq!(size_probe(b"", 0), XattrReply::Size(0));
    }

    #[test]
    fn names_are_nul_terminated_and_prefixed() {
        let list = names();
        let names: Vec<&[u8]> = list.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
        assert_eq!(names.len(), NAMES.len());
        assert!(list.ends_with(&[0]));
        for n in names {
            assert!(n.starts_with(PREFIX.as_bytes()));
        }
    }
}
