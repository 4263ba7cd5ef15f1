//! Digests as text, in the form the fixture manifests and `tdfs` print.

use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};
use tdfs::format::FileKind;
use tdfs::template::Builds;
use uuid::Uuid;

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file read with plain `read` calls of 1 MiB
/// (through a mount, as a user reads it).
pub fn sha256_of_file(path: &Path) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex SHA-256 of a template file read through the library.
pub fn sha256_of_template(builds: &Builds, build: Uuid, file: FileKind) -> String {
    let file = builds.open(build, file).expect("open template");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut offset = 0;
    while offset < file.size() {
        let n = file.read_at(&mut buf, offset).expect("library read");
        assert!(n > 0, "library read returned 0 before the end");
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    hex(&hasher.finalize())
}
