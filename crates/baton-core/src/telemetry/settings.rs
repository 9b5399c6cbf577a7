//! The `telemetry:` and `audit:` sections: their YAML shape, the validated values and validation.
//! A tracing header's value may be a credential: it is read from a file or the environment and is
//! held as a `Secret`, never printed.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::files::read_secret;
use crate::metrics::OTHER_SOURCE;
use crate::secret::Secret;
use baton_decide::settings::{Errors, duration, http_url};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTelemetry {
    /// `service.name` of Baton's spans (default `baton`).
    pub service_name: Option<String>,
    /// OTLP trace export; absent = no tracing (the default).
    pub tracing: Option<RawTracing>,
    /// Envoy `dynamic_metadata` on every reply, for the access log; off by default, like the audit
    /// log and traces (it costs every request, see BENCHMARKS.md).
    pub dynamic_metadata: bool,
    /// The calling workloads (a request's `source`: Envoy's `source.principal`, or the broker's
    /// caller) whose token exchanges `baton_source_exchanges_total` counts by name; any other source
    /// is counted as `other`. Named here, never taken from a request, so the label stays bounded.
    pub metric_sources: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTracing {
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    pub headers: Vec<RawHeader>,
    pub sampler_ratio: Option<f64>,
    pub timeout: Option<String>,
    pub subject: SubjectMode,
}

/// A header sent with every export; a value that is a credential comes from a file or the environment.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawHeader {
    pub name: String,
    pub value: Option<String>,
    pub value_file: Option<PathBuf>,
    pub value_env: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// How the subject's `sub` is written: as it is, or as `sha256:<fingerprint>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectMode {
    #[default]
    Plain,
    Hashed,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAudit {
    pub sink: AuditSinkKind,
    pub path: Option<PathBuf>,
    pub max_bytes: Option<u64>,
    pub max_files: Option<u32>,
    pub buffer: Option<usize>,
    pub subject: SubjectMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSinkKind {
    #[default]
    Off,
    Stdout,
    File,
}

#[derive(Debug)]
pub struct Telemetry {
    pub service_name: String,
    pub tracing: Option<Tracing>,
    pub dynamic_metadata: bool,
    /// The sources counted by name in `baton_source_exchanges_total`.
    pub metric_sources: Vec<String>,
}

#[derive(Debug)]
pub struct Tracing {
    pub endpoint: Url,
    pub protocol: OtlpProtocol,
    /// Lower-case names; values are secrets (an API key is common).
    pub headers: Vec<(String, Secret)>,
    /// For traces that do not arrive with a sampling decision (no sampled `traceparent`).
    pub sampler_ratio: f64,
    pub timeout: Duration,
    pub subject: SubjectMode,
}

#[derive(Debug)]
pub struct Audit {
    pub sink: AuditSink,
    /// Records queued for the writer; past this a record is dropped and counted, never waited for.
    pub buffer: usize,
    pub subject: SubjectMode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditSink {
    Off,
    Stdout,
    /// Rotated when the next line would pass `max_bytes`: `path` becomes `path.1`, and so on up to
    /// `path.<max_files>`.
    File {
        path: PathBuf,
        max_bytes: u64,
        max_files: u32,
    },
}

/// `telemetry.metric_sources` is a bounded list: each entry is a series of its own.
const MAX_METRIC_SOURCES: usize = 1000;

impl RawTelemetry {
    /// The `telemetry:` section, its problems added to `errors`.
    pub(crate) fn validate(self, errors: &mut Errors) -> Telemetry {
        let service_name = self.service_name.unwrap_or_else(|| "baton".to_owned());
        if service_name.trim().is_empty() {
            errors.add("telemetry.service_name", "must not be empty");
        }
        let tracing = self.tracing.and_then(|t| {
            let endpoint = match &t.endpoint {
                Some(url) => http_url(url, "telemetry.tracing.endpoint", errors),
                None => {
                    errors.add("telemetry.tracing.endpoint", "is required to export traces");
                    None
                }
            };
            let mut headers = Vec::with_capacity(t.headers.len());
            for (i, h) in t.headers.into_iter().enumerate() {
                let at = |field: &str| format!("telemetry.tracing.headers[{i}].{field}");
                let name = h.name.to_ascii_lowercase();
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                    errors.add(at("name"), format!("`{}` is not a header name", h.name));
                }
                let value = match (h.value, &h.value_file, &h.value_env) {
                    (Some(v), None, None) => Some(Secret::new(v)),
                    (None, Some(path), None) => read_secret(path, &at("value_file"), errors),
                    (None, None, Some(var)) => match std::env::var(var) {
                        Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
                        _ => {
                            errors.add(at("value_env"), format!("`{var}` is not set or empty"));
                            None
                        }
                    },
                    _ => {
                        errors.add(at("value"), "set exactly one of `value`, `value_file`, `value_env`");
                        None
                    }
                };
                if let Some(v) = value {
                    if v.expose().bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
                        headers.push((name, v));
                    } else {
                        errors.add(at("value"), "must be visible ASCII");
                    }
                }
            }
            let sampler_ratio = t.sampler_ratio.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&sampler_ratio) {
                errors.add("telemetry.tracing.sampler_ratio", "must be between 0 and 1");
            }
            let timeout = duration(
                t.timeout.as_deref(),
                "telemetry.tracing.timeout",
                Duration::from_secs(5),
                errors,
            );
            if timeout.is_zero() {
                errors.add("telemetry.tracing.timeout", "must be more than 0");
            }
            Some(Tracing {
                endpoint: endpoint?,
                protocol: t.protocol,
                headers,
                sampler_ratio,
                timeout,
                subject: t.subject,
            })
        });
        if self.metric_sources.len() > MAX_METRIC_SOURCES {
            errors.add(
                "telemetry.metric_sources",
                format!("at most {MAX_METRIC_SOURCES} (each is a metric series)"),
            );
        }
        for (i, source) in self.metric_sources.iter().enumerate() {
            let at = format!("telemetry.metric_sources[{i}]");
            if source.trim().is_empty() {
                errors.add(at, "must not be empty");
            } else if source == OTHER_SOURCE {
                errors.add(at, format!("`{OTHER_SOURCE}` is the label of every source not listed"));
            } else if self.metric_sources[..i].contains(source) {
                errors.add(at, format!("`{source}` is listed twice"));
            }
        }
        Telemetry {
            service_name,
            tracing,
            dynamic_metadata: self.dynamic_metadata,
            metric_sources: self.metric_sources,
        }
    }
}

