//! Compiles the agent protocol with protox (a pure-Rust protobuf compiler: no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/keyward/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
