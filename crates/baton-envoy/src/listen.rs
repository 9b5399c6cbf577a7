//! Where Baton listens: the `listen:` section (the gRPC listener on TCP, with mutual TLS unless it
//! is loopback, and/or on a Unix socket with its mode and group; the admin listener; the ext_authz
//! over HTTP listener on loopback TCP and/or a Unix socket, which shares the gRPC socket's mode and
//! group: one Envoy connects to both). Serving
//! configuration: the decision never reads it, and a reload never changes it (a restart does).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use baton_decide::settings::{Errors, is_loopback};

/// `listen:`. At least one of `grpc`, `grpc_uds`, `authz_http` and `authz_http_uds`; none has a
/// default address.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
    /// TCP gRPC listener (opt-in). Plain text only on loopback, unless `insecure_plaintext`.
    pub grpc: Option<String>,
    /// Unix socket gRPC listener: the sidecar's transport.
    pub grpc_uds: Option<PathBuf>,
    /// The socket's permission bits, octal text (default "0660").
    pub grpc_uds_mode: Option<String>,
    /// A group name or numeric gid the socket is given to.
    pub grpc_uds_group: Option<String>,
    /// Mutual TLS on `grpc`.
    pub grpc_tls: Option<crate::tls::RawGrpcTls>,
    /// Allow plain-text `grpc` on a non-loopback address.
    pub insecure_plaintext: bool,
    pub admin: Option<String>,
    /// TCP listener for Envoy's ext_authz over HTTP (`authz_http`), opt-in, plain text: loopback
    /// only, unless `insecure_plaintext`.
    pub authz_http: Option<String>,
    /// Unix socket listener for ext_authz over HTTP, with `grpc_uds_mode` and `grpc_uds_group`.
    pub authz_http_uds: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub grpc: Option<SocketAddr>,
    pub grpc_uds: Option<PathBuf>,
    /// Permission bits of the socket (never any for "others").
    pub grpc_uds_mode: u32,
    pub grpc_uds_group: Option<UdsGroup>,
    pub grpc_tls: Option<crate::tls::GrpcTls>,
    pub admin: Option<SocketAddr>,
    pub authz_http: Option<SocketAddr>,
    pub authz_http_uds: Option<PathBuf>,
}

/// The default `listen.grpc_uds_mode`: the owner and the group may connect, nobody else.
const DEFAULT_UDS_MODE: u32 = 0o660;

/// `listen.grpc_uds_group`: resolved when the socket is created (the file is checked where Baton runs,
/// not where `check-config` does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UdsGroup {
    Id(u32),
    Name(String),
}

