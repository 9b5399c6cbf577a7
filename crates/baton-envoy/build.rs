//! Compiles Baton's own gRPC API (`proto/baton/v1/broker.proto`) in pure Rust: protox parses the
//! .proto files, tonic-prost-build writes the code, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/baton/v1/broker.proto", "proto/baton/v1/in_proxy.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
