//! `baton revoke`: the operator's revocation signal, sent to a running Baton's `POST /revoke` on its
//! admin listener. Prints what Baton answered; never prints the admin secret.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("selector").required(true).args(["sub", "sid", "all", "destination", "job", "email"])))]
pub(crate) struct Args {
    /// Baton's admin listener, as `listen.admin` serves it (`http://127.0.0.1:9901`).
    #[arg(long, value_name = "URL")]
    admin: String,
    /// A file holding the admin secret (`revocation.admin_secret_file` of that Baton).
    #[arg(long, value_name = "FILE")]
    secret_file: PathBuf,
    /// The subject's issuer (`iss`); without it, `--sub` from every issuer is revoked.
    #[arg(long, value_name = "ISSUER", requires = "sub")]
    issuer: Option<String>,
    /// Revoke a subject (`sub`): every token of theirs issued until now is refused.
    #[arg(long, value_name = "SUB")]
    sub: Option<String>,
    /// Revoke one session (the `sid` claim) instead of a subject.
    #[arg(long, value_name = "SID")]
    sid: Option<String>,
    /// Revoke every token issued until now, whoever it names.
    #[arg(long)]
    all: bool,
    /// Purge the delegated tokens cached for this destination (its `name`): nothing is remembered
    /// and nobody is revoked; the next requests there exchange again.
    #[arg(long, value_name = "NAME")]
    destination: Option<String>,
    /// Revoke one deferred job: its grants are refused at Redeem (`job_revoked`).
    #[arg(long, value_name = "JOB")]
    job: Option<String>,
    /// Revoke a user by e-mail address: matched against the verified `email` claim of their
    /// tokens, case-insensitively (as a Shared Signals `email` subject is).
    #[arg(long, value_name = "ADDRESS")]
    email: Option<String>,
    /// How long to wait for Baton's answer, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300), value_name = "SECONDS")]
    timeout: u64,
}

/// The longest answer read from Baton.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

impl Args {
    pub(crate) async fn run(self) -> ExitCode {
        match self.send().await {
            Ok(answer) => {
                crate::print(&answer);
                ExitCode::SUCCESS
            }
            Err(e) => crate::fail(e),
        }
    }

    fn body(&self) -> serde_json::Value {
        if let Some(job) = &self.job {
            return serde_json::json!({ "job": job });
        }
        if let Some(email) = &self.email {
            return serde_json::json!({ "email": email });
        }
        match (&self.sub, &self.sid, &self.destination) {
            (Some(sub), _, _) => match &self.issuer {
                Some(issuer) => serde_json::json!({ "issuer": issuer, "sub": sub }),
                None => serde_json::json!({ "sub": sub }),
            },
            (None, Some(sid), _) => serde_json::json!({ "sid": sid }),
            (None, None, Some(name)) => serde_json::json!({ "destination": name }),
            (None, None, None) => serde_json::json!({ "all": true }),
        }
    }

    async fn send(&self) -> Result<String, String> {
        let mut errors = Default::default();
        let secret = baton_core::files::read_secret(&self.secret_file, "--secret-file", &mut errors);
        let Some(secret) = secret else {
            let why = errors.0.first().map_or("cannot be read", |e| e.message.as_str());
            return Err(format!("--secret-file: {why}"));
        };
        if !(self.admin.starts_with("http://") || self.admin.starts_with("https://")) {
            return Err(format!("--admin {}: must be an http:// or https:// URL", self.admin));
        }
        let url = format!("{}/revoke", self.admin.trim_end_matches('/'));
        let client = baton_core::http::http_client(Duration::from_secs(self.timeout))
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        let response = client
            .post(url.clone())
            .bearer_auth(secret.expose())
            .header("content-type", "application/json")
            .body(self.body().to_string())
            .send()
            .await
            .map_err(|e| format!("{url}: {}", baton_core::http::error_chain(&e)))?;
        let status = response.status();
        let body = baton_core::http::read_bounded(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| format!("{url}: reading the answer: {e}"))?;
        let text = String::from_utf8_lossy(&body).trim_end().to_owned();
        if status.is_success() {
            Ok(format!("{text}\n"))
        } else {
            Err(format!("{url} answered {status}: {text}"))
        }
    }
}
