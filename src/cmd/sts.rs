//! `baton sts`: the development token service, and `baton sts mint` to ask a running one for a
//! user token.

use std::path::PathBuf;
use std::process::ExitCode;

use baton_sts::RawStsConfig;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// YAML configuration of the service.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen address (overrides the file); port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Mint a user token from a running `baton sts` and print it.
    Mint(Mint),
}

#[derive(clap::Args)]
struct Mint {
    /// Base URL of the running service.
    #[arg(long, default_value = "http://127.0.0.1:9400")]
    url: String,
    /// The user the token is for (`sub`).
    #[arg(long)]
    sub: String,
    /// The audience (`aud`); default `baton-sts`.
    #[arg(long)]
    aud: Option<String>,
    /// Space-separated scopes (`scope`).
    #[arg(long)]
    scope: Option<String>,
    /// Lifetime in seconds (0 or negative mints an expired token).
    #[arg(long, allow_hyphen_values = true)]
    expires_in: Option<i64>,
    /// The workload allowed to act for this user (RFC 8693 `may_act.sub`).
    #[arg(long)]
    may_act: Option<String>,
}

impl Args {
    pub(crate) async fn run(self) -> ExitCode {
        match self.command {
            Some(Command::Mint(mint)) => mint.run().await,
            None => serve(self.config, self.listen).await,
        }
    }
}

impl Mint {
    async fn run(self) -> ExitCode {
        let mut form = vec![("sub", self.sub)];
        form.extend(self.aud.map(|v| ("aud", v)));
        form.extend(self.scope.map(|v| ("scope", v)));
        form.extend(self.expires_in.map(|v| ("expires_in", v.to_string())));
        form.extend(self.may_act.map(|v| ("may_act", v)));
        match baton_sts::mint_remote(&self.url, &form).await {
            Ok(token) => {
                crate::print(&format!("{token}\n"));
                ExitCode::SUCCESS
            }
            Err(e) => crate::fail(e),
        }
    }
}

async fn serve(config: Option<PathBuf>, listen: Option<String>) -> ExitCode {
    let mut raw: RawStsConfig = match &config {
        // Read with the configuration file's size bound, like Baton's own.
        Some(path) => match baton_core::files::read_file(path)
            .map_err(|e| e.to_string())
            .and_then(|text| baton_core::files::parse_yaml(&text).map_err(|e| e.to_string()))
        {
            Ok(raw) => raw,
            Err(e) => return crate::fail(format!("{}: {e}", path.display())),
        },
        None => RawStsConfig::default(),
    };
    if listen.is_some() {
        raw.listen = listen;
    }
    let config = match raw.validate() {
        Ok(c) => c,
        Err(errors) => return crate::fail(format!("sts configuration:\n  {}", errors.join("\n  "))),
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => return crate::fail(format!("cannot listen on {}: {e}", config.listen)),
    };
    tracing::warn!("baton sts is a development token service: do not use it in production");
    let served = baton_sts::serve(config, listener, crate::shutdown_signal(), |endpoints| {
        // One JSON line on stdout, so scripts and tests learn the real port.
        crate::print(&format!("{}\n", serde_json::to_string(endpoints).unwrap_or_default()));
    })
    .await;
    served.map_or_else(|e| crate::fail(e.to_string()), |()| ExitCode::SUCCESS)
}
