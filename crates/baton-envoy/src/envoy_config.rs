//! `baton envoy-config`: the Envoy configuration of a sidecar's outbound listener, generated from
//! Baton's own configuration so nobody hand-writes it: the ext_authz or ext_proc filter pointed at
//! Baton (TCP or Unix socket, HTTP/2), failing closed, with a timeout above Baton's, and one route
//! per destination host that names the destination to Baton. It only builds a document; it reads
//! no file and never sees a secret.
//!
//! Envoy's host matching and Baton's must never disagree in the unsafe direction: Envoy naming a
//! destination for a host Baton would not have matched. So the virtual hosts ignore the port (as a
//! Baton pattern without a port does), a pattern with a port becomes a route matching the whole
//! `:authority`, and every request no pattern covers goes unnamed, leaving Baton to apply its own
//! host matching and `unknown_destination`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::ext_proc::DESTINATION_METADATA;
use crate::file::Config;
use baton_decide::canonical::{self, HostPattern};
use baton_decide::route::CONTEXT_KEY;

/// The outbound listener's address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:15001";
/// The Envoy cluster that reaches Baton.
pub const BATON_CLUSTER: &str = "baton";
/// The Envoy cluster that reaches Baton's HTTP authorization listener (`Api::ExtAuthzHttp`).
pub const BATON_HTTP_CLUSTER: &str = "baton_http";
/// How long Envoy keeps an idle connection to Baton's HTTP authorization listener: less than
/// Baton's [`crate::authz_http::HEADER_READ_TIMEOUT`], so Envoy closes it first and never sends a
/// request on a connection Baton is closing.
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// The Envoy cluster that reaches the destinations: a dynamic forward proxy (DNS of `:authority`).
pub const OUTBOUND_CLUSTER: &str = "baton_outbound";
/// How much longer than Baton's longest token service `timeout` Envoy waits for Baton's answer, so
/// Baton's own timeout (a 503 with a reason) fires first.
pub const TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
const EXT_PROC: &str = "envoy.filters.http.ext_proc";

/// The Envoy filter that asks Baton.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Api {
    /// `envoy.filters.http.ext_authz`, gRPC `Authorization/Check`.
    #[default]
    ExtAuthz,
    /// `envoy.filters.http.ext_proc`, gRPC `ExternalProcessor/Process`, request headers only.
    ExtProc,
    /// `envoy.filters.http.wasm` running `baton.wasm` (in-proxy mode): hits served inside Envoy,
    /// misses asked of Baton's `baton.v1.InProxy` (see `wasm_plugin`). Needs `Options::wasm`.
    Wasm,
    /// `envoy.filters.http.ext_authz` over HTTP/1.1 (`http_service`) to Baton's `listen.authz_http`
    /// (or `authz_http_uds`): no route names a destination (Baton matches hosts), no source principal.
    ExtAuthzHttp,
}

/// Where Envoy reaches Baton.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatonAddress {
    Tcp(SocketAddr),
    Uds(PathBuf),
}

/// Envoy's side of Baton's mutual-TLS listener (`listen.grpc_tls`): the client certificate Envoy
/// presents, the CA Baton's certificate must chain to, and the name it must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// Envoy's client certificate chain (PEM), whose SAN is in Baton's `allowed_callers`.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA bundle (PEM) Baton's server certificate chains to.
    pub ca_file: PathBuf,
    /// The SAN Baton's certificate must carry: a DNS name (also sent as SNI) or a `spiffe://` ID.
    pub server_name: String,
}

/// What to generate, beyond the Baton configuration itself.
#[derive(Clone, Debug)]
pub struct Options {
    pub api: Api,
    pub baton: BatonAddress,
    /// Set when Baton is reached on its mutual-TLS TCP listener.
    pub tls: Option<ClientTls>,
    /// The outbound listener the application sends its requests to.
    pub listen: SocketAddr,
    /// How long Envoy waits for Baton.
    pub timeout: Duration,
    /// The request headers Envoy sends Baton: those Baton reads ([`crate::reads::headers`]).
    pub headers: Vec<&'static str>,
    /// `Api::Wasm`: the module and its plugin configuration.
    pub wasm: Option<crate::wasm_plugin::Wasm>,
    /// Baton's `telemetry.dynamic_metadata`: whether its answers carry Envoy metadata.
    pub dynamic_metadata: bool,
}

impl Options {
    /// Baton's address from its `listen` section (its Unix socket if it has one, else its gRPC
    /// address), unless `uds` overrides it; the timeout from its token services' longest `timeout`.
    /// `tls` is required exactly when Baton is reached on a TCP listener with `grpc_tls`: a
    /// plain-text cluster to a TLS Baton (or the reverse) is refused, not generated.
    pub fn new(
        config: &Config,
        api: Api,
        uds: Option<PathBuf>,
        tls: Option<ClientTls>,
        listen: SocketAddr,
    ) -> Result<Self, String> {
        if api == Api::ExtAuthzHttp {
            return Ok(Self {
                api,
                baton: http_address(config, uds, tls.as_ref())?,
                tls: None,
                listen,
                timeout: longest_exchange(config) + TIMEOUT_MARGIN,
                headers: crate::reads::headers(config),
                wasm: None,
                dynamic_metadata: config.decision.telemetry.dynamic_metadata,
            });
        }
        let baton = match uds.or_else(|| config.listen.grpc_uds.clone()) {
            Some(path) => {
                if tls.is_some() {
                    return Err(format!(
                        "Baton is reached on its Unix socket {}: the --tls-* options apply to its TCP listener only",
                        path.display()
                    ));
                }
                BatonAddress::Uds(path)
            }
            None => {
                let Some(mut addr) = config.listen.grpc else {
                    return Err("Baton's configuration has neither listen.grpc_uds nor listen.grpc".into());
                };
                match (&config.listen.grpc_tls, &tls) {
                    (Some(_), None) => {
                        return Err(
                            "Baton's listen.grpc requires a client certificate (listen.grpc_tls): give \
                             --tls-cert, --tls-key, --tls-ca and --tls-server-name, or reach it with --uds"
                                .into(),
                        );
                    }
                    (None, Some(_)) => {
                        return Err(
                            "Baton's listen.grpc is plain text (no listen.grpc_tls): the --tls-* options do not apply"
                                .into(),
                        );
                    }
                    (Some(_), Some(t)) if t.server_name.is_empty() => {
                        return Err("--tls-server-name must name Baton's certificate".into());
                    }
                    _ => {}
                }
                if addr.port() == 0 {
                    return Err("listen.grpc has port 0, which Envoy cannot connect to: give a port, or --uds".into());
                }
                // Baton listening on every address is reached on loopback from its own pod.
                if addr.ip().is_unspecified() {
                    addr.set_ip(match addr.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    });
                }
                BatonAddress::Tcp(addr)
            }
        };
        Ok(Self {
            api,
            baton,
            tls,
            listen,
            timeout: longest_exchange(config) + TIMEOUT_MARGIN,
            headers: crate::reads::headers(config),
            wasm: None,
            dynamic_metadata: config.decision.telemetry.dynamic_metadata,
        })
    }
}

