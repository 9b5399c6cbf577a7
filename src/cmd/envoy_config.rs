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
    /// Reach Baton on this Unix socket (default: listen.grpc_uds, else listen.grpc).
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
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Api {
    #[value(name = "ext_authz")]
    ExtAuthz,
    #[value(name = "ext_proc")]
    ExtProc,
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
        };
        let fragment = self.fragment;
        let yaml = envoy_config::Options::new(&config, api, self.uds, tls, self.listen)
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
