//! SHA-256 digests as text: the builds section records each diff's SHA-256
//! (FORMAT.md "Version 4"), which inspect, verify and checksum errors print.

/// Lower-case hex of `bytes` (64 characters for a SHA-256 digest), as
/// `sha256sum` prints it.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
