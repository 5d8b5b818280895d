//! Compiles every contract in companion/v1 (messages, gRPC clients and servers) and writes the
//! file descriptor set that server reflection serves.

use std::path::PathBuf;

const PROTOS: [&str; 4] = [
    "companion/v1/queue.proto",
    "companion/v1/recording.proto",
    "companion/v1/admin.proto",
    "companion/v1/text.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!(
        "cargo:rerun-if-changed={}",
        root.join("companion").display()
    );
    println!("cargo:rerun-if-changed=build.rs");
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("companion_descriptor.bin"))
        .emit_rerun_if_changed(false)
        .compile_protos(&files, &[root])?;
    Ok(())
}
