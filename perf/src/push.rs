//! Push requests: a profile, re-timestamped to now, as Connect Push, gRPC Push or `/ingest`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Method;
use kiln_proto::push::v1::{PushRequest, RawProfileSeries, RawSample};
use kiln_proto::types::v1::LabelPair;
use prost::Message;

use crate::client::{grpc_frame, percent_encode, Prepared, Protocol};
use crate::engine::Generator;
use crate::flags::Api;
use crate::gz::GzTemplate;
use crate::source::{time_field, with_time, Stream, Workload};

pub const PUSH_PATH: &str = "/push.v1.PusherService/Push";

/// Builds push requests; shares the read-only workload with the other threads.
pub struct PushGenerator {
    workload: Arc<Workload>,
    /// One per profile when bodies are gzipped.
    templates: Option<Arc<Vec<GzTemplate>>>,
    api: Api,
    tenants: crate::flags::Tenants,
    base_path: String,
}

impl PushGenerator {
    pub fn new(
        workload: Arc<Workload>,
        templates: Option<Arc<Vec<GzTemplate>>>,
        api: Api,
        tenants: crate::flags::Tenants,
        base_path: String,
    ) -> Self {
        if let Some(t) = &templates {
            assert_eq!(t.len(), workload.profiles.len());
        }
        PushGenerator { workload, templates, api, tenants, base_path }
    }

    /// The profile body for profile `index` stamped with `time_nanos`: (body, uncompressed size).
    fn payload(&self, index: usize, time_nanos: i64) -> (Bytes, u64) {
        let base = &self.workload.profiles[index].base;
        let tail = time_field(time_nanos);
        let raw_len = (base.len() + tail.len()) as u64;
        let body = match &self.templates {
            Some(t) => t[index].build(&tail),
            None => with_time(base, time_nanos),
        };
        (Bytes::from(body), raw_len)
    }
}

pub fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// The labels of a pushed series: `__name__`, `service_name`, then the stream's own.
pub fn series_labels(metric_name: &str, stream: &Stream) -> Vec<LabelPair> {
    let mut labels = Vec::with_capacity(stream.labels.len() + 2);
    labels.push(LabelPair { name: "__name__".into(), value: metric_name.into() });
    labels.push(LabelPair { name: "service_name".into(), value: stream.service.clone() });
    for (name, value) in &stream.labels {
        labels.push(LabelPair { name: name.clone(), value: value.clone() });
    }
    labels
}

/// `/ingest?name=<service>{k=v,...}&spyName=kiln-load&format=pprof`.
pub fn ingest_path(base_path: &str, stream: &Stream) -> String {
    let mut name = stream.service.clone();
    if !stream.labels.is_empty() {
        let pairs: Vec<String> = stream.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        name = format!("{name}{{{}}}", pairs.join(","));
    }
    format!("{base_path}/ingest?name={}&spyName=kiln-load&format=pprof", percent_encode(&name))
}

pub fn push_body(labels: Vec<LabelPair>, raw_profile: Bytes) -> Vec<u8> {
    PushRequest {
        series: vec![RawProfileSeries {
            labels,
            samples: vec![RawSample { raw_profile, id: String::new() }],
            annotations: Vec::new(),
        }],
    }
    .encode_to_vec()
}

impl Generator for PushGenerator {
    fn prepare(&mut self, k: u64) -> Prepared {
        let (stream, index) = self.workload.pick(k);
        let (payload, raw_len) = self.payload(index, now_nanos());
        let tenant = self.tenants.nth(k);
        let push = |protocol, content_type, body: Vec<u8>| Prepared {
            method: Method::POST,
            path: format!("{}{PUSH_PATH}", self.base_path),
            content_type: Some(content_type),
            body: Bytes::from(body),
            protocol,
            tenant: tenant.clone(),
            bytes_uncompressed: raw_len,
            kind: "push",
        };
        let metric_name = &self.workload.profiles[index].metric_name;
        match self.api {
            Api::Push => {
                let body = push_body(series_labels(metric_name, stream), payload);
                push(Protocol::Connect, "application/proto", body)
            }
            Api::Grpc => {
                let body = grpc_frame(&push_body(series_labels(metric_name, stream), payload));
                push(Protocol::Grpc, "application/grpc", body)
            }
            Api::Ingest => Prepared {
                method: Method::POST,
                path: ingest_path(&self.base_path, stream),
                content_type: Some("application/octet-stream"),
                body: payload,
                protocol: Protocol::Plain,
                tenant,
                bytes_uncompressed: raw_len,
                kind: "ingest",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::{ProfileKind, Shape};
    use crate::source::decode_pprof;

    fn workload() -> Arc<Workload> {
        let shape = Shape {
            services: 2,
            series_per_service: 2,
            labels_per_series: 2,
            stack_depth: 5,
            unique_stacks: 20,
            functions: 20,
            samples_per_profile: 10,
            profile_types: vec![ProfileKind::Cpu],
        };
        Arc::new(Workload::synthetic(&shape, 1))
    }

    fn templates(w: &Workload) -> Arc<Vec<GzTemplate>> {
        Arc::new(w.profiles.iter().map(|p| GzTemplate::new(&p.base, flate2::Compression::fast())).collect())
    }

    #[test]
    fn test_push_request_carries_retimed_gzip_profile() {
        let w = workload();
        let t = templates(&w);
        let mut g =
            PushGenerator::new(w, Some(t), Api::Push, crate::flags::Tenants { count: 3, offset: 0 }, String::new());
        let before = now_nanos();
        let req = g.prepare(4);
        assert_eq!(req.path, PUSH_PATH);
        assert_eq!(req.content_type, Some("application/proto"));
        assert_eq!(req.tenant.as_deref(), Some("tenant-1"));
        let push = PushRequest::decode(req.body.as_ref()).unwrap();
        let series = &push.series[0];
        let names: Vec<_> = series.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "service_name", "label_0", "label_1"]);
        assert_eq!(series.labels[0].value, "process_cpu");
        let raw = &series.samples[0].raw_profile;
        assert_eq!(&raw[..2], &[0x1f, 0x8b]);
        let profile = decode_pprof(raw).unwrap();
        assert!(profile.time_nanos >= before && profile.time_nanos <= now_nanos());
        assert_eq!(req.bytes_uncompressed as usize, profile.encode_to_vec().len());
    }

    #[test]
    fn test_grpc_and_ingest_requests() {
        let w = workload();
        let mut g = PushGenerator::new(w.clone(), None, Api::Grpc, Default::default(), "/base".into());
        let req = g.prepare(0);
        assert_eq!(req.path, format!("/base{PUSH_PATH}"));
        assert_eq!(req.protocol, Protocol::Grpc);
        assert_eq!(req.body[0], 0);
        let len = u32::from_be_bytes(req.body[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, req.body.len() - 5);
        let push = PushRequest::decode(&req.body[5..]).unwrap();
        assert!(decode_pprof(&push.series[0].samples[0].raw_profile).is_ok());
        assert!(req.tenant.is_none());

        let mut g = PushGenerator::new(w, None, Api::Ingest, Default::default(), String::new());
        let req = g.prepare(1);
        assert_eq!(
            req.path,
            "/ingest?name=kiln-load-0%7Blabel_0%3Dseries-1%2Clabel_1%3Dv1%7D&spyName=kiln-load&format=pprof"
        );
        assert!(decode_pprof(&req.body).unwrap().time_nanos > 0);
    }
}
