//! `baton check-config`: validate a configuration file as `run` would, print every error.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct Args {
    /// Baton's configuration file (YAML), as `run --config` takes it.
    #[arg(long, short, value_name = "CONFIG")]
    config: Option<PathBuf>,
    /// The same, given without `--config`.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

impl Args {
    pub(crate) fn run(self) -> ExitCode {
        // clap requires exactly one of the two.
        let Some(file) = self.config.or(self.file) else {
            return crate::fail("a configuration file is required".to_owned());
        };
        let file = &file;
        // The listener's TLS files are read as `run` would read them.
        let checked = super::load(file).and_then(|config| match &config.listen.grpc_tls {
            Some(tls) => baton_envoy::tls::server_config(tls)
                .map(|_| config)
                .map_err(|e| format!("{}: listen.grpc_tls: {e}\n", file.display())),
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
                        let home = ts
                            .chaining
                            .as_ref()
                            .map(|c| format!(", grant from `{}`", c.home))
                            .unwrap_or_default();
                        format!(
                            "`{}` ({}{home}, client `{}`{breaker})",
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
                eprint!("{e}");
                ExitCode::FAILURE
            }
        }
    }
}
