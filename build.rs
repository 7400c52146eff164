//! Compiles the protos with protox (pure Rust: no system `protoc`) and keeps
//! the descriptor set for gRPC server reflection.
//!
//! Two passes. The first generates the messages, the clients and plain
//! servers (the load generator's bare echo is one). The second generates
//! the gateway's own `Verification` server, identical except that the
//! requests it reads are `grpc::wire` types: the same fields, decoded
//! without copying their text out of the receive buffer.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/simverify/v1/verification.proto",
        "proto/simverify/v1/audit.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("simverify_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    let gateway = out.join("gateway");
    std::fs::create_dir_all(&gateway)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&gateway)
        // Every type is the first pass's but the two the gateway decodes;
        // exact paths take precedence over the package's.
        .extern_path(".simverify.v1", "crate::proto")
        .extern_path(
            ".simverify.v1.VerifyRequest",
            "crate::grpc::wire::VerifyRequestIn",
        )
        .extern_path(
            ".simverify.v1.VerifyBatch",
            "crate::grpc::wire::VerifyBatchIn",
        )
        .compile_fds(protox::compile([protos[0]], ["proto"])?)?;
    Ok(())
}
