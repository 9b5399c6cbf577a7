//! `baton explain`: what Baton would decide for one request, and why, without sending anything.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use baton_envoy::dry_run::{self, DryRun, Request};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Baton's configuration file (YAML), as `run --config` takes it.
    #[arg(long, short, value_name = "CONFIG")]
    config: PathBuf,
    /// The request's method.
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// The request's URL (`http://HOST[:PORT]/PATH?QUERY`), taken as written: the path is not
    /// normalized here, so you see what Baton makes of `..` or percent-encoding.
    #[arg(long, value_name = "URL", conflicts_with_all = ["host", "path"])]
    url: Option<String>,
    /// The request's Host (`:authority`), instead of --url.
    #[arg(long)]
    host: Option<String>,
    /// The request's path and query (`:path`), with --host. Default `/`.
    #[arg(long)]
    path: Option<String>,
    /// The destination the Envoy route names (`context_extensions["baton.destination"]`).
    #[arg(long, value_name = "NAME")]
    destination: Option<String>,
    /// A request header, `name: value` (repeatable). Not Authorization: give --claims.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The subject token's claims as a JSON object; without it the request has no Authorization
    /// header. No token is needed or read.
    #[arg(long, value_name = "JSON")]
    claims: Option<String>,
    /// The calling workload as Envoy reports it (`source.principal`, a SPIFFE ID).
    #[arg(long, value_name = "PRINCIPAL")]
    source: Option<String>,
    /// Print JSON (the explanation and what Envoy is told) instead of text.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub(crate) fn run(self) -> ExitCode {
        let request = match self.request() {
            Ok(request) => request,
            Err(e) => {
                eprintln!("baton: {e}");
                return ExitCode::from(2);
            }
        };
        let explained = DryRun::load(&self.config).and_then(|dry| Ok((dry.explain(&request)?, dry.notes)));
        match explained {
            Ok((explanation, notes)) => {
                if self.json {
                    let mut value = dry_run::to_json(&explanation);
                    value["not_checked_config"] = serde_json::json!(notes);
                    crate::print(&format!("{value:#}\n"));
                } else {
                    crate::print(&dry_run::to_text(&explanation, &notes));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("baton: {e}");
                ExitCode::from(2)
            }
        }
    }

    fn request(&self) -> Result<Request, String> {
        let (host, path) = match &self.url {
            Some(url) => split_url(url)?,
            None => (self.host.clone(), self.path.clone()),
        };
        let mut headers = BTreeMap::new();
        for h in &self.headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("--header `{h}`: expected `name: value`"))?;
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
        let claims = match &self.claims {
            None => None,
            Some(json) => match serde_json::from_str(json) {
                Ok(serde_json::Value::Object(map)) => Some(map),
                Ok(_) => return Err("--claims: expected a JSON object".into()),
                Err(e) => return Err(format!("--claims: not JSON: {e}")),
            },
        };
        Ok(Request {
            host,
            destination: self.destination.clone(),
            method: Some(self.method.clone()),
            path,
            headers,
            source: self.source.clone(),
            claims,
        })
    }
}

/// `http://host[:port]/path?query` into its authority and its request target, as written (a URL
/// parser would resolve `..` and re-encode, hiding what Baton is shown).
fn split_url(url: &str) -> Result<(Option<String>, Option<String>), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("--url `{url}`: expected http:// or https://"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    if authority.is_empty() {
        return Err(format!("--url `{url}`: no host"));
    }
    let target = match target {
        "" => "/".to_owned(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_owned(),
    };
    Ok((Some(authority.to_owned()), Some(target)))
}
