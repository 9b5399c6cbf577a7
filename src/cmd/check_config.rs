//! `baton check-config`: validate a configuration file as `run` would, print every error.

use std::path::PathBuf;
use std::process::ExitCode;

use baton_envoy::file::Config;

#[derive(clap::Args)]
pub(crate) struct Args {
    file: PathBuf,
}

impl Args {
    pub(crate) fn run(self) -> ExitCode {
        let file = &self.file;
        // The listener's TLS files are read as `run` would read them.
        let checked =
            Config::from_file(file)
                .map_err(|e| e.to_string())
                .and_then(|config| match &config.listen.grpc_tls {
                    Some(tls) => baton_envoy::tls::server_config(tls)
                        .map(|_| config)
                        .map_err(|e| format!("listen.grpc_tls: {e}\n")),
                    None => Ok(config),
                });
        match checked {
            Ok(config) => {
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
                crate::print(&format!(
                    "{}: ok ({} destination{}, token service{} {})\n",
                    file.display(),
                    config.decision.destinations.len(),
                    if config.decision.destinations.len() == 1 {
                        ""
                    } else {
                        "s"
                    },
                    if services.len() == 1 { "" } else { "s" },
                    services.join(", ")
                ));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{}: {e}", file.display());
                ExitCode::FAILURE
            }
        }
    }
}