/// Where Envoy reaches Baton's HTTP authorization listener: `uds`, else `listen.authz_http_uds`,
/// else `listen.authz_http` (plain text: the --tls-* options do not apply).
fn http_address(config: &Config, uds: Option<PathBuf>, tls: Option<&ClientTls>) -> Result<BatonAddress, String> {
    if tls.is_some() {
        return Err("--api ext_authz_http reaches Baton in plain text on loopback or a Unix socket: the --tls-* options do not apply".into());
    }
    if let Some(path) = uds.or_else(|| config.listen.authz_http_uds.clone()) {
        return Ok(BatonAddress::Uds(path));
    }
    let Some(mut addr) = config.listen.authz_http else {
        return Err(
            "--api ext_authz_http needs Baton's HTTP authorization listener: add listen.authz_http_uds or listen.authz_http"
                .into(),
        );
    };
    if addr.port() == 0 {
        return Err("listen.authz_http has port 0, which Envoy cannot connect to: give a port, or --uds".into());
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(BatonAddress::Tcp(addr))
}

/// What ext_authz over HTTP cannot carry, refused rather than generated: a route naming a
/// destination (`context_extensions`; a destination without `hosts` is reached only that way)
/// and the caller's certificate (`source.principal`; a policy judging the caller needs
/// `workload_identity` then). Every such destination is named.
fn check_http(config: &Config) -> Result<(), String> {
    let decision = &config.decision;
    let mut refused = Vec::new();
    for d in &decision.destinations {
        if d.hosts.is_empty() {
            refused.push(format!(
                "destination `{}` has no hosts: only a route can name it (context_extensions), which ext_authz over HTTP cannot carry; give it hosts, or use --api ext_authz",
                d.name
            ));
        }
        if d.policy.reads_source() && decision.workload_identity.is_none() {
            refused.push(format!(
                "destination `{}`: its policy judges the calling workload (allowed_sources, or `source` in `when`), and ext_authz over HTTP carries no peer certificate: set workload.identity, or use --api ext_authz",
                d.name
            ));
        }
    }
    match refused.is_empty() {
        true => Ok(()),
        false => Err(refused.join("\n")),
    }
}

/// The longest a token exchange may take (retries share it), whichever token service it goes to.
fn longest_exchange(config: &Config) -> Duration {
    config
        .decision
        .token_services
        .iter()
        .map(|t| t.timeout)
        .max()
        .unwrap_or_default()
}

/// A complete Envoy bootstrap: the outbound listener (Baton's filter, a dynamic forward proxy, the
/// router), a virtual host per destination host, the cluster to Baton and the outbound cluster.
pub fn bootstrap(config: &Config, options: &Options) -> Result<Value, String> {
    check_wasm(options)?;
    if options.api == Api::ExtAuthzHttp {
        check_http(config)?;
    }
    let routes = virtual_hosts(config, options.api)?;
    let listener = json!({
        "name": "baton_outbound",
        "address": socket_address(options.listen),
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "baton_outbound",
                    // The application may use the listener as its HTTP proxy (absolute-form URLs).
                    "http_protocol_options": { "allow_absolute_url": true },
                    // The upstream must act on the path Baton judged: Envoy resolves dot segments
                    // and merges slashes before Baton's filter sees the path, and refuses an
                    // encoded `/` (`%2F`, `%5C`), which Baton refuses too.
                    "normalize_path": true,
                    "merge_slashes": true,
                    "path_with_escaped_slashes_action": "REJECT_REQUEST",
                    "route_config": {
                        "name": "baton_outbound",
                        // A Baton host pattern without a port matches any port.
                        "ignore_port_in_host_matching": true,
                        "virtual_hosts": routes,
                    },
                    "http_filters": [
                        baton_filter(options),
                        dns_filter(),
                        {
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        },
                    ],
                },
            }],
        }],
    });
    Ok(json!({
        "static_resources": {
            "listeners": [listener],
            "clusters": [baton_cluster(options), outbound_cluster()],
        },
    }))
}

/// For an Envoy that exists already: Baton's filter (put it ahead of the router), its cluster, and
/// per destination the `typed_per_filter_config` to put on the routes that reach it.
pub fn fragment(config: &Config, options: &Options) -> Result<Value, String> {
    check_wasm(options)?;
    if options.api == Api::ExtAuthzHttp {
        check_http(config)?;
    }
    let mut destinations = serde_json::Map::new();
    for d in &config.decision.destinations {
        destinations.insert(
            d.name.clone(),
            json!({ "typed_per_filter_config": naming(options.api, &d.name)? }),
        );
    }
    Ok(json!({
        "http_filters": [baton_filter(options)],
        "clusters": [baton_cluster(options)],
        "destinations": destinations,
    }))
}

