//! Compress and decode the independent zstd/LZ4 frames of compressed diffs:
//! the one implementation that `pack`, `tdfs verify` and the chunker use, so
//! what one writes the others accept, and what `verify` passes a mount
//! serves. Pure: no I/O beyond the readers a caller hands in.
//!
//! Every frame is an independent, standard frame that the stock tools decode
//! (FORMAT.md "Frame table"). zstd frames are single-segment with the
//! content size and the XXH64 content checksum; LZ4 frames use independent
//! 4 MiB blocks with block checksums and no content checksum, as E2B's
//! writers do. Decoding is strict: a frame must decode to exactly the size
//! its frame table gives, pass the codec's own checks, end with its end mark
//! (LZ4) and have no bytes after it.

use std::cell::RefCell;
use std::io::{self, Read};

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};

use crate::format::Compression;

/// zstd level used when none is given (zstd's own default).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// LZ4 frame magic number (LZ4 frame format, "Magic Number").
const LZ4_MAGIC: u32 = 0x184D_2204;
/// Bytes of the smallest LZ4 frame header: magic, FLG, BD and header
/// checksum (LZ4 frame format).
const LZ4_MIN_HEADER: usize = 7;
/// FLG bit: the frame ends with a content checksum after its end mark.
const LZ4_FLG_CONTENT_CHECKSUM: u8 = 0x04;

thread_local! {
    /// One zstd context per thread (a fetch worker, a verify worker),
    /// reused across frames.
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Why a frame did not decode. Each message says what is wrong with the
/// frame; the caller adds which frame of which object it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{}: the frame does not decode: {detail}", codec.name())]
    Corrupt { codec: Compression, detail: String },
    #[error("lz4: not an LZ4 frame (bad magic number)")]
    NotLz4,
    #[error("lz4: the frame has no end mark (truncated)")]
    NoEndMark,
    #[error(
        "{}: the frame decodes to fewer than the {expected} bytes its frame table gives",
        codec.name()
    )]
    Short { codec: Compression, expected: usize },
    #[error(
        "{}: the frame decodes to more than the {expected} bytes its frame table gives",
        codec.name()
    )]
    Long { codec: Compression, expected: usize },
    #[error(
        "{}: {count} bytes follow the end of the frame (the frame table gives a wrong size, \
         or the object was altered)",
        codec.name()
    )]
    TrailingBytes { codec: Compression, count: usize },
    #[error("cannot create a zstd decoding context: {0} (is the process out of memory?)")]
    Context(String),
}

/// Compress `data` into one frame. `Compression::None` returns the bytes as
/// they are. Errors are the codec's own (they do not occur for valid levels).
pub fn compress_frame(compression: Compression, level: i32, data: &[u8]) -> io::Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(data.to_vec()),
        Compression::Zstd => {
            let mut cx = zstd::bulk::Compressor::new(level)?;
            cx.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
            cx.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
            // Knowing the whole input, zstd sizes the window to it and writes
            // a single-segment frame.
            cx.compress(data)
        }
        Compression::Lz4 => {
            let info = FrameInfo::new()
                .block_size(BlockSize::Max4MB)
                .block_mode(BlockMode::Independent)
                .block_checksums(true)
                .content_checksum(false);
            let mut enc = FrameEncoder::with_frame_info(info, Vec::with_capacity(data.len() / 2));
            io::Write::write_all(&mut enc, data)?;
            enc.finish().map_err(io::Error::other)
        }
    }
}

/// Decode the one frame `src` into `dst`, which it must fill exactly
/// (`dst.len()` is the frame's `size_u`). A frame that decodes to fewer or
/// more bytes, fails its checksums, lacks its LZ4 end mark or is followed
/// by any byte is an error. `Compression::None` copies the bytes as they
/// are, with the same size check.
pub fn decode_frame(
    compression: Compression,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), FrameError> {
    match compression {
        Compression::None => decode_none(src, dst),
        Compression::Zstd => decode_zstd(src, dst),
        Compression::Lz4 => decode_lz4(src, dst),
    }
}

fn decode_none(src: &[u8], dst: &mut [u8]) -> Result<(), FrameError> {
    let codec = Compression::None;
    let expected = dst.len();
    match src.len().cmp(&expected) {
        std::cmp::Ordering::Less => Err(FrameError::Short { codec, expected }),
        std::cmp::Ordering::Greater => Err(FrameError::Long { codec, expected }),
        std::cmp::Ordering::Equal => {
            dst.copy_from_slice(src);
            Ok(())
        }
    }
}

