"""An E2B-like origin peer (Python grpcio), written from E2B's behaviour as
issue 24 states it, for tests/e2b_origin.rs. Not tdfs code: another
implementation of the other side.

Usage: e2b_peer.py PROTO_DIR OUT_DIR PORT DIR BUILD REDIS_PORT FLIP_FILE
    MEMFILE_BLOCK ROOTFS_BLOCK

DIR holds the build's objects as the node has them: `memfile.header` and
`rootfs.ext4.header` (V5, flags bit 0, no entry for the build itself),
`memfile` and `rootfs.ext4` (its own diffs, uncompressed), `snapfile`,
`metadata.json`. Like an E2B node it registers `peer:BUILD` = 127.0.0.1:PORT
in Redis (TTL 2 h 2 min) before serving; once FLIP_FILE exists its "upload"
is done and every answer carries `availability.use_storage = true`.
Seekable data goes one block per message, snapfile in 4 MiB messages, a
header or metadata.json as one message. Names lose compression suffixes;
GetBuildFileExists answers snapfile only. Prints "serving" when ready.
"""

import os
import socket
import sys
import time
from concurrent import futures

from grpc_tools import protoc

(proto_dir, out_dir, port, data_dir, build, redis_port, flip_file,
 memfile_block, rootfs_block) = sys.argv[1:10]
rc = protoc.main(
    ["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
     os.path.join(proto_dir, "chunk_service.proto")]
)
if rc != 0:
    sys.exit(f"protoc failed: {rc}")
sys.path.insert(0, out_dir)

import grpc  # noqa: E402
import chunk_service_pb2 as pb  # noqa: E402
import chunk_service_pb2_grpc as pb_grpc  # noqa: E402

BLOCKS = {"memfile": int(memfile_block), "rootfs.ext4": int(rootfs_block)}
SNAPFILE_MESSAGE = 4 << 20


def uploaded():
    return os.path.exists(flip_file)


def strip(name):
    for suffix in (".zstd", ".lz4"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def path(request, context):
    if request.build_id != build:
        return None
    p = os.path.join(data_dir, strip(request.name))
    return p if os.path.isfile(p) else None


def unavailable():
    return pb.PeerAvailability(not_available=True)


def use_storage():
    return pb.PeerAvailability(use_storage=True)


class Service(pb_grpc.ChunkServiceServicer):
    def GetBuildFileSize(self, request, context):
        if uploaded():
            return pb.GetBuildFileSizeResponse(availability=use_storage())
        p = path(request, context)
        if p is None or strip(request.name) not in BLOCKS:
            return pb.GetBuildFileSizeResponse(availability=unavailable())
        return pb.GetBuildFileSizeResponse(total_size=os.path.getsize(p))

    def GetBuildFileExists(self, request, context):
        if strip(request.name) != "snapfile":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "only snapfile")
        if uploaded():
            return pb.GetBuildFileExistsResponse(availability=use_storage())
        if path(request, context) is None:
            return pb.GetBuildFileExistsResponse(availability=unavailable())
        return pb.GetBuildFileExistsResponse()

    def ReadAtBuildSeekable(self, request, context):
        p = path(request, context)
        if uploaded():
            yield pb.ReadAtBuildSeekableResponse(availability=use_storage())
            return
        block = BLOCKS.get(strip(request.name))
        if p is None or block is None:
            yield pb.ReadAtBuildSeekableResponse(availability=unavailable())
            return
        with open(p, "rb") as f:
            f.seek(request.offset)
            left = request.length
            pos = request.offset
            while left > 0:
                # One block per message, cut on the block grid.
                n = min(left, block - pos % block)
                data = f.read(n)
                if not data:
                    return
                yield pb.ReadAtBuildSeekableResponse(data=data)
                left -= len(data)
                pos += len(data)

    def GetBuildBlob(self, request, context):
        p = path(request, context)
        if uploaded():
            yield pb.GetBuildBlobResponse(availability=use_storage())
            return
        if p is None or strip(request.name) in BLOCKS:
            yield pb.GetBuildBlobResponse(availability=unavailable())
            return
        with open(p, "rb") as f:
            data = f.read()
        if strip(request.name) == "snapfile":
            for start in range(0, len(data), SNAPFILE_MESSAGE):
                yield pb.GetBuildBlobResponse(data=data[start:start + SNAPFILE_MESSAGE])
        else:
            yield pb.GetBuildBlobResponse(data=data)


def redis(*args):
    """One command in RESP over a plain socket; the reply's first line."""
    out = f"*{len(args)}\r\n".encode()
    for a in args:
        a = str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.create_connection(("127.0.0.1", int(redis_port)), timeout=5) as s:
        s.sendall(out)
        reply = s.recv(1024)
    if not reply.startswith(b"+OK"):
        sys.exit(f"redis said {reply!r}")


options = [("grpc.max_send_message_length", 64 << 20)]
server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
pb_grpc.add_ChunkServiceServicer_to_server(Service(), server)
server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
# E2B registers before uploading; TTL 2 h 2 min.
redis("SET", f"peer:{build}", f"127.0.0.1:{port}", "EX", 2 * 3600 + 120)
print("serving", flush=True)
while True:
    time.sleep(3600)
