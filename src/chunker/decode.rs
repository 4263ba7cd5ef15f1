//! Frame decoding straight into the frame's place in the cache: a frame must
//! decode to exactly its `size_u` bytes and pass the codec's own checks (zstd
//! content checksum, LZ4 block checksums) before the caller marks it present.

use std::cell::RefCell;
use std::io::{self, Read};

use crate::format::Compression;

/// LZ4 frame magic number (LZ4 frame format).
const LZ4_MAGIC: u32 = 0x184D_2204;
/// FLG bit: the frame ends with a content checksum after its end mark.
const LZ4_FLG_CONTENT_CHECKSUM: u8 = 0x04;

thread_local! {
    /// One zstd context per fetch worker, reused across frames.
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Decode one frame of `compression` from `src` into `dst`, which it must
/// fill exactly. The error says what is wrong with the frame.
pub(super) fn decode_frame(
    compression: Compression,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), String> {
    match compression {
        Compression::Zstd => decode_zstd(src, dst),
        Compression::Lz4 => decode_lz4(src, dst),
        Compression::None => Err("the frame table says compression none".to_string()),
    }
}

fn decode_zstd(src: &[u8], dst: &mut [u8]) -> Result<(), String> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match &mut *slot {
            Some(d) => d,
            empty => empty.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| format!("cannot create a zstd context: {e}"))?,
            ),
        };
        // The decoder verifies the frame's XXH64 content checksum when the
        // frame carries one, and fails when the output does not fit.
        let n = decompressor
            .decompress_to_buffer(src, dst)
            .map_err(|e| format!("zstd: {e}"))?;
        if n != dst.len() {
            return Err(format!(
                "zstd: decoded to {n} bytes, expected {}",
                dst.len()
            ));
        }
        Ok(())
    })
}

fn decode_lz4(src: &[u8], dst: &mut [u8]) -> Result<(), String> {
    if src.len() < 7 || u32::from_le_bytes([src[0], src[1], src[2], src[3]]) != LZ4_MAGIC {
        return Err("lz4: not an LZ4 frame (bad magic number)".to_string());
    }
    // The decoder treats input that stops at a block boundary as a complete
    // frame; require the end mark (and content checksum) so a truncated
    // frame is not taken for a whole one.
    let trailer = if src[4] & LZ4_FLG_CONTENT_CHECKSUM != 0 {
        8
    } else {
        4
    };
    if src.len() < 7 + trailer || src[src.len() - trailer..][..4] != [0; 4] {
        return Err("lz4: the frame has no end mark (truncated)".to_string());
    }
    let mut decoder = lz4_flex::frame::FrameDecoder::new(src);
    decoder.read_exact(dst).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            format!("lz4: decoded to fewer than {} bytes", dst.len())
        }
        _ => format!("lz4: {e}"),
    })?;
    let mut extra = [0u8; 1];
    match decoder.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => return Err(format!("lz4: decodes to more than {} bytes", dst.len())),
        Err(e) => return Err(format!("lz4: {e}")),
    }
    if !decoder.get_ref().is_empty() {
        return Err(format!(
            "lz4: {} bytes after the end of the frame",
            decoder.get_ref().len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn zstd_frame(d: &[u8]) -> Vec<u8> {
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
            .unwrap();
        c.compress(d).unwrap()
    }

    fn lz4_frame(d: &[u8], content_checksum: bool) -> Vec<u8> {
        let info = lz4_flex::frame::FrameInfo::new()
            .block_checksums(true)
            .content_checksum(content_checksum);
        let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn zstd_exact_size_and_checksum() {
        let d = data(100_000);
        let f = zstd_frame(&d);
        let mut out = vec![0u8; d.len()];
        decode_frame(Compression::Zstd, &f, &mut out).unwrap();
        assert_eq!(out, d);
        let mut short = vec![0u8; d.len() - 1];
        assert!(decode_frame(Compression::Zstd, &f, &mut short).is_err());
        let mut long = vec![0u8; d.len() + 1];
        assert!(decode_frame(Compression::Zstd, &f, &mut long).is_err());
        // A flipped checksum byte (the last four bytes) must be caught.
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(decode_frame(Compression::Zstd, &bad, &mut out).is_err());
        assert!(decode_frame(Compression::Zstd, &f[..f.len() - 1], &mut out).is_err());
    }

    #[test]
    fn lz4_exact_size_checksums_and_truncation() {
        let d = data(300_000);
        for content_checksum in [false, true] {
            let f = lz4_frame(&d, content_checksum);
            let mut out = vec![0u8; d.len()];
            decode_frame(Compression::Lz4, &f, &mut out).unwrap();
            assert_eq!(out, d);
            let mut short = vec![0u8; d.len() - 1];
            assert!(decode_frame(Compression::Lz4, &f, &mut short).is_err());
            let mut long = vec![0u8; d.len() + 1];
            assert!(decode_frame(Compression::Lz4, &f, &mut long).is_err());
            for i in [10, f.len() / 2, f.len() - 5] {
                let mut bad = f.clone();
                bad[i] ^= 0x40;
                assert!(
                    decode_frame(Compression::Lz4, &bad, &mut out).is_err(),
                    "flip at {i}"
                );
            }
            let mut two = f.clone();
            two.extend_from_slice(&f);
            assert!(decode_frame(Compression::Lz4, &two, &mut out).is_err());
            assert!(decode_frame(Compression::Lz4, &f[..f.len() - 4], &mut out).is_err());
        }
        assert!(decode_frame(Compression::Lz4, b"garbage!", &mut [0u8; 8]).is_err());
    }
}