impl RawAudit {
    /// The `audit:` section, its problems added to `errors`.
    pub(crate) fn validate(self, errors: &mut Errors) -> Audit {
        let max_bytes = self.max_bytes.unwrap_or(100 * 1024 * 1024);
        let max_files = self.max_files.unwrap_or(5);
        let sink = match (self.sink, self.path) {
            (AuditSinkKind::Off, _) => AuditSink::Off,
            (AuditSinkKind::Stdout, None) => AuditSink::Stdout,
            (AuditSinkKind::Stdout, Some(_)) => {
                errors.add("audit.path", "is only for `sink: file`");
                AuditSink::Stdout
            }
            (AuditSinkKind::File, None) => {
                errors.add("audit.path", "is required for `sink: file`");
                AuditSink::Off
            }
            (AuditSinkKind::File, Some(path)) => {
                if path.as_os_str().is_empty() || path.file_name().is_none() {
                    errors.add("audit.path", "must be a file path");
                }
                AuditSink::File {
                    path,
                    max_bytes,
                    max_files,
                }
            }
        };
        if max_bytes < 4096 {
            errors.add("audit.max_bytes", "must be at least 4096");
        }
        if !(1..=100).contains(&max_files) {
            errors.add("audit.max_files", "must be between 1 and 100");
        }
        let buffer = self.buffer.unwrap_or(8192);
        if !(1..=1_000_000).contains(&buffer) {
            errors.add("audit.buffer", "must be between 1 and 1000000");
        }
        Audit {
            sink,
            buffer,
            subject: self.subject,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(yaml: &str) -> (Telemetry, Vec<String>) {
        let raw: RawTelemetry = crate::files::parse_yaml(yaml).expect("yaml");
        let mut errors = Errors::default();
        let telemetry = raw.validate(&mut errors);
        (
            telemetry,
            errors.0.iter().map(|e| format!("{}: {}", e.path, e.message)).collect(),
        )
    }

    #[test]
    fn metric_sources_are_named_once_and_never_other() {
        let (telemetry, errors) = validate("metric_sources: [spiffe://c/ns/shop/sa/frontend, svc-b]\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(telemetry.metric_sources, ["spiffe://c/ns/shop/sa/frontend", "svc-b"]);
        let (_, errors) = validate("metric_sources: [a, '', other, a]\n");
        assert_eq!(
            errors,
            [
                "telemetry.metric_sources[1]: must not be empty",
                "telemetry.metric_sources[2]: `other` is the label of every source not listed",
                "telemetry.metric_sources[3]: `a` is listed twice",
            ]
        );
    }
}