/// The document as YAML.
pub fn to_yaml(document: &Value) -> Result<String, String> {
    let mut options = serde_saphyr::SerializerOptions::default();
    // Long `@type` URLs stay on one line, as people write them.
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(document, options).map_err(|e| format!("cannot write YAML: {e}"))
}

// === The filter and the clusters ===

fn check_wasm(options: &Options) -> Result<(), String> {
    match (options.api, &options.wasm) {
        (Api::ExtAuthzHttp, _) => Ok(()),
        (Api::Wasm, None) => Err("--api wasm needs --wasm-module (the path of baton.wasm on the Envoy host)".into()),
        _ => Ok(()),
    }
}

fn baton_filter(options: &Options) -> Value {
    let timeout = duration(options.timeout);
    let grpc_service = |timeout: Option<&str>| {
        let mut service = json!({ "envoy_grpc": { "cluster_name": BATON_CLUSTER } });
        if let Some(t) = timeout {
            service["timeout"] = json!(t);
        }
        service
    };
    match options.api {
        Api::Wasm => match &options.wasm {
            Some(wasm) => crate::wasm_plugin::filter(wasm),
            None => Value::Null,
        },
        Api::ExtAuthz => json!({
            "name": EXT_AUTHZ,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "transport_api_version": "V3",
                "grpc_service": grpc_service(Some(&timeout)),
                "failure_mode_allow": false,
                // Baton unreachable is an outage, not a refusal.
                "status_on_error": { "code": "ServiceUnavailable" },
                // Only the headers Baton reads; no body, no peer certificate (issue 15).
                "allowed_headers": crate::reads::matcher(&options.headers),
            },
        }),
        Api::ExtAuthzHttp => {
            let mut response = json!({
                // A 200 sets these on the request (Baton's `x-envoy-auth-headers-to-remove`
                // removes the caller's `dpop`, or its `authorization` on a strip).
                "allowed_upstream_headers": crate::reads::matcher(&["authorization", "dpop"]),
                // A denial's challenge, JSON body and Retry-After reach the caller.
                "allowed_client_headers": crate::reads::matcher(&["content-type", "retry-after", "www-authenticate"]),
            });
            // Baton's dynamic metadata, as response headers of the same names; only when Baton sends
            // them: Envoy matches every answer's headers against these names.
            if options.dynamic_metadata {
                response["dynamic_metadata_from_headers"] = crate::reads::matcher(&crate::respond::METADATA_KEYS);
            }
            json!({
                "name": EXT_AUTHZ,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                    "transport_api_version": "V3",
                    "http_service": {
                        // The authorization request keeps the original path: no prefix.
                        "server_uri": { "uri": "http://baton", "cluster": BATON_HTTP_CLUSTER, "timeout": timeout },
                        "authorization_response": response,
                    },
                    "failure_mode_allow": false,
                    "status_on_error": { "code": "ServiceUnavailable" },
                    // Only the headers Baton reads, and `dpop`: Baton names a header to remove only
                    // when the request carries it (`respond::http_answer`), so it must see the
                    // caller's proof to have it removed. No body, no peer certificate (issue 15).
                    "allowed_headers": crate::reads::matcher(&http_headers(&options.headers)),
                },
            })
        }
        Api::ExtProc => json!({
            "name": EXT_PROC,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                // The stream lives as long as the HTTP request: the deadline is per message.
                "grpc_service": grpc_service(None),
                "message_timeout": timeout,
                "failure_mode_allow": false,
                "status_on_error": { "code": "ServiceUnavailable" },
                // Baton's dynamic metadata (decision, destination, audience, cache, reason, jti), for
                // the access log, when Baton's `telemetry.dynamic_metadata` is on.
                "metadata_options": {
                    "receiving_namespaces": { "untyped": [crate::respond::EXT_PROC_NAMESPACE] },
                },
                // Response headers are skipped, but a stream Baton delegated asks for its own
                // (`mode_override`, `ext_proc::delegated_mode`), so a destination's 401
                // `invalid_token` purges the entry that served it. Not SEND for all: Envoy's reply to
                // a request it refused in its codec (`GET * HTTP/1.1`) would wait on ext_proc while
                // Envoy resets the stream, and the client would get an empty connection.
                "processing_mode": {
                    "request_header_mode": "SEND",
                    "response_header_mode": "SKIP",
                    "request_body_mode": "NONE",
                    "response_body_mode": "NONE",
                    "request_trailer_mode": "SKIP",
                    "response_trailer_mode": "SKIP",
                },
                "allow_mode_override": true,
                "allowed_override_modes": [{
                    "request_header_mode": "SEND",
                    "response_header_mode": "SEND",
                    "request_body_mode": "NONE",
                    "response_body_mode": "NONE",
                    "request_trailer_mode": "SKIP",
                    "response_trailer_mode": "SKIP",
                }],
                // Only the headers Baton reads, and the pseudo-headers (issue 15).
                "forward_rules": crate::reads::ext_proc_forward_rules(&options.headers),
            },
        }),
    }
}

/// What Envoy sends Baton's HTTP listener: the headers Baton reads, and those it may have removed.
fn http_headers(reads: &[&'static str]) -> Vec<&'static str> {
    let mut names = reads.to_vec();
    names.extend(crate::respond::REMOVABLE);
    names.sort_unstable();
    names.dedup();
    names
}

fn dns_cache() -> Value {
    json!({ "name": OUTBOUND_CLUSTER, "dns_lookup_family": "V4_PREFERRED" })
}

/// Resolves each request's `:authority` for the outbound cluster.
fn dns_filter() -> Value {
    json!({
        "name": "envoy.filters.http.dynamic_forward_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
            "dns_cache_config": dns_cache(),
        },
    })
}

fn baton_cluster(options: &Options) -> Value {
    let address = match &options.baton {
        BatonAddress::Tcp(addr) => socket_address(*addr),
        BatonAddress::Uds(path) => json!({ "pipe": { "path": path.display().to_string() } }),
    };
    if options.api == Api::ExtAuthzHttp {
        return json!({
            "name": BATON_HTTP_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            // HTTP/1.1, closing an idle connection before Baton would.
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "common_http_protocol_options": { "idle_timeout": duration(HTTP_IDLE_TIMEOUT) },
                    "explicit_http_config": { "http_protocol_options": {} },
                },
            },
            "load_assignment": {
                "cluster_name": BATON_HTTP_CLUSTER,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": address } }] }],
            },
        });
    }
    let mut cluster = json!({
        "name": BATON_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        // gRPC needs HTTP/2.
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            },
        },
        "load_assignment": {
            "cluster_name": BATON_CLUSTER,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": address } }] }],
        },
    });
    if let Some(tls) = &options.tls {
        cluster["transport_socket"] = transport_socket(tls);
    }
    cluster
}

