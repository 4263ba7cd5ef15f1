//! Generates the gRPC code of E2B's ChunkService (`proto/chunk_service.proto`)
//! for `peer`, with the protoc binary vendored by `protoc-bin-vendored`, so
//! no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/chunk_service.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: a build script is one thread; nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // `bytes` fields as `bytes::Bytes`: a message's data is then a slice
        // of tonic's receive buffer, not a fresh Vec per message (E2B sends
        // one 4 KiB block per message: 1024 per 4 MiB chunk).
        .bytes(".")
        .compile_protos(&["proto/chunk_service.proto"], &["proto"])?;
    Ok(())
}
