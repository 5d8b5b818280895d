//! The generated contract of `proto/companion/v1`: queue messages (`Job`, `ResultReady`) and the
//! gRPC services (`RecordingService`, `PolicyService`, `UserService`, `TextService`), with their
//! clients and servers.

/// Package `companion.v1`.
pub mod v1 {
    #![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
    include!(concat!(env!("OUT_DIR"), "/companion.v1.rs"));
}

/// The encoded file descriptor set of every file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/companion_descriptor.bin"));
