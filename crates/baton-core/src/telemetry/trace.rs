//! OpenTelemetry tracing: the OTLP exporter (gRPC or HTTP/protobuf) built from `telemetry.tracing`,
//! the W3C `traceparent` a request arrives with, and the one Baton sends on to the token service.
//! Spans carry reason codes, names and claims Baton chose to report; never a token or a secret.

use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use super::settings::{OtlpProtocol, SubjectMode, Telemetry as TelemetryConfig};
use baton_decide::request::Headers;

/// A running exporter and the tracer that feeds it.
#[derive(Debug)]
pub(crate) struct Tracing {
    provider: SdkTracerProvider,
    pub(crate) tracer: SdkTracer,
    pub(crate) subject: SubjectMode,
}

/// Start exporting, if `telemetry.tracing` is set. Must run inside the Tokio runtime (the gRPC
/// channel lives there); exports happen on the SDK's own thread, in batches, off the request path.
pub(crate) fn start(config: &TelemetryConfig) -> Result<Option<Tracing>, String> {
    let Some(t) = &config.tracing else {
        return Ok(None);
    };
    let exporter = match t.protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::with_capacity(t.headers.len());
            for (name, value) in &t.headers {
                let key = tonic::metadata::MetadataKey::from_bytes(name.as_bytes())
                    .map_err(|_| format!("telemetry.tracing.headers: `{name}` is not a gRPC metadata key"))?;
                let value = value
                    .expose()
                    .parse()
                    .map_err(|_| format!("telemetry.tracing.headers: the value of `{name}` is not valid metadata"))?;
                metadata.insert(key, value);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(t.endpoint.as_str())
                .with_timeout(t.timeout)
                .with_metadata(metadata)
                .build()
        }
        OtlpProtocol::HttpProtobuf => {
            let mut endpoint = t.endpoint.clone();
            if endpoint.path() == "/" {
                endpoint.set_path("/v1/traces");
            }
            let headers = t
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.expose().to_owned()))
                .collect();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint.as_str())
                .with_timeout(t.timeout)
                .with_headers(headers)
                .build()
        }
    }
    // The error names the endpoint and the cause; header values are not part of it.
    .map_err(|e| format!("telemetry.tracing: cannot build the OTLP exporter: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // A sampled parent (Envoy's decision) is followed; a new trace is kept at this ratio.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            t.sampler_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "baton");
    Ok(Some(Tracing {
        provider,
        tracer,
        subject: t.subject,
    }))
}

impl Tracing {
    /// Export what is queued and stop; bounded by the exporter's timeout. Blocking: call it off the
    /// async workers.
    pub(crate) fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace export did not shut down cleanly");
        }
    }
}

// === W3C trace context ===

/// One W3C `traceparent` / `tracestate` pair, however it arrived (the gRPC call's metadata, which
/// the serving side reads, or the request's headers).
#[derive(Clone, Copy, Debug)]
pub struct TraceContext<'a> {
    pub traceparent: &'a str,
    pub tracestate: Option<&'a str>,
}

impl Extractor for TraceContext<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The request headers [`parent`] reads (the generated Envoy configuration asks Envoy for them).
pub const HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// The span this request continues: the trace context of the gRPC call (`grpc`: Envoy's span for
/// its call to Baton, when Envoy traces), else the one in the request's own headers (the
/// application's). `None` when neither is a valid W3C trace context.
pub fn parent(grpc: Option<TraceContext<'_>>, headers: Option<Headers<'_>>) -> Option<SpanContext> {
    let from_headers = || {
        let headers = headers?;
        Some(TraceContext {
            traceparent: headers.get(HEADERS[0])?,
            tracestate: headers.get(HEADERS[1]),
        })
    };
    [grpc, from_headers()]
        .into_iter()
        .flatten()
        .map(|pair| {
            TraceContextPropagator::new()
                .extract(&pair)
                .span()
                .span_context()
                .clone()
        })
        .find(SpanContext::is_valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_grpc_traceparent_wins_over_the_request_headers() {
        let map: std::collections::HashMap<String, String> = [(
            "traceparent".to_owned(),
            "00-11111111111111111111111111111111-2222222222222222-01".to_owned(),
        )]
        .into_iter()
        .collect();
        let headers = Headers::Folded(&map);
        let from_headers = parent(None, Some(headers)).expect("from headers");
        assert_eq!(from_headers.trace_id().to_string(), "11111111111111111111111111111111");
        let grpc = TraceContext {
            traceparent: TP,
            tracestate: None,
        };
        let from_grpc = parent(Some(grpc), Some(headers)).expect("from grpc");
        assert_eq!(from_grpc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(from_grpc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(from_grpc.is_remote() && from_grpc.is_sampled());
    }

    #[test]
    fn invalid_trace_contexts_are_ignored() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let grpc = TraceContext {
                traceparent: bad,
                tracestate: None,
            };
            assert!(parent(Some(grpc), None).is_none(), "{bad}");
        }
        assert!(parent(None, None).is_none());
    }

    #[test]
    fn no_current_span_means_no_traceparent() {
        assert_eq!(crate::http::current_traceparent(), None);
    }
}
