//! Compiles the queue contract (proto/companion/v1/queue.proto) into `companion_queue::proto`.
//! Messages only: queue.proto declares no services, so no client or server code is generated.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest.join("../../proto");
    let queue_proto = proto_root.join("companion/v1/queue.proto");

    // Rebuild only when the contract changes, not on every change in the crate.
    println!("cargo:rerun-if-changed={}", proto_root.display());
    println!("cargo:rerun-if-changed=build.rs");
    // sqlx::migrate! embeds the migrations at compile time: a new one must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");

    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .emit_rerun_if_changed(false)
        .compile_protos(&[queue_proto], &[proto_root])?;
    Ok(())
}
