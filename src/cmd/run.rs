//! `baton run`: the sidecar (or broker) until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Baton's configuration file (YAML); re-read when it changes, or on SIGHUP.
    #[arg(long, short)]
    config: PathBuf,
}

impl Args {
    pub(crate) async fn run(self) -> ExitCode {
        match super::load(&self.config) {
            Ok(parsed) => baton_envoy::app::run(self.config, parsed, crate::shutdown_signal())
                .await
                .map_or_else(crate::fail, |()| ExitCode::SUCCESS),
            Err(e) => crate::fail(e.trim_end().to_owned()),
        }
    }
}
