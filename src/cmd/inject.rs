//! `baton inject`: the Kubernetes mutating admission webhook.

use std::path::PathBuf;
use std::process::ExitCode;

use baton_inject::InjectConfig;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// YAML configuration of the webhook (images, resources, TLS files).
    #[arg(long, short)]
    config: PathBuf,
    /// Listen address (overrides the file); port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
}

impl Args {
    pub(crate) async fn run(self) -> ExitCode {
        // Read with the configuration file's size bound, like Baton's own.
        let config = match InjectConfig::from_file(&self.config, self.listen) {
            Ok(config) => config,
            Err(e) => return crate::fail(format!("{}: {e}", self.config.display())),
        };
        let served = baton_inject::serve(config, crate::shutdown_signal(), |addr| {
            // One JSON line on stdout, so scripts and tests learn the real port.
            crate::print(&format!(
                "{}\n",
                serde_json::json!({ "ready": true, "listen": addr.to_string() })
            ));
        })
        .await;
        served.map_or_else(|e| crate::fail(e.to_string()), |()| ExitCode::SUCCESS)
    }
}
