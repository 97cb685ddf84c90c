//! Generates the gRPC code from `proto/` when the `grpc` feature is on.
//! protoc comes from the `protoc-bin-vendored` crate, so no system protoc is
//! needed.

fn main() {
    #[cfg(feature = "grpc")]
    grpc();
}

#[cfg(feature = "grpc")]
fn grpc() {
    const PROTO: &str = "proto/jwtprofile/v1/machine_keys.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("protoc-bin-vendored has a protoc");
    let well_known =
        protoc_bin_vendored::include_path().expect("protoc-bin-vendored has the include files");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_with_config(
            config,
            &[PROTO.into()],
            &[std::path::PathBuf::from("proto"), well_known],
        )
        .expect("proto/jwtprofile/v1/machine_keys.proto compiles");
}