fn decode_zstd(src: &[u8], dst: &mut [u8]) -> Result<(), FrameError> {
    let codec = Compression::Zstd;
    let corrupt = |detail: String| FrameError::Corrupt { codec, detail };
    // The decompressor decodes every frame in its input, skippable frames
    // and empty frames included, so one more of those after the frame would
    // pass unseen: require that the input is exactly one frame.
    let frame_len = zstd::zstd_safe::find_frame_compressed_size(src)
        .map_err(|code| corrupt(zstd::zstd_safe::get_error_name(code).to_string()))?;
    if frame_len != src.len() {
        return Err(FrameError::TrailingBytes {
            codec,
            count: src.len() - frame_len,
        });
    }
    let expected = dst.len();
    // The content size, when the frame header carries it, names the
    // mismatch before anything is decoded.
    match zstd::zstd_safe::get_frame_content_size(src) {
        Ok(Some(n)) if n < expected as u64 => return Err(FrameError::Short { codec, expected }),
        Ok(Some(n)) if n > expected as u64 => return Err(FrameError::Long { codec, expected }),
        _ => {}
    }
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match &mut *slot {
            Some(d) => d,
            empty => empty.insert(
                zstd::bulk::Decompressor::new().map_err(|e| FrameError::Context(e.to_string()))?,
            ),
        };
        // The decoder verifies the frame's XXH64 content checksum when the
        // frame carries one, and fails when the output does not fit.
        let n = decompressor
            .decompress_to_buffer(src, dst)
            .map_err(|e| corrupt(e.to_string()))?;
        if n != expected {
            return Err(FrameError::Short { codec, expected });
        }
        Ok(())
    })
}

fn decode_lz4(src: &[u8], dst: &mut [u8]) -> Result<(), FrameError> {
    let codec = Compression::Lz4;
    let corrupt = |e: io::Error| FrameError::Corrupt {
        codec,
        detail: e.to_string(),
    };
    if src.len() < LZ4_MIN_HEADER
        || u32::from_le_bytes([src[0], src[1], src[2], src[3]]) != LZ4_MAGIC
    {
        return Err(FrameError::NotLz4);
    }
    let mut decoder = FrameDecoder::new(src);
    decoder.read_exact(dst).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Short {
            codec,
            expected: dst.len(),
        },
        _ => corrupt(e),
    })?;
    let mut extra = [0u8; 1];
    match decoder.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => {
            return Err(FrameError::Long {
                codec,
                expected: dst.len(),
            });
        }
        Err(e) => return Err(corrupt(e)),
    }
    // The decoder stops at the frame's end mark and leaves what follows.
    let count = decoder.get_ref().len();
    if count != 0 {
        return Err(FrameError::TrailingBytes { codec, count });
    }
    // The decoder also takes input that stops at a block boundary for a
    // complete frame; require the end mark (and content checksum) so a
    // truncated frame is not taken for a whole one.
    let trailer = if src[4] & LZ4_FLG_CONTENT_CHECKSUM != 0 {
        8
    } else {
        4
    };
    if src.len() < LZ4_MIN_HEADER + trailer || src[src.len() - trailer..][..4] != [0; 4] {
        return Err(FrameError::NoEndMark);
    }
    Ok(())
}

/// A reader of the whole diff in `object`, a compressed object read from
/// its start: its frames decoded one after another, for checks that hash
/// the whole diff without a complete frame table. Errors: the zstd
/// decoder's, when it cannot start.
pub fn diff_reader<'a>(
    compression: Compression,
    object: impl Read + 'a,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(object),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(object)?),
        Compression::Lz4 => Box::new(Lz4Frames::new(object)),
    })
}

/// A reader of a whole LZ4 object: the frames one after another.
/// (`lz4_flex`'s decoder reports the end of each frame as end of input.)
struct Lz4Frames<R: Read> {
    decoder: FrameDecoder<R>,
    frame_ended: bool,
}

impl<R: Read> Lz4Frames<R> {
    fn new(reader: R) -> Self {
        Lz4Frames {
            decoder: FrameDecoder::new(reader),
            frame_ended: false,
        }
    }
}

