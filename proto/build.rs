//! Compiles the `.proto` sources with protox (pure Rust, no `protoc`), then prost for the
//! message types and pbjson for their proto3 JSON mapping (what Connect's JSON codec speaks).
use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "google/v1/profile.proto",
    "types/v1/types.proto",
    "push/v1/push.proto",
    "querier/v1/querier.proto",
    "version/v1/version.proto",
    "grpc/health/v1/health.proto",
    "kiln/v1/pprof_input.proto",
    "settings/v1/setting.proto",
    "adhocprofiles/v1/adhocprofiles.proto",
    "opentelemetry/proto/collector/profiles/v1development/profiles_service.proto",
];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("proto");
    for p in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let fds = protox::compile(PROTOS, [&root]).expect("protos compile");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let descriptor_bytes = fds.encode_to_vec();
    std::fs::write(out.join("descriptors.bin"), &descriptor_bytes).unwrap();

    let mut cfg = prost_build::Config::new();
    cfg.bytes([".push.v1.RawSample.raw_profile"]);
    cfg.compile_fds(fds).expect("prost codegen");

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)
        .unwrap()
        .build(&[
            ".google.v1",
            ".types.v1",
            ".push.v1",
            ".querier.v1",
            ".version.v1",
            ".grpc.health.v1",
            ".settings.v1",
            ".adhocprofiles.v1",
        ])
        .expect("pbjson codegen");

    // OTLP/JSON is proto3 JSON but for two rules: receivers ignore fields they do not know
    // (newer senders add some), and a link's trace and span ids are hex, not base64, so
    // `Link`'s mapping is written by hand (proto/src/lib.rs).
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)
        .unwrap()
        .ignore_unknown_fields()
        .exclude([".opentelemetry.proto.profiles.v1development.Link"])
        .build(&[".opentelemetry.proto"])
        .expect("pbjson codegen for OTLP");
}
