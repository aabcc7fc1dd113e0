//! Compiles `nurse/v1/nurse.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=nurse/v1/nurse.proto");
    let descriptors = protox::compile(["nurse/v1/nurse.proto"], ["."])?;
    // Small per-stream buffers: see `src/codec.rs`.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::NurseCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