/// The `baton` cluster's `transport_socket` for Baton's mutual-TLS listener: Envoy presents its
/// client certificate and checks Baton's against the CA and the server name (a chain to the CA
/// alone is not enough: the same CA may sign other workloads, Envoy's own certificate among them).
pub fn transport_socket(tls: &ClientTls) -> Value {
    let (san_type, sni) = if tls.server_name.starts_with("spiffe://") {
        ("URI", None)
    } else {
        ("DNS", Some(tls.server_name.as_str()))
    };
    let mut context = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificates": [{
                "certificate_chain": { "filename": tls.cert_file.display().to_string() },
                "private_key": { "filename": tls.key_file.display().to_string() },
            }],
            "validation_context": {
                "trusted_ca": { "filename": tls.ca_file.display().to_string() },
                "match_typed_subject_alt_names": [{ "san_type": san_type, "matcher": { "exact": tls.server_name } }],
            },
        },
    });
    if let Some(sni) = sni {
        context["sni"] = json!(sni);
    }
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": context })
}

fn outbound_cluster() -> Value {
    json!({
        "name": OUTBOUND_CLUSTER,
        "connect_timeout": "1s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {
            "name": "envoy.clusters.dynamic_forward_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                "dns_cache_config": dns_cache(),
            },
        },
    })
}