impl<R: Read> Read for Lz4Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = self.decoder.read(buf)?;
            if n > 0 {
                self.frame_ended = false;
                return Ok(n);
            }
            // A frame ended; a second empty read means the input did too
            // (frames of a diff are never empty).
            if self.frame_ended {
                return Ok(0);
            }
            self.frame_ended = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    /// An LZ4 frame with the options `compress_frame` does not use: default
    /// (64 KiB) blocks and, optionally, a content checksum.
    fn lz4_frame(d: &[u8], content_checksum: bool) -> Vec<u8> {
        let info = FrameInfo::new()
            .block_checksums(true)
            .content_checksum(content_checksum);
        let mut e = FrameEncoder::with_frame_info(info, Vec::new());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    }

    fn decode(c: Compression, src: &[u8], size: usize) -> Result<Vec<u8>, FrameError> {
        let mut out = vec![0u8; size];
        decode_frame(c, src, &mut out).map(|()| out)
    }

    #[test]
    fn round_trip_every_codec() {
        let data = sample();
        for c in [Compression::None, Compression::Zstd, Compression::Lz4] {
            let frame = compress_frame(c, DEFAULT_ZSTD_LEVEL, &data).unwrap();
            assert_eq!(decode(c, &frame, data.len()).unwrap(), data, "{c:?}");
        }
    }

    #[test]
    fn zstd_frames_are_single_segment_with_checksum() {
        let frame = compress_frame(Compression::Zstd, 3, &sample()).unwrap();
        assert_eq!(&frame[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        let fhd = frame[4];
        assert_ne!(fhd & 0x20, 0, "single segment");
        assert_ne!(fhd & 0x04, 0, "content checksum");
        assert_ne!(fhd >> 6, 0, "content size present");
    }

    #[test]
    fn lz4_frames_have_block_checksums_only() {
        let frame = compress_frame(Compression::Lz4, 0, &sample()).unwrap();
        assert_eq!(&frame[..4], &[0x04, 0x22, 0x4d, 0x18]);
        assert_eq!(frame[4], 0x70, "v01, independent blocks, block checksums");
        assert_eq!(frame[5], 0x70, "4 MiB blocks");
    }

    #[test]
    fn objects_read_through_all_frames() {
        let data = sample();
        for c in [Compression::None, Compression::Zstd, Compression::Lz4] {
            let mut object = Vec::new();
            for part in data.chunks(70_000) {
                object.extend(compress_frame(c, DEFAULT_ZSTD_LEVEL, part).unwrap());
            }
            let mut out = Vec::new();
            diff_reader(c, &object[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert!(out == data, "{c:?}");
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let data = sample();
        let n = data.len();
        for c in [Compression::None, Compression::Zstd, Compression::Lz4] {
            let frame = compress_frame(c, 3, &data).unwrap();
            assert!(decode(c, &frame, n - 1).is_err(), "{c:?} too big");
            assert!(decode(c, &frame, n + 1).is_err(), "{c:?} too small");
        }
        let lz4 = lz4_frame(&data, true);
        assert_eq!(
            decode(Compression::Lz4, &lz4, n + 1),
            Err(FrameError::Short {
                codec: Compression::Lz4,
                expected: n + 1
            })
        );
        assert_eq!(
            decode(Compression::Lz4, &lz4, n - 1),
            Err(FrameError::Long {
                codec: Compression::Lz4,
                expected: n - 1
            })
        );
    }

    #[test]
    fn corruption_is_an_error() {
        let data = sample();
        for c in [Compression::Zstd, Compression::Lz4] {
            let frame = compress_frame(c, 3, &data).unwrap();
            let mut bad = frame.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x55;
            assert!(decode(c, &bad, data.len()).is_err(), "{c:?} corrupt");
        }
        // A flipped checksum byte (the last four bytes) must be caught.
        let zstd = compress_frame(Compression::Zstd, 3, &data).unwrap();
        let mut bad = zstd.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(decode(Compression::Zstd, &bad, data.len()).is_err());
        assert!(decode(Compression::Zstd, &zstd[..zstd.len() - 1], data.len()).is_err());
        for content_checksum in [false, true] {
            let f = lz4_frame(&data, content_checksum);
            assert_eq!(decode(Compression::Lz4, &f, data.len()).unwrap(), data);
            for i in [10, f.len() / 2, f.len() - 5] {
                let mut bad = f.clone();
                bad[i] ^= 0x40;
                assert!(
                    decode(Compression::Lz4, &bad, data.len()).is_err(),
                    "flip at {i}"
                );
            }
        }
        assert_eq!(
            decode(Compression::Lz4, b"garbage!", 8),
            Err(FrameError::NotLz4)
        );
    }

    #[test]
    fn lz4_without_its_end_mark_is_an_error() {
        let data = sample();
        for f in [
            compress_frame(Compression::Lz4, 0, &data).unwrap(),
            lz4_frame(&data, false),
        ] {
            assert_eq!(
                decode(Compression::Lz4, &f[..f.len() - 4], data.len()),
                Err(FrameError::NoEndMark)
            );
        }
    }

    #[test]
    fn bytes_after_the_frame_are_an_error() {
        let data = sample();
        let n = data.len();
        for c in [Compression::Zstd, Compression::Lz4] {
            let frame = compress_frame(c, 3, &data).unwrap();
            let empty = compress_frame(c, 3, &[]).unwrap();
            // A zstd skippable frame (magic 0x184D2A50, length 0) and LZ4's
            // equivalent: both are valid frames of no data.
            let skippable = [0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0];
            for tail in [&b"tail"[..], &frame, &empty, &skippable] {
                let mut two = frame.clone();
                two.extend_from_slice(tail);
                assert!(
                    matches!(
                        decode(c, &two, n),
                        Err(FrameError::TrailingBytes { count, .. }) if count == tail.len()
                    ),
                    "{c:?} followed by {} bytes: {:?}",
                    tail.len(),
                    decode(c, &two, n)
                );
            }
        }
        for content_checksum in [false, true] {
            let f = lz4_frame(&data, content_checksum);
            let mut two = f.clone();
            two.extend_from_slice(&f);
            assert!(decode(Compression::Lz4, &two, n).is_err());
        }
    }
}