impl Raw {
    /// The listeners, or `None` when `listen.grpc` is not an address (reported).
    pub(crate) fn validate(self, errors: &mut Errors) -> Option<Settings> {
        let grpc = self
            .grpc
            .as_deref()
            .map(|g| socket_addr(g, "listen.grpc", errors).ok_or(()))
            .transpose();
        let admin = self
            .admin
            .as_deref()
            .and_then(|a| socket_addr(a, "listen.admin", errors));
        let authz_http = self
            .authz_http
            .as_deref()
            .and_then(|a| socket_addr(a, "listen.authz_http", errors));
        let serves_http = self.authz_http.is_some() || self.authz_http_uds.is_some();
        if self.grpc.is_none() && self.grpc_uds.is_none() && !serves_http {
            errors.add(
                "listen",
                "Baton has no gRPC listener: add `grpc_uds: /var/run/baton/baton.sock` (the sidecar's Unix socket), \
                 or `grpc: 127.0.0.1:9191` (TCP; with `grpc_tls` unless it is loopback)",
            );
        }
        if let Some(path) = &self.grpc_uds
            && path.as_os_str().is_empty()
        {
            errors.add("listen.grpc_uds", "must be a path");
        }
        let grpc_uds_mode = match self.grpc_uds_mode.as_deref() {
            None => DEFAULT_UDS_MODE,
            Some(text) => match uds_mode(text) {
                Ok(mode) => mode,
                Err(why) => {
                    errors.add("listen.grpc_uds_mode", why);
                    DEFAULT_UDS_MODE
                }
            },
        };
        let grpc_uds_group = self.grpc_uds_group.as_deref().and_then(|g| match uds_group(g) {
            Ok(group) => Some(group),
            Err(why) => {
                errors.add("listen.grpc_uds_group", why);
                None
            }
        });
        if let Some(path) = &self.authz_http_uds
            && path.as_os_str().is_empty()
        {
            errors.add("listen.authz_http_uds", "must be a path");
        }
        if let (Some(http), Some(grpc)) = (&self.authz_http_uds, &self.grpc_uds)
            && http == grpc
        {
            errors.add(
                "listen.authz_http_uds",
                "is also listen.grpc_uds: give each its own path",
            );
        }
        if let Some(addr) = authz_http
            && !self.insecure_plaintext
            && !is_loopback(addr.ip())
        {
            errors.add(
                "listen.authz_http",
                format!(
                    "`{addr}` is not a loopback address, and plain text there lets anyone who reaches it ask for tokens: \
                     use `authz_http_uds`, or set `insecure_plaintext: true` if something else protects it"
                ),
            );
        }
        if self.grpc_uds.is_none() && self.authz_http_uds.is_none() {
            for (set, field) in [
                (self.grpc_uds_mode.is_some(), "listen.grpc_uds_mode"),
                (self.grpc_uds_group.is_some(), "listen.grpc_uds_group"),
            ] {
                if set {
                    errors.add(
                        field,
                        "applies to listen.grpc_uds and listen.authz_http_uds, neither of which is set",
                    );
                }
            }
        }
        let grpc_tls = self.grpc_tls.and_then(|t| t.validate(errors));
        if let Ok(Some(addr)) = grpc {
            if grpc_tls.is_none() && !self.insecure_plaintext && !is_loopback(addr.ip()) {
                errors.add(
                    "listen.grpc",
                    format!(
                        "`{addr}` is not a loopback address, and plain text there lets anyone who reaches it ask for tokens: \
                         add `grpc_tls` (mutual TLS), use `grpc_uds`, or set `insecure_plaintext: true` if something else protects it"
                    ),
                );
            }
        } else if grpc == Ok(None) && grpc_tls.is_some() {
            errors.add("listen.grpc_tls", "applies to listen.grpc, which is not set");
        }
        if let (Ok(Some(grpc)), Some(admin)) = (grpc, admin)
            && grpc.port() != 0
            && grpc == admin
        {
            errors.add("listen.admin", format!("`{admin}` is also listen.grpc"));
        }
        for (other, name) in [(grpc.ok().flatten(), "listen.grpc"), (admin, "listen.admin")] {
            if let (Some(http), Some(other)) = (authz_http, other)
                && http.port() != 0
                && http == other
            {
                errors.add("listen.authz_http", format!("`{http}` is also {name}"));
            }
        }
        Some(Settings {
            grpc: grpc.ok()?,
            grpc_uds: self.grpc_uds,
            grpc_uds_mode,
            grpc_uds_group,
            grpc_tls,
            admin,
            authz_http,
            authz_http_uds: self.authz_http_uds,
        })
    }
}

/// Octal permission bits (`"0660"`, `"660"`, `"0o660"`), none for others
/// (connecting to a Unix socket needs write permission; "others" is every local user).
fn uds_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|_| !digits.is_empty() && digits.len() <= 4)
        .ok_or_else(|| format!("`{text}` is not an octal mode like \"0660\""))?;
    if mode & !0o777 != 0 {
        return Err(format!("`{text}`: only permission bits (0o777) are allowed"));
    }
    if mode & 0o007 != 0 {
        return Err(format!(
            "`{text}` lets every local user connect: give access through the group (`grpc_uds_group`) instead"
        ));
    }
    Ok(mode)
}

