//! The wire messages kiln speaks: pprof (`google.v1`), Pyroscope's `push.v1`, `querier.v1`,
//! `types.v1`, `version.v1`, `settings.v1` and `adhocprofiles.v1`, gRPC health, and OTLP profiles. Field numbers follow Pyroscope's protos
//! (see shared/api.md); every message also has serde impls in the proto3 JSON mapping
//! (lowerCamel names, 64-bit integers as strings) for Connect's `application/json` codec.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod google {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/google.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/google.v1.serde.rs"));
    }
}
pub mod types {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/types.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/types.v1.serde.rs"));
    }
}
pub mod push {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/push.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/push.v1.serde.rs"));
    }
}
pub mod querier {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/querier.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/querier.v1.serde.rs"));
    }
}
pub mod version {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/version.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/version.v1.serde.rs"));
    }
}
pub mod grpc {
    pub mod health {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.serde.rs"));
        }
    }
}
pub mod settings {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/settings.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/settings.v1.serde.rs"));
    }
}
pub mod adhocprofiles {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/adhocprofiles.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/adhocprofiles.v1.serde.rs"));
    }
}
/// OTLP profiles (opentelemetry-proto v1.10.0, `profiles/v1development`) and what they use.
pub mod opentelemetry {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.common.v1.rs"));
                include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.common.v1.serde.rs"));
            }
        }
        pub mod resource {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.resource.v1.rs"));
                include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.resource.v1.serde.rs"));
            }
        }
        pub mod profiles {
            pub mod v1development {
                include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.profiles.v1development.rs"));
                include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.profiles.v1development.serde.rs"));
            }
        }
        pub mod collector {
            pub mod profiles {
                pub mod v1development {
                    include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.collector.profiles.v1development.rs"));
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/opentelemetry.proto.collector.profiles.v1development.serde.rs"
                    ));
                }
            }
        }
    }
}
pub mod kiln {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/kiln.v1.rs"));
    }
}
