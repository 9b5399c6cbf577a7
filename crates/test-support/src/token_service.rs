//! The token services the tests exchange with, as real processes: `baton sts`, panva's
//! oidc-provider and idpyoidc, with the faults only `baton sts` injects on purpose.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::http;
use crate::config::{BILLING, CLIENT_ID, CLIENT_SECRET, ORDERS};
use crate::scratch::Scratch;
use crate::{leaks, repo};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    BatonSts,
    OidcProvider,
    Idpyoidc,
}

/// How to start a token service. `delay` and `status` are faults only `baton sts` injects on
/// purpose; `env` goes to the process (peer-specific extras).
#[derive(Clone, Debug, Default)]
pub struct PeerOptions {
    pub delay: Option<&'static str>,
    pub status: Option<u16>,
    /// `baton sts` `faults.answer`: html, truncated_json, huge_body, no_expires_in, expires_in_zero, ...
    pub answer: Option<&'static str>,
    /// `baton sts` `token_lifetime` (default 5m).
    pub lifetime: Option<&'static str>,
    pub env: Vec<(&'static str, String)>,
    /// A PEM CA the harness trusts for a peer serving HTTPS (its own requests: mint, stats, JWKS).
    pub tls_root: Option<String>,
    /// Listen on this loopback port (e.g. `free_port()`, or a stopped service's, to restart it in
    /// its place) instead of one the kernel picks.
    pub port: Option<u16>,
    /// `baton sts` `signing_key_file` (see `sts_signing_key`): the same key across restarts, or
    /// shared by two services so each accepts the other's tokens.
    pub signing_key_file: Option<PathBuf>,
    /// `baton sts` `issuer` (default `http://<its address>`); needs `port`, as the endpoints are then
    /// not the issuer's.
    pub issuer: Option<String>,
    /// The audiences its client may ask for (default `ORDERS`, `BILLING`).
    pub audiences: Vec<String>,
    /// Names its config and log files (default: the peer's name), for several in one scratch dir.
    pub name: Option<&'static str>,
    /// More top-level `baton sts` configuration (YAML), e.g. `trusted_subject_issuers:`.
    pub sts_extra: Option<String>,
}

/// A P-256 PKCS#8 PEM key for `baton sts` (`PeerOptions::signing_key_file`), written to `scratch`.
pub fn sts_signing_key(scratch: &Scratch, name: &str) -> PathBuf {
    let key = rcgen::KeyPair::generate().expect("a P-256 key");
    scratch.write(&format!("{name}-signing-key.pem"), &key.serialize_pem())
}

#[derive(Debug)]
pub struct TokenService {
    pub peer: Peer,
    pub issuer: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    child: Child,
    mint_path: &'static str,
    stats_path: &'static str,
    http: reqwest::Client,
    options: PeerOptions,
}

impl TokenService {
    pub async fn start(peer: Peer, scratch: &Scratch) -> Self {
        Self::start_with(peer, scratch, PeerOptions::default()).await
    }

    pub async fn start_with(peer: Peer, scratch: &Scratch, faults: PeerOptions) -> Self {
        let audiences: Vec<&str> = if faults.audiences.is_empty() {
            vec![ORDERS, BILLING]
        } else {
            faults.audiences.iter().map(String::as_str).collect()
        };
        let name = faults.name.map_or_else(|| format!("{peer:?}"), str::to_owned);
        assert!(
            peer == Peer::BatonSts
                || (faults.signing_key_file.is_none() && faults.issuer.is_none() && faults.sts_extra.is_none()),
            "signing_key_file, issuer and sts_extra are `baton sts` options"
        );
        assert!(
            faults.issuer.is_none() || faults.port.is_some(),
            "a `baton sts` with its own issuer needs a fixed port"
        );
        let mut command = match peer {
            Peer::BatonSts => {
                let secret = scratch.write("sts-client-secret", CLIENT_SECRET);
                let mut yaml = format!(
                    "token_lifetime: {}\nclients:\n  - client_id: {CLIENT_ID}\n    secret_file: {}\n    audiences: [{}]\n",
                    faults.lifetime.unwrap_or("5m"),
                    secret.display(),
                    audiences.join(", ")
                );
                if let Some(key) = &faults.signing_key_file {
                    yaml.push_str(&format!("signing_key_file: {}\n", key.display()));
                }
                if let Some(issuer) = &faults.issuer {
                    yaml.push_str(&format!("issuer: {issuer}\n"));
                }
                if let Some(extra) = &faults.sts_extra {
                    yaml.push_str(extra);
                    yaml.push('\n');
                }
                if faults.delay.is_some() || faults.status.is_some() || faults.answer.is_some() {
                    yaml.push_str("faults:\n");
                    if let Some(a) = faults.answer {
                        yaml.push_str(&format!("  answer: {a}\n"));
                    }
                    if let Some(d) = faults.delay {
                        yaml.push_str(&format!("  delay: {d}\n"));
                    }
                    if let Some(s) = faults.status {
                        yaml.push_str(&format!("  status: {s}\n"));
                    }
                }
                let config = scratch.write(&format!("{name}.yaml"), &yaml);
                let mut c = Command::new(scratch.baton());
                c.arg("sts")
                    .arg("--config")
                    .arg(config)
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{}", faults.port.unwrap_or(0)));
                c
            }
            Peer::OidcProvider => {
                let dir = repo().join("tests/peers/oidc-provider");
                assert!(
                    dir.join("node_modules/oidc-provider").is_dir(),
                    "oidc-provider is not installed: run `scripts/test` (or `scripts/deps`)"
                );
                let mut c = Command::new("node");
                c.arg(dir.join("server.mjs"));
                c
            }
            Peer::Idpyoidc => {
                let python = repo().join(".cache/venv/bin/python");
                assert!(
                    python.is_file(),
                    "the test virtualenv is missing: run `scripts/test` (or `scripts/deps`)"
                );
                let mut c = Command::new(python);
                c.arg(repo().join("tests/peers/idpyoidc/server.py"));
                c
            }
        };
        command
            .env("PORT", faults.port.unwrap_or(0).to_string())
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("AUDIENCES", audiences.join(","))
            .env("TOKEN_LIFETIME", "300")
            .env("BATON_LOG", "info")
            .envs(faults.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(scratch.log(&format!("{name}.log")))
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {peer:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{peer:?} printed no ready line within 60 s"))
            .expect("read ready line")
            .unwrap_or_else(|| panic!("{peer:?} exited before it was ready"));
        let ready: Value =
            serde_json::from_str(&ready).unwrap_or_else(|e| panic!("{peer:?} ready line {ready:?}: {e}"));
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |k: &str| {
            ready[k]
                .as_str()
                .unwrap_or_else(|| panic!("{peer:?} ready line lacks {k}"))
                .to_owned()
        };
        let (mint_path, stats_path) = match peer {
            Peer::BatonSts => ("/dev/mint", "/dev/stats"),
            _ => ("/test/mint", "/test/stats"),
        };
        let http = match &faults.tls_root {
            Some(pem) => reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).expect("tls_root PEM")])
                .build()
                .expect("http client"),
            None => http(),
        };
        // With an issuer of its own, the endpoints it announces are the issuer's, not its own.
        let (token_endpoint, jwks_uri) = match (&faults.issuer, faults.port) {
            (Some(_), Some(port)) => (
                format!("http://127.0.0.1:{port}/token"),
                format!("http://127.0.0.1:{port}/jwks"),
            ),
            _ => (field("token_endpoint"), field("jwks_uri")),
        };
        Self {
            peer,
            issuer: field("issuer"),
            token_endpoint,
            jwks_uri,
            child,
            mint_path,
            stats_path,
            http,
            options: faults,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        url::Url::parse(&self.token_endpoint)
            .ok()
            .and_then(|u| u.port())
            .expect("the token endpoint's port")
    }

