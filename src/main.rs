//! The `baton` command: `run` (the sidecar), `check-config`, `envoy-config` (the Envoy
//! configuration that points at Baton), `inject` (the Kubernetes admission webhook) and `sts` (the
//! development token service), one file each under `cmd/`. Parsing arguments and wiring signals
//! only; everything else lives in the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

// The static build (musl, the container image's) allocates through mimalloc: with musl's own
// allocator it answered fewer than half as many Checks a second as the glibc build (README,
// "Container image"). Other builds keep the system allocator.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Run(cmd::run::Args),
    /// Validate a configuration file and print every error; exit 1 if there is one.
    CheckConfig(cmd::check_config::Args),
    /// The Kubernetes mutating admission webhook that adds Baton and Envoy to annotated pods.
    Inject(cmd::inject::Args),
    /// Print the Envoy configuration of the sidecar's outbound listener, pointed at this Baton.
    EnvoyConfig(cmd::envoy_config::Args),
    /// The development token service (RFC 8693). For development and tests, not production.
    Sts(cmd::sts::Args),
    /// Policy tests: `baton policy test FILE...` runs request cases against the real decision, offline.
    Policy(cmd::policy::Args),
    /// Explain what Baton would decide for one request, and why; sends nothing.
    Explain(cmd::explain::Args),
    /// Revoke a subject, a session, a deferred job or everything at a running Baton (`POST /revoke` on its admin listener).
    Revoke(cmd::revoke::Args),
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
            Command::Run(args) => args.run().await,
            Command::CheckConfig(args) => args.run(),
            Command::Inject(args) => args.run().await,
            Command::EnvoyConfig(args) => args.run(),
            Command::Sts(args) => args.run().await,
            Command::Policy(args) => args.run(),
            Command::Explain(args) => args.run(),
            Command::Revoke(args) => args.run().await,
        }
    })
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

/// What a command prints for scripts and people: stdout, the one place the binary writes to it.
fn print(text: &str) {
    #[allow(clippy::print_stdout)]
    {
        print!("{text}");
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("baton: {message}");
    ExitCode::FAILURE
}
