//! Go's `encoding/binary` uvarint (LEB128) and varint (zig-zag, then LEB128).
