"""A ChunkService client from another implementation (Python grpcio),
generated from proto/chunk_service.proto at run time, for tests/peer_server.rs.

Usage: client.py PROTO_DIR OUT_DIR ADDR BUILD NAME OFFSET LENGTH BLOB
Prints one JSON object: the diff's size and availability, the SHA-256 and
message sizes of the range read, and the SHA-256 of the blob.
"""

import hashlib
import json
import os
import sys

from grpc_tools import protoc

proto_dir, out_dir, addr, build, name, offset, length, blob = sys.argv[1:9]
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

with grpc.insecure_channel(addr) as channel:
    stub = pb_grpc.ChunkServiceStub(channel)
    size = stub.GetBuildFileSize(pb.GetBuildFileSizeRequest(build_id=build, name=name))
    exists = stub.GetBuildFileExists(pb.GetBuildFileExistsRequest(build_id=build, name="snapfile"))
    digest = hashlib.sha256()
    sizes = []
    first_has_availability = None
    for i, m in enumerate(stub.ReadAtBuildSeekable(pb.ReadAtBuildSeekableRequest(
            build_id=build, name=name, offset=int(offset), length=int(length)))):
        if i == 0:
            first_has_availability = m.HasField("availability")
        digest.update(m.data)
        sizes.append(len(m.data))
    blob_digest = hashlib.sha256()
    for m in stub.GetBuildBlob(pb.GetBuildBlobRequest(build_id=build, name=blob)):
        blob_digest.update(m.data)
    print(json.dumps({
        "size": size.total_size,
        "size_not_available": size.availability.not_available,
        "snapfile_not_available": exists.availability.not_available,
        "range_sha256": digest.hexdigest(),
        "message_sizes": sizes,
        "first_has_availability": first_has_availability,
        "blob_sha256": blob_digest.hexdigest(),
    }))
