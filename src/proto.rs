//! Generated gRPC types. **Architecture invariant:** these (and tonic) are used
//! only by `grpc` and the CLI's client commands, never by the domain.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("simverify.v1");

/// Encoded `FileDescriptorSet` of our protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/simverify_descriptor.bin"));

/// The gateway's `Verification` server: the generated one, reading requests
/// as [`crate::grpc::wire`] types (see `build.rs`).
pub mod gateway {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/gateway/simverify.v1.rs"));
}
