//! Any bytes: `Header::decode` returns a header or an error, never panics,
//! and whatever decodes re-encodes in its own version to the same header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tdfs::format::Header;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = Header::decode(data) else { return };
    // V1/V2 are written as V3; V4/V5 sort their builds, which decode does too.
    let version = h.version().max(3);
    let again = h.encode(version).expect("a decoded header re-encodes");
    let back = Header::decode(&again).expect("a re-encoded header decodes");
    assert_eq!(back.metadata.size, h.metadata.size);
    assert_eq!(back.builds, h.builds);
    if version < 5 {
        assert_eq!(back, h);
    }
});
