//! `baton run`: the sidecar (or broker) until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use baton_envoy::file::Config;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[arg(long, short)]
    config: PathBuf,
}

impl Args {
    pub(crate) async fn run(self) -> ExitCode {
        match Config::from_file(&self.config) {
            Ok(parsed) => baton_envoy::app::run(self.config, parsed, crate::shutdown_signal())
                .await
                .map_or_else(crate::fail, |()| ExitCode::SUCCESS),
            Err(e) => crate::fail(e.to_string()),
        }
    }
}
