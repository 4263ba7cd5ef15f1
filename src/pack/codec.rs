//! Frame codecs of compressed diff objects (FORMAT.md "Frame table"): every
//! frame is an independent, standard frame that the stock tools decode.
//! zstd frames are single-segment with the content size and the XXH64
//! content checksum; LZ4 frames use independent 4 MiB blocks with block
//! checksums and no content checksum, as E2B's writers do.

use std::io::{self, Read};

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};

use crate::format::Compression;

/// zstd level used when none is given (zstd's own default).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Compress `data` into one frame. `Compression::None` returns the bytes as
/// they are.
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

/// Decode the whole of `frame` into `out`, which must be filled exactly: a
/// frame that decodes to fewer or more bytes, fails its checksum, or has
/// trailing bytes is an error.
pub fn decode_frame(compression: Compression, frame: &[u8], out: &mut [u8]) -> io::Result<()> {
    let got = match compression {
        Compression::None => {
            if frame.len() == out.len() {
                out.copy_from_slice(frame);
            }
            frame.len()
        }
        Compression::Zstd => zstd::bulk::decompress_to_buffer(frame, out)?,
        Compression::Lz4 => {
            let mut dec = FrameDecoder::new(frame);
            let mut filled = 0;
            while filled < out.len() {
                match dec.read(&mut out[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            let mut probe = [0u8; 1];
            if filled == out.len() && dec.read(&mut probe)? != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("frame decodes to more than {} bytes", out.len()),
                ));
            }
            filled
        }
    };
    if got != out.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame decodes to {got} bytes, expected {}", out.len()),
        ));
    }
    Ok(())
}

/// A reader of a whole LZ4 object: the frames one after another.
/// (`lz4_flex`'s decoder reports the end of each frame as end of input.)
pub struct Lz4Frames<R: Read> {
    decoder: FrameDecoder<R>,
    frame_ended: bool,
}

impl<R: Read> Lz4Frames<R> {
    pub fn new(reader: R) -> Self {
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
    use super::*;

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    #[test]
    fn round_trip_every_codec() {
        let data = sample();
        for c in [Compression::None, Compression::Zstd, Compression::Lz4] {
            let frame = compress_frame(c, DEFAULT_ZSTD_LEVEL, &data).unwrap();
            let mut out = vec![0u8; data.len()];
            decode_frame(c, &frame, &mut out).unwrap();
            assert_eq!(out, data, "{c:?}");
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
    fn lz4_objects_read_through_all_frames() {
        let data = sample();
        let mut object = Vec::new();
        for part in data.chunks(70_000) {
            object.extend(compress_frame(Compression::Lz4, 0, part).unwrap());
        }
        let mut out = Vec::new();
        Lz4Frames::new(&object[..]).read_to_end(&mut out).unwrap();
        assert!(out == data);
    }

    #[test]
    fn wrong_sizes_and_corruption_are_errors() {
        let data = sample();
        for c in [Compression::Zstd, Compression::Lz4] {
            let frame = compress_frame(c, 3, &data).unwrap();
            let mut short = vec![0u8; data.len() - 1];
            assert!(
                decode_frame(c, &frame, &mut short).is_err(),
                "{c:?} too big"
            );
            let mut long = vec![0u8; data.len() + 1];
            assert!(
                decode_frame(c, &frame, &mut long).is_err(),
                "{c:?} too small"
            );
            let mut bad = frame.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x55;
            let mut out = vec![0u8; data.len()];
            assert!(decode_frame(c, &bad, &mut out).is_err(), "{c:?} corrupt");
        }
    }
}
