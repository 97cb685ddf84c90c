//! Generates the gRPC code from `proto/` (and the example's own service from
//! `examples/proto/`) when the `grpc` feature is on.
//! protoc comes from the `protoc-bin-vendored` crate, so no system protoc is
//! needed.

fn main() {
    #[cfg(feature = "grpc")]
    grpc();
}

#[cfg(feature = "grpc")]
fn grpc() {
    const PROTO: &str = "proto/jwtprofile/v1/machine_keys.proto";
    const EXAMPLE: &str = "examples/proto/greeter.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed={EXAMPLE}");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("protoc-bin-vendored has a protoc");
    let well_known =
        protoc_bin_vendored::include_path().expect("protoc-bin-vendored has the include files");
    let config = || {
        let mut config = tonic_prost_build::Config::new();
        config.protoc_executable(&protoc);
        config
    };
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_with_config(
            config(),
            &[PROTO.into()],
            &[std::path::PathBuf::from("proto"), well_known.clone()],
        )
        .expect("proto/jwtprofile/v1/machine_keys.proto compiles");
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_with_config(
            config(),
            &[EXAMPLE.into()],
            &[std::path::PathBuf::from("examples/proto"), well_known],
        )
        .expect("examples/proto/greeter.proto compiles");
}