fn socket_address(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// Envoy's JSON form of a duration: seconds with a fraction.
fn duration(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

// === Routes ===

/// One virtual host per host name (or `*.suffix`) of the configured patterns, then the catch-all.
/// In each: a route per `host:port` pattern, then one for the host on any port (if a pattern
/// claims it), each naming its destination only when the whole `:authority` is one Baton matches
/// to it (see [`authority_regex`]); then an unnamed route for everything else in the virtual host.
fn virtual_hosts(config: &Config, api: Api) -> Result<Vec<Value>, String> {
    let mut hosts: Vec<HostPatterns<'_>> = Vec::new();
    for d in &config.decision.destinations {
        for text in &d.hosts {
            let pattern = canonical::host_pattern(text).map_err(|e| format!("host pattern `{text}` {e}"))?;
            let domain = match pattern.wildcard {
                true => format!("*.{}", pattern.authority.host()),
                false => pattern.authority.host().to_owned(),
            };
            let i = match hosts.iter().position(|h| h.domain == domain) {
                Some(i) => i,
                None => {
                    hosts.push(HostPatterns {
                        domain,
                        ported: Vec::new(),
                        any_port: None,
                    });
                    hosts.len() - 1
                }
            };
            match pattern.authority.port() {
                Some(_) => hosts[i].ported.push((pattern, &d.name)),
                None => hosts[i].any_port = Some((pattern, &d.name)),
            }
        }
    }
    let mut out = Vec::with_capacity(hosts.len() + 1);
    for HostPatterns {
        domain,
        ported,
        any_port,
    } in hosts
    {
        let mut routes = Vec::with_capacity(ported.len() + 2);
        for (pattern, name) in ported.iter().chain(any_port.as_ref()) {
            routes.push(route(Some(authority_matcher(pattern)), Some(naming(api, name)?)));
        }
        // The rest of this virtual host (`orders:abc`, `orders:8080.evil.example`, another port):
        // unnamed, for Baton to judge.
        routes.push(route(None, None));
        // The fully qualified spelling (`orders.local.`) is the same host to Baton.
        let domains = match domain.ends_with(']') {
            true => json!([domain]),
            false => json!([domain, format!("{domain}.")]),
        };
        out.push(json!({ "name": domain, "domains": domains, "routes": routes }));
    }
    // Anything else: Baton applies its own host matching and `unknown_destination`.
    out.push(json!({ "name": "other", "domains": ["*"], "routes": [route(None, None)] }));
    Ok(out)
}

/// The destinations claiming one host name (or `*.suffix`), in configuration order.
struct HostPatterns<'a> {
    /// The virtual host's domain: `host` or `*.suffix`.
    domain: String,
    /// `host:port` patterns, with their destination.
    ported: Vec<(HostPattern, &'a str)>,
    /// The pattern without a port and its destination, if there is one.
    any_port: Option<(HostPattern, &'a str)>,
}

/// A decimal port 1 to 65535 without leading zeros, as [`canonical::authority`] takes it.
const PORT_REGEX: &str = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})";

/// An RE2 regex matching exactly the raw `:authority` values whose canonical form
/// ([`canonical::authority`]) `pattern` claims: any case, one optional trailing dot, the port
/// written one way. Envoy's virtual-host matching cuts the port at the last `:` whatever follows
/// it, so without this `orders:8080.evil.example` would reach the route naming `orders`.
pub fn authority_regex(pattern: &HostPattern) -> String {
    let host = pattern.authority.host();
    let mut re = String::from("^(?i)");
    if pattern.authority.is_ipv6() {
        re.push_str(&regex_escape(host));
    } else {
        if pattern.wildcard {
            re.push_str(r"([a-z0-9_-]+\.)+");
        }
        re.push_str(&regex_escape(host));
        re.push_str(r"\.?");
    }
    match pattern.authority.port() {
        Some(port) => re.push_str(&format!(":{port}")),
        None => re.push_str(&format!("(:{PORT_REGEX})?")),
    }
    re.push('$');
    re
}

fn authority_matcher(pattern: &HostPattern) -> Value {
    json!([{
        "name": ":authority",
        "string_match": { "safe_regex": { "regex": authority_regex(pattern) } },
    }])
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' && c != '-' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn route(headers: Option<Value>, naming: Option<Value>) -> Value {
    let mut matcher = json!({ "prefix": "/" });
    if let Some(h) = headers {
        matcher["headers"] = h;
    }
    let mut route = json!({ "match": matcher, "route": { "cluster": OUTBOUND_CLUSTER } });
    if let Some(n) = naming.filter(|n| !n.is_null()) {
        route["typed_per_filter_config"] = n;
    }
    route
}

/// The per-route configuration that names `destination` to Baton.
fn naming(api: Api, destination: &str) -> Result<Value, String> {
    Ok(match api {
        // The filter matches hosts itself (the same patterns as Baton): no route names a destination.
        Api::Wasm => Value::Null,
        // No context_extensions over HTTP: Baton matches the host (`check_http`).
        Api::ExtAuthzHttp => Value::Null,
        Api::ExtAuthz => json!({
            EXT_AUTHZ: {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "check_settings": { "context_extensions": { CONTEXT_KEY: destination } },
            },
        }),
        Api::ExtProc => {
            // gRPC metadata is an HTTP/2 header value.
            if !destination.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
                return Err(format!(
                    "destination `{destination}`: ext_proc names it in gRPC metadata, which takes visible ASCII only"
                ));
            }
            json!({
                EXT_PROC: {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                    "overrides": {
                        "grpc_initial_metadata": [{ "key": DESTINATION_METADATA, "value": destination }],
                    },
                },
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_yaml(
            r#"
listen:
  grpc: 0.0.0.0:9191
  insecure_plaintext: true
token_service:
  token_endpoint: http://127.0.0.1:9400/token
  client_id: c
  auth: { method: none }
  timeout: 1500ms
destinations:
  - name: orders
    hosts: ["orders", "orders.default.svc.cluster.local"]
    audience: https://orders.example
  - name: admin
    hosts: ["orders:9000", "*.svc.local:8443"]
    audience: https://admin.example
  - name: wild
    hosts: ["*.svc.local"]
    audience: https://wild.example
  - name: v6
    hosts: ["[::1]:8080"]
    audience: https://v6.example
"#,
        )
        .expect("config")
    }

    fn options(api: Api) -> Options {
        Options::new(&config(), api, None, None, DEFAULT_LISTEN.parse().expect("addr")).expect("options")
    }

    fn vhost<'a>(doc: &'a Value, name: &str) -> &'a Value {
        doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            ["virtual_hosts"]
            .as_array()
            .expect("virtual hosts")
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no virtual host {name}"))
    }

    fn named(route: &Value) -> Option<&str> {
        let per_filter = route.get("typed_per_filter_config")?;
        per_filter[EXT_AUTHZ]["check_settings"]["context_extensions"][CONTEXT_KEY]
            .as_str()
            .or_else(|| per_filter[EXT_PROC]["overrides"]["grpc_initial_metadata"][0]["value"].as_str())
    }

    #[test]
    fn every_destination_host_gets_a_route_naming_it() {
        for api in [Api::ExtAuthz, Api::ExtProc] {
            let doc = bootstrap(&config(), &options(api)).expect("bootstrap");
            let orders = vhost(&doc, "orders");
            assert_eq!(orders["domains"], json!(["orders", "orders."]));
            let routes = orders["routes"].as_array().expect("routes");
            assert_eq!(routes.len(), 3, "{routes:?}");
            assert_eq!(
                routes[0]["match"]["headers"][0]["string_match"]["safe_regex"]["regex"],
                r"^(?i)orders\.?:9000$"
            );
            assert_eq!(named(&routes[0]), Some("admin"));
            assert_eq!(named(&routes[1]), Some("orders"));
            assert_eq!(
                named(&routes[2]),
                None,
                "the rest of the virtual host is Baton's to judge"
            );
            assert!(routes[2]["match"].get("headers").is_none());

            let wild = vhost(&doc, "*.svc.local")["routes"].as_array().expect("routes").clone();
            assert_eq!(
                wild[0]["match"]["headers"][0]["string_match"]["safe_regex"]["regex"],
                r"^(?i)([a-z0-9_-]+\.)+svc\.local\.?:8443$"
            );
            assert_eq!(
                (named(&wild[0]), named(&wild[1]), named(&wild[2])),
                (Some("admin"), Some("wild"), None)
            );

            // A host only claimed with a port: other ports go unnamed, for Baton to judge.
            let v6 = vhost(&doc, "[::1]")["routes"].as_array().expect("routes").clone();
            assert_eq!((named(&v6[0]), named(&v6[1])), (Some("v6"), None));
            assert_eq!(
                v6[0]["match"]["headers"][0]["string_match"]["safe_regex"]["regex"],
                r"^(?i)\[\:\:1\]:8080$"
            );
            let other = vhost(&doc, "other");
            assert_eq!(other["domains"], json!(["*"]));
            assert_eq!(named(&other["routes"][0]), None);

            let hcm = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
            assert_eq!(hcm["normalize_path"], true);
            assert_eq!(hcm["merge_slashes"], true);
            assert_eq!(hcm["path_with_escaped_slashes_action"], "REJECT_REQUEST");
        }
    }

    #[test]
    fn the_filter_fails_closed_after_batons_own_timeout() {
        let doc = bootstrap(&config(), &options(Api::ExtAuthz)).expect("bootstrap");
        let hcm = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let filter = &hcm["http_filters"][0]["typed_config"];
        assert_eq!(filter["failure_mode_allow"], false);
        assert_eq!(filter["grpc_service"]["timeout"], "2.500s");
        let names: Vec<&str> = hcm["http_filters"]
            .as_array()
            .expect("filters")
            .iter()
            .filter_map(|f| f["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                EXT_AUTHZ,
                "envoy.filters.http.dynamic_forward_proxy",
                "envoy.filters.http.router"
            ]
        );
        // 0.0.0.0 is reached on loopback.
        let baton = &doc["static_resources"]["clusters"][0];
        assert_eq!(
            baton["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
            json!({ "address": "127.0.0.1", "port_value": 9191 })
        );

        let doc = bootstrap(&config(), &options(Api::ExtProc)).expect("bootstrap");
        let filter = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
            [0]["typed_config"];
        assert_eq!(filter["message_timeout"], "2.500s");
        assert_eq!(filter["failure_mode_allow"], false);
        assert_eq!(filter["processing_mode"]["request_header_mode"], "SEND");
        assert_eq!(filter["processing_mode"]["response_header_mode"], "SKIP");
        // A delegated stream may ask for its response headers, and for nothing else.
        assert_eq!(filter["allow_mode_override"], true);
        let mode = crate::ext_proc::delegated_mode();
        let allowed = &filter["allowed_override_modes"];
        assert_eq!(allowed.as_array().map(Vec::len), Some(1));
        assert_eq!(
            allowed[0],
            json!({
                "request_header_mode": mode.request_header_mode().as_str_name(),
                "response_header_mode": mode.response_header_mode().as_str_name(),
                "request_body_mode": mode.request_body_mode().as_str_name(),
                "response_body_mode": mode.response_body_mode().as_str_name(),
                "request_trailer_mode": mode.request_trailer_mode().as_str_name(),
                "response_trailer_mode": mode.response_trailer_mode().as_str_name(),
            })
        );
        // Which is the configured mode with the response headers sent.
        let mut configured = filter["processing_mode"].clone();
        configured["response_header_mode"] = json!("SEND");
        assert_eq!(allowed[0], configured);
    }

    /// Envoy sends only what Baton reads: these headers, no body, no peer certificate (issue 15).
    #[test]
    fn envoy_is_asked_for_what_baton_reads_only() {
        let exact = |matcher: &Value| -> Vec<String> {
            matcher["patterns"]
                .as_array()
                .expect("patterns")
                .iter()
                .map(|p| p["exact"].as_str().expect("exact").to_owned())
                .collect()
        };
        let doc = bootstrap(&config(), &options(Api::ExtAuthz)).expect("bootstrap");
        let filter = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
            [0]["typed_config"];
        assert_eq!(
            exact(&filter["allowed_headers"]),
            ["authorization", "traceparent", "tracestate"]
        );
        for absent in ["with_request_body", "include_peer_certificate", "include_tls_session"] {
            assert!(filter.get(absent).is_none(), "{absent}");
        }

        let doc = bootstrap(&config(), &options(Api::ExtProc)).expect("bootstrap");
        let filter = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
            [0]["typed_config"];
        assert_eq!(
            exact(&filter["forward_rules"]["allowed_headers"]),
            [
                ":authority",
                ":method",
                ":path",
                ":status",
                "authorization",
                "host",
                "traceparent",
                "tracestate",
                "www-authenticate"
            ]
        );
        assert_eq!(filter["processing_mode"]["request_body_mode"], "NONE");
    }

    #[test]
    fn a_unix_socket_wins_over_tcp() {
        let options = Options::new(
            &config(),
            Api::ExtProc,
            Some("/run/baton/baton.sock".into()),
            None,
            DEFAULT_LISTEN.parse().expect("addr"),
        )
        .expect("options");
        let doc = fragment(&config(), &options).expect("fragment");
        assert_eq!(
            doc["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"],
            json!({ "pipe": { "path": "/run/baton/baton.sock" } })
        );
        assert_eq!(doc["http_filters"][0]["name"], EXT_PROC);
        assert_eq!(
            doc["destinations"]["wild"]["typed_per_filter_config"][EXT_PROC]["overrides"]["grpc_initial_metadata"],
            json!([{ "key": "baton-destination", "value": "wild" }])
        );
    }

    #[test]
    fn port_zero_cannot_be_reached() {
        let config = Config::from_yaml(
            "listen: { grpc: 127.0.0.1:0 }\ntoken_service: { token_endpoint: http://x/token, client_id: c, auth: { method: none } }\n",
        )
        .expect("config");
        let err = Options::new(
            &config,
            Api::ExtAuthz,
            None,
            None,
            DEFAULT_LISTEN.parse().expect("addr"),
        )
        .expect_err("port 0");
        assert!(err.contains("port 0"), "{err}");
    }

    #[test]
    fn yaml_keeps_the_documents_order_and_reads_back() {
        let doc = bootstrap(&config(), &options(Api::ExtProc)).expect("bootstrap");
        let yaml = to_yaml(&doc).expect("yaml");
        assert!(yaml.starts_with("static_resources:"), "{yaml}");
        let back: Value = serde_saphyr::from_str(&yaml).expect("parse back");
        assert_eq!(back, doc);
    }

    /// ext_authz over HTTP: `http_service` to the `baton_http` cluster (HTTP/1.1), the headers
    /// Baton reads, its answer's headers allowed through, failing closed; no route names anything.
    #[test]
    fn ext_authz_over_http_asks_batons_http_listener() {
        let yaml = |listen: &str, extra: &str| {
            Config::from_yaml(&format!(
                "listen: {{ {listen} }}\n{extra}token_service: {{ token_endpoint: http://127.0.0.1:9400/token, client_id: c, auth: {{ method: none }}, timeout: 1500ms }}\n\
                 destinations:\n  - {{ name: orders, hosts: [orders], audience: a }}\n"
            ))
            .expect("config")
        };
        let listen = DEFAULT_LISTEN.parse().expect("addr");
        let config = yaml(
            "grpc: 127.0.0.1:9191, authz_http: 0.0.0.0:9192, insecure_plaintext: true",
            "",
        );
        let options = Options::new(&config, Api::ExtAuthzHttp, None, None, listen).expect("options");
        let doc = bootstrap(&config, &options).expect("bootstrap");
        let hcm = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let filter = &hcm["http_filters"][0];
        assert_eq!(filter["name"], EXT_AUTHZ);
        let filter = &filter["typed_config"];
        assert_eq!(filter["failure_mode_allow"], false);
        assert!(filter.get("grpc_service").is_none());
        assert_eq!(
            filter["http_service"]["server_uri"],
            json!({ "uri": "http://baton", "cluster": BATON_HTTP_CLUSTER, "timeout": "2.500s" })
        );
        let response = &filter["http_service"]["authorization_response"];
        assert_eq!(
            response["allowed_upstream_headers"],
            crate::reads::matcher(&["authorization", "dpop"])
        );
        assert_eq!(
            response["allowed_client_headers"],
            crate::reads::matcher(&["content-type", "retry-after", "www-authenticate"])
        );
        // Baton sends no metadata headers (`telemetry.dynamic_metadata` off): nothing to match.
        assert!(response.get("dynamic_metadata_from_headers").is_none(), "{response}");
        let on = yaml("authz_http: 127.0.0.1:9192", "telemetry: { dynamic_metadata: true }\n");
        let options_on = Options::new(&on, Api::ExtAuthzHttp, None, None, listen).expect("options");
        let doc_on = bootstrap(&on, &options_on).expect("bootstrap");
        assert_eq!(
            doc_on["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
                [0]["typed_config"]["http_service"]["authorization_response"]["dynamic_metadata_from_headers"],
            crate::reads::matcher(&crate::respond::METADATA_KEYS)
        );
        // And `dpop`, which Baton has removed only when it sees it.
        assert_eq!(
            filter["allowed_headers"],
            crate::reads::matcher(&["authorization", "dpop", "traceparent", "tracestate"])
        );
        for absent in ["with_request_body", "include_peer_certificate", "include_tls_session"] {
            assert!(filter.get(absent).is_none(), "{absent}");
        }
        let cluster = &doc["static_resources"]["clusters"][0];
        assert_eq!(cluster["name"], BATON_HTTP_CLUSTER);
        let protocol =
            &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(protocol["explicit_http_config"], json!({ "http_protocol_options": {} }));
        assert!(HTTP_IDLE_TIMEOUT < crate::authz_http::HEADER_READ_TIMEOUT);
        assert_eq!(
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
            json!({ "address": "127.0.0.1", "port_value": 9192 })
        );
        // No route names a destination: Baton matches the host.
        assert_eq!(named(&vhost(&doc, "orders")["routes"][0]), None);

        // The Unix socket wins; without either listener, or with --tls-*, it is refused.
        let config = yaml("authz_http: 127.0.0.1:9192, authz_http_uds: /run/baton/http.sock", "");
        let options = Options::new(&config, Api::ExtAuthzHttp, None, None, listen).expect("options");
        assert_eq!(options.baton, BatonAddress::Uds("/run/baton/http.sock".into()));
        let config = yaml("grpc: 127.0.0.1:9191", "");
        let err = Options::new(&config, Api::ExtAuthzHttp, None, None, listen).expect_err("no listener");
        assert!(err.contains("listen.authz_http"), "{err}");
        let tls = ClientTls {
            cert_file: "c".into(),
            key_file: "k".into(),
            ca_file: "a".into(),
            server_name: "baton".into(),
        };
        let config = yaml("authz_http: 127.0.0.1:9192", "");
        let err = Options::new(&config, Api::ExtAuthzHttp, None, Some(tls), listen).expect_err("tls");
        assert!(err.contains("--tls-"), "{err}");
    }

    /// What HTTP cannot carry is refused, naming each destination: a route naming a host-less
    /// destination, and a policy on the caller without `workload_identity`.
    #[test]
    fn ext_authz_over_http_refuses_what_it_cannot_carry() {
        let yaml = |extra: &str, destinations: &str| {
            Config::from_yaml(&format!(
                "listen: {{ authz_http: 127.0.0.1:9192 }}\n{extra}token_service: {{ token_endpoint: http://127.0.0.1:9400/token, client_id: c, auth: {{ method: none }} }}\ndestinations:\n{destinations}"
            ))
            .expect("config")
        };
        let listen = DEFAULT_LISTEN.parse().expect("addr");
        let destinations = "  - { name: routed, audience: a }\n  - { name: sourced, hosts: [s], audience: b, policy: { allowed_sources: [\"spiffe://a/*\"] } }\n  - { name: fine, hosts: [f], audience: c }\n";
        let config = yaml("", destinations);
        let options = Options::new(&config, Api::ExtAuthzHttp, None, None, listen).expect("options");
        for err in [
            bootstrap(&config, &options).expect_err("refused"),
            fragment(&config, &options).expect_err("refused"),
        ] {
            assert!(err.contains("`routed` has no hosts"), "{err}");
            assert!(err.contains("`sourced`") && err.contains("workload.identity"), "{err}");
            assert!(!err.contains("`fine`"), "{err}");
        }
        // workload_identity stands for the caller; ext_authz over gRPC takes both.
        let config = yaml(
            "workload: { identity: spiffe://a/web }\n",
            "  - { name: sourced, hosts: [s], audience: b, policy: { allowed_sources: [\"spiffe://a/*\"] } }\n",
        );
        let options = Options::new(&config, Api::ExtAuthzHttp, None, None, listen).expect("options");
        assert!(bootstrap(&config, &options).is_ok());
    }

    // === Envoy's routes and Baton's matching agree ===

    /// What the generated routes make Envoy name for an `:authority`: its virtual-host choice (port
    /// cut at the last `:` unless a `]` follows, lower-cased; exact domain, then the longest `*.`
    /// suffix, then `*`), then the first route whose `:authority` regexes all match.
    fn envoy_names(doc: &Value, authority: &str) -> Option<String> {
        let route_config =
            &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"];
        assert_eq!(route_config["ignore_port_in_host_matching"], true);
        let mut host = authority;
        if let Some(colon) = host.rfind(':')
            && host.rfind(']').is_none_or(|bracket| bracket < colon)
        {
            host = &host[..colon];
        }
        let host = host.to_ascii_lowercase();
        let vhosts = route_config["virtual_hosts"].as_array().expect("virtual hosts");
        let domains = |v: &&Value| -> Vec<String> {
            v["domains"]
                .as_array()
                .expect("domains")
                .iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        };
        let vhost = vhosts
            .iter()
            .find(|v| domains(v).contains(&host))
            .or_else(|| {
                vhosts
                    .iter()
                    .filter_map(|v| {
                        let suffix = domains(&v)
                            .into_iter()
                            .find_map(|d| d.strip_prefix('*').map(str::to_owned))?;
                        (!suffix.is_empty() && host.len() > suffix.len() && host.ends_with(&suffix))
                            .then_some((suffix.len(), v))
                    })
                    .max_by_key(|(len, _)| *len)
                    .map(|(_, v)| v)
            })
            .or_else(|| vhosts.iter().find(|v| domains(v) == ["*"]))?;
        let route = vhost["routes"].as_array().expect("routes").iter().find(|r| {
            r["match"]["headers"].as_array().is_none_or(|headers| {
                headers.iter().all(|h| {
                    assert_eq!(h["name"], ":authority");
                    let re = h["string_match"]["safe_regex"]["regex"].as_str().expect("a regex");
                    regex::Regex::new(re).expect("regex").is_match(authority)
                })
            })
        })?;
        named(route).map(str::to_owned)
    }

    fn agreement_config() -> Config {
        Config::from_yaml(
            r#"
listen: { grpc: 127.0.0.1:9191 }
token_service: { token_endpoint: http://127.0.0.1:9400/token, client_id: c, auth: { method: none } }
destinations:
  - { name: orders, hosts: ["orders.local", "orders", "api.orders.example"], audience: a }
  - { name: admin, hosts: ["orders.local:8443", "orders:9000", "*.svc.local:8443"], audience: b }
  - { name: wild, hosts: ["*.svc.local", "*.orders.example:8443"], audience: c }
  - { name: deep, hosts: ["*.a.svc.local"], audience: d }
  - { name: exact, hosts: ["x.svc.local"], audience: e }
  - { name: v6, hosts: ["[::1]:8080", "[2001:db8::1]"], audience: f }
"#,
        )
        .expect("config")
    }

    /// Baton's destination for an `:authority`, as `Authz::decide` finds it.
    fn baton_names(routes: &baton_decide::route::Routes<String>, authority: &str) -> Option<String> {
        let authority = canonical::authority(authority).ok()?;
        routes.by_authority(&authority).map(|d| (**d).clone())
    }

    fn agreement() -> (Value, baton_decide::route::Routes<String>) {
        let config = agreement_config();
        let doc = bootstrap(&config, &options(Api::ExtAuthz)).expect("bootstrap");
        let routes = baton_decide::route::Routes::new(
            config
                .decision
                .destinations
                .iter()
                .map(|d| (d.name.clone(), d.hosts.clone(), d.name.clone())),
        );
        (doc, routes)
    }

    #[test]
    fn envoy_names_a_destination_only_where_baton_matches_it() {
        let (doc, routes) = agreement();
        // Issue 12's examples, and their neighbours: Envoy cuts the port at the last `:`.
        for (authority, envoy) in [
            ("orders.local", Some("orders")),
            ("ORDERS.local.:80", Some("orders")),
            ("orders.local:8443", Some("admin")),
            ("orders.local.:8443", Some("admin")),
            ("orders.local:08443", None),
            ("orders.local:008443", None),
            ("orders.local:abc", None),
            ("orders.local:8080.evil.example", None),
            ("api.orders.example:evil.example", None),
            ("orders.local..", None),
            ("orders.local:0", None),
            ("orders.local:65536", None),
            ("a.svc.local:8443", Some("admin")),
            ("x.svc.local:8443", Some("exact")),
            ("b.a.svc.local:8443", Some("deep")),
            ("b.svc.local:1", Some("wild")),
            ("[::1]:8080", Some("v6")),
            ("[::1]:08080", None),
            ("[2001:DB8::1]:443", Some("v6")),
        ] {
            assert_eq!(envoy_names(&doc, authority).as_deref(), envoy, "{authority}");
            if let Some(d) = envoy {
                assert_eq!(baton_names(&routes, authority).as_deref(), Some(d), "{authority}");
            }
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn authority() -> impl Strategy<Value = String> {
            let label = prop::sample::select(vec![
                "orders", "ORDERS", "local", "svc", "a", "x", "api", "example", "evil", "b", "", "-", "_", "0",
            ]);
            let host = prop::collection::vec(label, 1..5).prop_map(|l| l.join("."));
            let v6 = prop::sample::select(vec![
                "[::1]",
                "[0::1]",
                "[::1%25lo]",
                "[2001:db8::1]",
                "[::1",
                "::1",
                "[]",
            ])
            .prop_map(str::to_owned);
            let dots = prop::sample::select(vec!["", ".", "..", ". "]);
            let port = prop::sample::select(vec![
                "",
                ":",
                ":8443",
                ":08443",
                ":9000",
                ":8080",
                ":0",
                ":1",
                ":65535",
                ":65536",
                ":99999",
                ":abc",
                ":8080.evil.example",
                ":evil.example",
                ":443:443",
                ": 80",
                ":+80",
            ]);
            let prefix = prop::sample::select(vec!["", "", "", "user@", " ", "*."]);
            (prefix, prop_oneof![4 => host, 1 => v6], dots, port).prop_map(|(p, h, d, port)| format!("{p}{h}{d}{port}"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// Whenever the generated routes name destination D, Baton's matching gives D too.
            #[test]
            fn generated_routes_agree_with_batons_matching(authority in authority()) {
                let (doc, routes) = agreement();
                if let Some(envoy) = envoy_names(&doc, &authority) {
                    prop_assert_eq!(Some(envoy), baton_names(&routes, &authority), "{}", authority);
                }
            }
        }
    }
}
