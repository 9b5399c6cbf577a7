//! `baton envoy-config`: the Envoy configuration (bootstrap or fragment) that points at this Baton.

use std::path::PathBuf;
use std::process::ExitCode;

use baton_envoy::envoy_config;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Baton's configuration file (validated as `run` would).
    #[arg(long, short)]
    config: PathBuf,
    /// The Envoy filter that asks Baton.
    #[arg(long, value_enum, default_value_t = Api::ExtAuthz)]
    api: Api,
    /// Reach Baton on this Unix socket (default: listen.grpc_uds, else listen.grpc; with
    /// ext_authz_http: listen.authz_http_uds, else listen.authz_http).
    #[arg(long)]
    uds: Option<PathBuf>,
    /// Envoy's client certificate (PEM) for Baton's mutual-TLS listener (listen.grpc_tls).
    #[arg(long, requires_all = ["tls_key", "tls_ca", "tls_server_name"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA bundle (PEM) Baton's server certificate must chain to.
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// The SAN Baton's certificate must carry (a DNS name, sent as SNI, or a spiffe:// ID).
    #[arg(long, requires = "tls_cert")]
    tls_server_name: Option<String>,
    /// The outbound listener the application sends its requests to.
    #[arg(long, default_value = envoy_config::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// Print only Baton's filter, its cluster and the per-route settings, for an existing Envoy.
    #[arg(long)]
    fragment: bool,
    /// `--api wasm`: the path of baton.wasm on the Envoy host.
    #[arg(long)]
    wasm_module: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Api {
    #[value(name = "ext_authz")]
    ExtAuthz,
    #[value(name = "ext_proc")]
    ExtProc,
    /// In-proxy mode: baton.wasm in Envoy, asking Baton on a miss.
    #[value(name = "wasm")]
    Wasm,
    /// ext_authz over HTTP/1.1 to Baton's listen.authz_http (or authz_http_uds).
    #[value(name = "ext_authz_http")]
    ExtAuthzHttp,
}

impl Args {
    pub(crate) fn run(self) -> ExitCode {
        let config = match super::load(&self.config) {
            Ok(config) => config,
            Err(e) => {
                eprint!("{e}");
                return ExitCode::FAILURE;
            }
        };
        // clap enforces that the four come together.
        let tls = match (self.tls_cert, self.tls_key, self.tls_ca, self.tls_server_name) {
            (Some(cert_file), Some(key_file), Some(ca_file), Some(server_name)) => Some(envoy_config::ClientTls {
                cert_file,
                key_file,
                ca_file,
                server_name,
            }),
            _ => None,
        };
        let api = match self.api {
            Api::ExtAuthz => envoy_config::Api::ExtAuthz,
            Api::ExtProc => envoy_config::Api::ExtProc,
            Api::Wasm => envoy_config::Api::Wasm,
            Api::ExtAuthzHttp => envoy_config::Api::ExtAuthzHttp,
        };
        let wasm_module = self.wasm_module;
        let config_path = self.config;
        let fragment = self.fragment;
        let yaml = envoy_config::Options::new(&config, api, self.uds, tls, self.listen)
            .and_then(|mut options| {
                if let (envoy_config::Api::Wasm, Some(module)) = (api, wasm_module) {
                    options.wasm = Some(wasm(&config, &config_path, module, options.timeout)?);
                }
                Ok(options)
            })
            .and_then(|options| {
                if fragment {
                    envoy_config::fragment(&config, &options)
                } else {
                    envoy_config::bootstrap(&config, &options)
                }
            })
            .and_then(|document| envoy_config::to_yaml(&document));
        match yaml {
            Ok(yaml) => {
                crate::print(&yaml);
                ExitCode::SUCCESS
            }
            Err(e) => crate::fail(e),
        }
    }
}

/// The module and its plugin configuration, from the file as written (its policies).
fn wasm(
    config: &baton_envoy::file::Config,
    path: &std::path::Path,
    module: PathBuf,
    timeout: std::time::Duration,
) -> Result<baton_envoy::wasm_plugin::Wasm, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let raw = baton_envoy::wasm_plugin::as_written(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let plugin = baton_envoy::wasm_plugin::plugin_config(&config.decision, &raw, envoy_config::BATON_CLUSTER, timeout)?;
    Ok(baton_envoy::wasm_plugin::Wasm { module, plugin })
}
