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

                /// OTLP/JSON writes a link's `traceId` and `spanId` as hex strings, not as
                /// proto3 JSON's base64: `Link`'s JSON mapping is this one, not pbjson's.
                mod link_json {
                    use super::Link;

                    fn hex(bytes: &[u8]) -> String {
                        bytes.iter().map(|b| format!("{b:02x}")).collect()
                    }

                    fn unhex<E: serde::de::Error>(field: &str, s: &str) -> Result<Vec<u8>, E> {
                        let digit = |c: u8| match c {
                            b'0'..=b'9' => Some(c - b'0'),
                            b'a'..=b'f' => Some(c - b'a' + 10),
                            b'A'..=b'F' => Some(c - b'A' + 10),
                            _ => None,
                        };
                        if s.len() % 2 != 0 {
                            return Err(E::custom(format!("{field} {s:?} is not hex: an odd number of digits")));
                        }
                        s.as_bytes()
                            .chunks(2)
                            .map(|p| match (digit(p[0]), digit(p[1])) {
                                (Some(h), Some(l)) => Ok(h << 4 | l),
                                _ => Err(E::custom(format!("{field} {s:?} is not hex"))),
                            })
                            .collect()
                    }

                    #[derive(serde::Serialize, serde::Deserialize, Default)]
                    #[serde(default)]
                    struct LinkJson {
                        #[serde(rename = "traceId", alias = "trace_id", skip_serializing_if = "String::is_empty")]
                        trace_id: String,
                        #[serde(rename = "spanId", alias = "span_id", skip_serializing_if = "String::is_empty")]
                        span_id: String,
                    }

                    impl serde::Serialize for Link {
                        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                            LinkJson { trace_id: hex(&self.trace_id), span_id: hex(&self.span_id) }.serialize(s)
                        }
                    }

                    impl<'de> serde::Deserialize<'de> for Link {
                        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                            let j = LinkJson::deserialize(d)?;
                            Ok(Link { trace_id: unhex("traceId", &j.trace_id)?, span_id: unhex("spanId", &j.span_id)? })
                        }
                    }
                }
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