/// A numeric gid, or a group name (POSIX portable characters).
fn uds_group(text: &str) -> Result<UdsGroup, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(UdsGroup::Id)
            .map_err(|_| format!("`{text}` is not a valid gid"));
    }
    let portable = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if text.is_empty() || text.len() > 64 || text.starts_with('-') || !text.bytes().all(portable) {
        return Err(format!("`{text}` is neither a group name nor a numeric gid"));
    }
    Ok(UdsGroup::Name(text.to_owned()))
}

fn socket_addr(text: &str, field: &str, errors: &mut Errors) -> Option<SocketAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.add(field, format!("`{text}` is not an address like 127.0.0.1:9191"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(yaml: &str) -> (Option<Settings>, Vec<(String, String)>) {
        let raw: Raw = serde_saphyr::from_str(yaml).expect("yaml");
        let mut errors = Errors::default();
        let settings = raw.validate(&mut errors);
        let errors = errors.0.into_iter().map(|e| (e.path, e.message)).collect();
        (settings, errors)
    }

    fn paths(yaml: &str) -> Vec<String> {
        validate(yaml).1.into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn the_http_authorization_listener_is_loopback_or_a_unix_socket() {
        // Alone, it is a listener: Envoy needs no gRPC one to ask over HTTP.
        let (settings, errors) = validate("authz_http: 127.0.0.1:9192\n");
        assert!(errors.is_empty(), "{errors:?}");
        let settings = settings.expect("settings");
        assert_eq!(settings.authz_http, Some("127.0.0.1:9192".parse().expect("addr")));
        let (settings, errors) = validate("authz_http_uds: /run/baton-http.sock\ngrpc_uds_mode: \"0600\"\n");
        assert!(errors.is_empty(), "{errors:?}");
        let settings = settings.expect("settings");
        assert_eq!(
            (settings.authz_http_uds.as_deref(), settings.grpc_uds_mode),
            (Some(std::path::Path::new("/run/baton-http.sock")), 0o600)
        );

        // Plain text beyond loopback: refused, unless insecure_plaintext says something else protects it.
        let (_, errors) = validate("authz_http: 0.0.0.0:9192\n");
        let (_, message) = errors.iter().find(|(p, _)| p == "listen.authz_http").expect("refused");
        assert!(message.contains("not a loopback"), "{message}");
        assert!(paths("authz_http: 10.0.0.1:9192\ninsecure_plaintext: true\n").is_empty());
        // grpc_tls does not protect it.
        assert!(paths("grpc_uds: /s\nauthz_http: 10.0.0.1:9192\n").contains(&"listen.authz_http".to_owned()));

        // Every error at once: not an address, the same socket as gRPC, the same port as admin.
        let all =
            paths("grpc_uds: /run/b.sock\nauthz_http_uds: /run/b.sock\nauthz_http: nowhere\nadmin: 127.0.0.1:9901\n");
        assert_eq!(
            all.iter().filter(|p| p.starts_with("listen.authz_http")).count(),
            2,
            "{all:?}"
        );
        assert!(paths("authz_http: 127.0.0.1:9901\nadmin: 127.0.0.1:9901\n").contains(&"listen.authz_http".to_owned()));
        assert!(paths("authz_http: 127.0.0.1:9191\ngrpc: 127.0.0.1:9191\n").contains(&"listen.authz_http".to_owned()));
        assert!(paths("authz_http_uds: \"\"\n").contains(&"listen.authz_http_uds".to_owned()));

        // The socket's mode and group need one of the two sockets.
        assert!(
            paths("authz_http: 127.0.0.1:9192\ngrpc_uds_mode: \"0600\"\n").contains(&"listen.grpc_uds_mode".to_owned())
        );
        assert!(paths("authz_http_uds: /s\ngrpc_uds_group: \"12\"\n").is_empty());
        // Still: some listener.
        assert!(paths("admin: 127.0.0.1:9901\n").contains(&"listen".to_owned()));
    }
}
