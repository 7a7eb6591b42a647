//! Compiles the .proto files with protox (pure Rust, no system `protoc`) and generates the tonic/prost code,
//! plus the encoded descriptor set that the reflection service serves.

use prost::Message;

const PROTOS: [&str; 4] =
    ["safebet/v1/experiment.proto", "safebet/v1/decision.proto", "safebet/v1/admin.proto", "safebet/v1/episodes.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protox does not emit rerun-if-changed lines itself.
    println!("cargo:rerun-if-changed=safebet");
    let fds = protox::compile(PROTOS, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("safebet_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::SliceCodec")
        .compile_fds(fds)?;
    Ok(())
}
