//! The `baton` command: `run` (the sidecar), `check-config`, `envoy-config` (the Envoy
//! configuration that points at Baton), `inject` (the Kubernetes admission webhook) and `sts` (the
//! development token service). Parsing arguments and wiring signals only; everything else lives in
//! the library.

use std::path::PathBuf;
use std::process::ExitCode;

use baton::envoy_config;
use baton::file::Config;
use baton::sts::{self, RawStsConfig};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Transparent user-identity delegation for Envoy (RFC 8693 token exchange)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Envoy's ext_authz Check, ext_proc Process and the DelegationBroker API.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and print every error; exit 1 if there is one.
    CheckConfig { file: PathBuf },
    /// The Kubernetes mutating admission webhook that adds Baton and Envoy to annotated pods.
    Inject {
        /// YAML configuration of the webhook (images, resources, TLS files).
        #[arg(long, short)]
        config: PathBuf,
        /// Listen address (overrides the file); port 0 picks a free port.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Print the Envoy configuration of the sidecar's outbound listener, pointed at this Baton.
    EnvoyConfig {
        /// Baton's configuration file (validated as `run` would).
        #[arg(long, short)]
        config: PathBuf,
        /// The Envoy filter that asks Baton.
        #[arg(long, value_enum, default_value_t = ApiArg::ExtAuthz)]
        api: ApiArg,
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
    },
    /// The development token service (RFC 8693). For development and tests, not production.
    Sts {
        #[command(subcommand)]
        command: Option<StsCommand>,
        /// YAML configuration of the service.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address (overrides the file); port 0 picks a free port.
        #[arg(long)]
        listen: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ApiArg {
    #[value(name = "ext_authz")]
    ExtAuthz,
    #[value(name = "ext_proc")]
    ExtProc,
}

#[derive(Subcommand)]
enum StsCommand {
    /// Mint a user token from a running `baton sts` and print it.
    Mint {
        /// Base URL of the running service.
        #[arg(long, default_value = "http://127.0.0.1:9400")]
        url: String,
        #[arg(long)]
        sub: String,
        #[arg(long)]
        aud: Option<String>,
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime in seconds (0 or negative mints an expired token).
        #[arg(long, allow_hyphen_values = true)]
        expires_in: Option<i64>,
        /// The workload allowed to act for this user (RFC 8693 `may_act.sub`).
        #[arg(long)]
        may_act: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => match Config::from_file(&config) {
                Ok(parsed) => baton::app::run(config, parsed, shutdown_signal())
                    .await
                    .map_or_else(fail, |()| ExitCode::SUCCESS),
                Err(e) => fail(e.to_string()),
            },
            Command::CheckConfig { file } => check_config(&file),
            Command::Inject { config, listen } => run_inject(&config, listen).await,
            Command::EnvoyConfig {
                config,
                api,
                uds,
                tls_cert,
                tls_key,
                tls_ca,
                tls_server_name,
                listen,
                fragment,
            } => {
                // clap enforces that the four come together.
                let tls = match (tls_cert, tls_key, tls_ca, tls_server_name) {
                    (Some(cert_file), Some(key_file), Some(ca_file), Some(server_name)) => {
                        Some(envoy_config::ClientTls {
                            cert_file,
                            key_file,
                            ca_file,
                            server_name,
                        })
                    }
                    _ => None,
                };
                print_envoy_config(&config, api, uds, tls, listen, fragment)
            }
            Command::Sts {
                command:
                    Some(StsCommand::Mint {
                        url,
                        sub,
                        aud,
                        scope,
                        expires_in,
                        may_act,
                    }),
                ..
            } => {
                let mut form = vec![("sub", sub)];
                form.extend(aud.map(|v| ("aud", v)));
                form.extend(scope.map(|v| ("scope", v)));
                form.extend(expires_in.map(|v| ("expires_in", v.to_string())));
                form.extend(may_act.map(|v| ("may_act", v)));
                match sts::mint_remote(&url, &form).await {
                    Ok(token) => {
                        #[allow(clippy::print_stdout)]
                        {
                            println!("{token}");
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            }
            Command::Sts {
                command: None,
                config,
                listen,
            } => run_sts(config, listen).await,
        }
    })
}

fn check_config(file: &std::path::Path) -> ExitCode {
    // The listener's TLS files are read as `run` would read them.
    let checked = Config::from_file(file)
        .map_err(|e| e.to_string())
        .and_then(|config| match &config.listen.grpc_tls {
            Some(tls) => baton::tls::server_config(tls)
                .map(|_| config)
                .map_err(|e| format!("listen.grpc_tls: {e}\n")),
            None => Ok(config),
        });
    match checked {
        Ok(config) => {
            #[allow(clippy::print_stdout)]
            {
                let services: Vec<String> = config
                    .decision
                    .token_services
                    .iter()
                    .map(|ts| {
                        let breaker = if ts.circuit_breaker.is_none() {
                            ", circuit breaker off"
                        } else {
                            ""
                        };
                        format!(
                            "`{}` ({}, client `{}`{breaker})",
                            ts.name,
                            ts.profile.as_str(),
                            ts.client_id
                        )
                    })
                    .collect();
                println!(
                    "{}: ok ({} destination{}, token service{} {})",
                    file.display(),
                    config.decision.destinations.len(),
                    if config.decision.destinations.len() == 1 {
                        ""
                    } else {
                        "s"
                    },
                    if services.len() == 1 { "" } else { "s" },
                    services.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

async fn run_inject(path: &std::path::Path, listen: Option<String>) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return fail(format!("{}: cannot read: {e}", path.display())),
    };
    let mut raw: baton::inject::RawInjectConfig = match serde_saphyr::from_str(&text) {
        Ok(raw) => raw,
        Err(e) => return fail(format!("{}: {e}", path.display())),
    };
    if listen.is_some() {
        raw.listen = listen;
    }
    let config = match raw.validate() {
        Ok(config) => config,
        Err(e) => return fail(format!("{}: {e}", path.display())),
    };
    let served = baton::inject::serve(config, shutdown_signal(), |addr| {
        // One JSON line on stdout, so scripts and tests learn the real port.
        #[allow(clippy::print_stdout)]
        {
            println!("{}", serde_json::json!({ "ready": true, "listen": addr.to_string() }));
        }
    })
    .await;
    served.map_or_else(|e| fail(e.to_string()), |()| ExitCode::SUCCESS)
}

fn print_envoy_config(
    file: &std::path::Path,
    api: ApiArg,
    uds: Option<PathBuf>,
    tls: Option<envoy_config::ClientTls>,
    listen: std::net::SocketAddr,
    fragment: bool,
) -> ExitCode {
    let config = match Config::from_file(file) {
        Ok(config) => config,
        Err(e) => {
            eprint!("{}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let api = match api {
        ApiArg::ExtAuthz => envoy_config::Api::ExtAuthz,
        ApiArg::ExtProc => envoy_config::Api::ExtProc,
    };
    let yaml = envoy_config::Options::new(&config, api, uds, tls, listen)
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
            #[allow(clippy::print_stdout)]
            {
                print!("{yaml}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn run_sts(config: Option<PathBuf>, listen: Option<String>) -> ExitCode {
    let mut raw: RawStsConfig = match &config {
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_saphyr::from_str(&text).map_err(|e| e.to_string()))
        {
            Ok(raw) => raw,
            Err(e) => return fail(format!("{}: {e}", path.display())),
        },
        None => RawStsConfig::default(),
    };
    if listen.is_some() {
        raw.listen = listen;
    }
    let config = match raw.validate() {
        Ok(c) => c,
        Err(errors) => return fail(format!("sts configuration:\n  {}", errors.join("\n  "))),
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot listen on {}: {e}", config.listen)),
    };
    tracing::warn!("baton sts is a development token service: do not use it in production");
    let served = sts::serve(config, listener, shutdown_signal(), |endpoints| {
        // One JSON line on stdout, so scripts and tests learn the real port.
        #[allow(clippy::print_stdout)]
        {
            println!("{}", serde_json::to_string(endpoints).unwrap_or_default());
        }
    })
    .await;
    served.map_or_else(|e| fail(e.to_string()), |()| ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BATON_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal, never into a log file or collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if std::env::var("BATON_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("baton: {message}");
    ExitCode::FAILURE
}
