//! Generates the protobuf messages and the tonic client and server of `proto/runner.proto`.
//!
//! The `.proto` is parsed by `protox` (pure Rust), so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/runner.proto");
    let descriptors = protox::compile(["proto/runner.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Payload fields become `bytes::Bytes`, sliced out of the received buffer
        // instead of copied.
        .bytes(".")
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