    /// Kill this `baton sts` and start it again on the same port with the same signing key (so
    /// tokens it minted stay valid), with `options` (its own, with the port fixed, if `None`).
    pub async fn restart(self, scratch: &Scratch, options: Option<PeerOptions>) -> Self {
        assert_eq!(self.peer, Peer::BatonSts, "only `baton sts` restarts on its port");
        let mut options = options.unwrap_or_else(|| self.options.clone());
        options.port = Some(self.port());
        if options.signing_key_file.is_none() {
            options.signing_key_file.clone_from(&self.options.signing_key_file);
        }
        assert!(
            options.signing_key_file.is_some(),
            "start it with PeerOptions::signing_key_file to restart it with the same key"
        );
        if options.name.is_none() {
            options.name = self.options.name;
        }
        let peer = self.peer;
        self.stop().await;
        Self::start_with(peer, scratch, options).await
    }

    fn base(&self) -> String {
        let url = url::Url::parse(&self.token_endpoint).expect("token endpoint url");
        format!(
            "{}://{}",
            url.scheme(),
            url.host_str()
                .zip(url.port())
                .map(|(h, p)| format!("{h}:{p}"))
                .expect("host")
        )
    }

    /// A user token this service will accept as a subject token.
    pub async fn mint(&self, sub: &str, scope: &str) -> String {
        self.mint_with(&[("sub", sub), ("scope", scope)]).await
    }

    /// A user token with these mint parameters (`baton sts` also takes aud, expires_in,
    /// not_before, may_act and claims).
    pub async fn mint_with(&self, form: &[(&str, &str)]) -> String {
        let response = self
            .http
            .post(format!("{}{}", self.base(), self.mint_path))
            .form(form)
            .send()
            .await
            .expect("mint");
        let status = response.status();
        let body: Value = serde_json::from_slice(&response.bytes().await.expect("mint body")).expect("mint json");
        assert!(status.is_success(), "{:?} mint: {status} {body}", self.peer);
        let token = body["access_token"].as_str().expect("access_token").to_owned();
        leaks::secret(&token);
        token
    }

    /// How many token-exchange requests reached the token endpoint so far.
    pub async fn exchanges(&self) -> u64 {
        self.stat("token_exchange").await
    }

    /// A counter from the service's stats endpoint (`baton sts` also counts `jwks` fetches).
    pub async fn stat(&self, name: &str) -> u64 {
        let response = self
            .http
            .get(format!("{}{}", self.base(), self.stats_path))
            .send()
            .await
            .expect("stats");
        let body: Value = serde_json::from_slice(&response.bytes().await.expect("stats body")).expect("stats json");
        body[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name} count in {body}"))
    }

    /// Verify `token` against this service's JWKS; the verified claims.
    pub async fn verify(&self, token: &str) -> Value {
        leaks::secret(token);
        let response = self.http.get(&self.jwks_uri).send().await.expect("jwks");
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(&response.bytes().await.expect("jwks body")).expect("jwks json");
        let header = jsonwebtoken::decode_header(token).expect("the issued token is a JWT");
        let jwk = match &header.kid {
            Some(kid) => jwks.find(kid).expect("the issued token's kid is in the JWKS"),
            None => jwks.keys.first().expect("a key in the JWKS"),
        };
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key");
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.validate_aud = false;
        validation.set_issuer(&[&self.issuer]);
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .unwrap_or_else(|e| {
                panic!(
                    "{:?}: the issued token does not verify against the JWKS: {e}",
                    self.peer
                )
            })
            .claims
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&pid)
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
