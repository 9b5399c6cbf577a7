//! Composition: builds every subsystem from its own section of a validated `Config`, binds the
//! listeners, and starts the background work (discovery). `main` and the tests both start Baton
//! through here, so they run the same thing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::file::Config as File;
use crate::listen::UdsGroup;
use crate::reload;
use crate::server::{self, Listeners};
use arc_swap::ArcSwap;
use baton_core::authz::{Authz, Current};
use baton_core::config::Config;
use baton_core::exchange::{TokenService, TokenServices};
use baton_core::telemetry::Telemetry;
use baton_core::telemetry::settings::AuditSink;
use baton_core::token_service::Endpoint;
use baton_core::verify::{Introspection, Verifier};
use std::path::{Path, PathBuf};

/// Build the decision core from a validated configuration; starts discovery for each token service
/// whose endpoint comes from the issuer's metadata, and the trusted issuers' key refresh.
pub fn build(config: Config) -> Result<Arc<Authz>, String> {
    build_with(config, None)
}

/// Build, carrying over from `previous` (a reload) what must outlive a configuration: the
/// telemetry (metrics keep counting, exporters keep running), the exchanged-token cache when its
/// size is unchanged (its keys cover every exchange parameter, so a changed destination never
/// reuses a token obtained under the old parameters), and each token service's circuit breaker
/// when its endpoint and settings are unchanged.
pub fn build_with(mut config: Config, previous: Option<&Authz>) -> Result<Arc<Authz>, String> {
    let services = token_services(&config, previous)?;
    for old in previous.iter().flat_map(|p| p.token_services().iter()) {
        if services.get(old.name()).is_none() {
            old.breaker().retire();
        }
    }
    for ts in &config.token_services {
        if let (Endpoint::Discover { issuer }, Some(service)) = (&ts.endpoint, services.get(&ts.name)) {
            tokio::spawn(baton_core::discovery::run(Arc::downgrade(service), issuer.clone()));
        }
    }
    let telemetry = match previous {
        Some(previous) => previous.telemetry().clone(),
        None => Telemetry::start(&config.telemetry, &config.audit)?,
    };
    for service in services.iter() {
        service.breaker().report_to(telemetry.metrics());
    }
    let verifier = verifier(&mut config, &services, &telemetry)?;
    match &verifier {
        Some(verifier) => verifier.spawn_refresh(),
        None => {
            tracing::warn!("no trusted_issuers: subject tokens are not verified by Baton, only by the token service")
        }
    }
    let ssf = ssf_receiver(&mut config, previous, &telemetry)?;
    let cache = previous
        .map(Authz::shared_cache)
        .filter(|c| c.max_entries() == config.cache.max_entries);
    let mut authz = Authz::new(config, services, verifier).with_telemetry(telemetry);
    if let Some(cache) = cache {
        authz = authz.with_cache(cache);
    }
    if let Some(previous) = previous {
        authz = authz.with_revocations_of(previous).with_dpop_of(previous);
    }
    if let Some(ssf) = ssf {
        authz = authz.with_ssf(ssf);
    }
    authz.telemetry().revocations_held(authz.revocations());
    Ok(authz.into_shared())
}

/// The decision core as `build` makes it, but started nowhere: no discovery, no JWKS fetch, no
/// exporter, nothing sent (`baton explain`, `baton policy test`). A token service found by
/// discovery has no endpoint yet, and subject tokens are never verified by it.
pub fn build_offline(mut config: Config) -> Result<Authz, String> {
    let services = token_services(&config, None)?;
    let telemetry = Telemetry::off();
    let verifier = verifier(&mut config, &services, &telemetry)?;
    Ok(Authz::new(config, services, verifier))
}

/// The Shared Signals receiver of `ssf:`, keeping `previous`'s `jti` memory and created stream (a
/// reload). Its poll loop is `crate::ssf::spawn_poll`, started once by `run`.
fn ssf_receiver(
    config: &mut Config,
    previous: Option<&Authz>,
    telemetry: &Telemetry,
) -> Result<Option<Arc<baton_core::ssf::Receiver>>, String> {
    let Some(settings) = config.ssf.take() else {
        return Ok(None);
    };
    let metrics = telemetry.metrics();
    let mut receiver = baton_core::ssf::Receiver::new(
        settings,
        metrics.jwks_refreshes.clone(),
        metrics.ssf_events.clone(),
        metrics.ssf_polls.clone(),
    )?;
    if let Some(old) = previous.and_then(Authz::ssf) {
        receiver = receiver.succeed(old);
    }
    receiver.spawn_key_refresh();
    Ok(Some(Arc::new(receiver)))
}

/// Every token service of `config`, each carrying over `previous`'s circuit breaker (a reload).
fn token_services(config: &Config, previous: Option<&Authz>) -> Result<TokenServices, String> {
    let services = config
        .token_services
        .iter()
        .map(|ts| {
            let mut service = TokenService::new(ts).map_err(|e| format!("token service `{}`: {e}", ts.name))?;
            if let Some(old) = previous.and_then(|p| p.token_services().get(&ts.name)) {
                service.succeed(old);
            }
            Ok(service)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(TokenServices::new(services))
}

/// The subject-token verifier (trusted issuers, introspection), if the configuration has one;
/// it fetches nothing until it is used or its refresh is spawned.
fn verifier(
    config: &mut Config,
    services: &TokenServices,
    telemetry: &Telemetry,
) -> Result<Option<Arc<Verifier>>, String> {
    let issuers = std::mem::take(&mut config.trusted_issuers);
    let introspection = config.introspection.take().and_then(|i| {
        let service = services.get(&i.token_service)?.clone();
        Some(Introspection::new(i, service, config.cache.max_entries))
    });
    Verifier::new(
        issuers,
        config.opaque_tokens,
        introspection,
        config.cache.max_entries,
        telemetry.metrics().jwks_refreshes.clone(),
    )
}

/// Bind the configured listeners, and read the gRPC listener's TLS files. A stale Unix socket file
/// from an earlier run is replaced. An error names the listener and its address.
pub async fn bind(config: &File) -> Result<Listeners, String> {
    let tcp = |name: &'static str, addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {name} {addr}: {e}"))
    };
    let grpc_tls = config
        .listen
        .grpc_tls
        .as_ref()
        .map(|t| crate::tls::Acceptor::new(t).map_err(|e| format!("listen.grpc_tls: {e}")))
        .transpose()?;
    let grpc = match config.listen.grpc {
        Some(addr) => Some(tcp("listen.grpc", addr).await?),
        None => None,
    };
    let grpc_uds = match &config.listen.grpc_uds {
        Some(path) => Some(
            bind_uds(path, config.listen.grpc_uds_mode, config.listen.grpc_uds_group.as_ref())
                .map_err(|e| format!("cannot listen on listen.grpc_uds {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let admin = match config.listen.admin {
        Some(addr) => Some(tcp("listen.admin", addr).await?),
        None => None,
    };
    let authz_http = match config.listen.authz_http {
        Some(addr) => Some(tcp("listen.authz_http", addr).await?),
        None => None,
    };
    let authz_http_uds = match &config.listen.authz_http_uds {
        Some(path) => Some(
            bind_uds(path, config.listen.grpc_uds_mode, config.listen.grpc_uds_group.as_ref())
                .map_err(|e| format!("cannot listen on listen.authz_http_uds {}: {e}", path.display()))?,
        ),
        None => None,
    };
    Ok(Listeners {
        grpc,
        grpc_tls,
        grpc_uds,
        admin,
        authz_http,
        authz_http_uds,
    })
}

/// Bind the Unix socket so that it never exists at `path` with wider access than `mode` and
/// `group`: it is bound inside a fresh directory only Baton can enter, given its mode and group
/// there, then renamed to `path` (which atomically replaces a stale socket from an earlier run).
/// Anything at `path` that is not a socket is left alone and is an error.
fn bind_uds(path: &Path, mode: u32, group: Option<&UdsGroup>) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && !meta.file_type().is_socket()
    {
        return Err("something that is not a socket is there".into());
    }
    let gid = group.map(resolve_group).transpose()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = parent.join(format!(".bt{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    let staged = staging.join("s");
    let bound = (|| {
        let listener = tokio::net::UnixListener::bind(&staged).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set its mode {mode:04o}: {e}"))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&staged, None, Some(gid))
                .map_err(|e| format!("cannot give it to group {gid}: {e}"))?;
        }
        std::fs::rename(&staged, path).map_err(|e| e.to_string())?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

/// A group name from `/etc/group`, or a numeric gid as is.
fn resolve_group(group: &UdsGroup) -> Result<u32, String> {
    let name = match group {
        UdsGroup::Id(gid) => return Ok(*gid),
        UdsGroup::Name(name) => name,
    };
    let text = baton_core::files::read_bounded(Path::new("/etc/group"), 4 * 1024 * 1024)
        .map_err(|e| format!("listen.grpc_uds_group `{name}`: {e} (a numeric gid needs no /etc/group)"))?;
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(name.as_str()))
                .then(|| fields.nth(1).and_then(|gid| gid.parse().ok()))
                .flatten()
        })
        .ok_or_else(|| format!("listen.grpc_uds_group: no group `{name}` in /etc/group"))
}

/// Load, build, bind and serve until `shutdown`; then drain for at most `shutdown_grace`. The
/// configuration is reloaded from `path` when it changes or on SIGHUP.
pub async fn run(path: PathBuf, config: File, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let listeners = bind(&config).await?;
    let allowed_callers: Vec<String> = config
        .listen
        .grpc_tls
        .iter()
        .flat_map(|t| t.allowed_callers.iter().map(ToString::to_string))
        .collect();
    if let Some(addr) = config.listen.grpc
        && config.listen.grpc_tls.is_none()
        && !baton_decide::settings::is_loopback(addr.ip())
    {
        tracing::warn!(%addr, "listen.grpc serves plain text beyond loopback (insecure_plaintext): anyone who reaches it may ask for tokens");
    }
    if let Some(addr) = config.listen.authz_http
        && !baton_decide::settings::is_loopback(addr.ip())
    {
        tracing::warn!(%addr, "listen.authz_http serves plain text beyond loopback (insecure_plaintext): anyone who reaches it may ask for tokens");
    }
    // Values as a person reads them: an address or `off`, never Rust's `Some(..)`/`None`.
    let shown = |value: Option<String>| value.unwrap_or_else(|| "off".to_owned());
    let audit = match &config.decision.audit.sink {
        AuditSink::Off => "off".to_owned(),
        AuditSink::Stdout => "stdout".to_owned(),
        AuditSink::File { path, .. } => path.display().to_string(),
    };
    tracing::info!(
        grpc = %shown(config.listen.grpc.map(|a| a.to_string())),
        grpc_tls = config.listen.grpc_tls.is_some(),
        allowed_callers = %allowed_callers.join(", "),
        grpc_uds = %shown(config.listen.grpc_uds.as_ref().map(|p| p.display().to_string())),
        grpc_uds_mode = format_args!("{:04o}", config.listen.grpc_uds_mode),
        admin = %shown(config.listen.admin.map(|a| a.to_string())),
        authz_http = %shown(config.listen.authz_http.map(|a| a.to_string())),
        authz_http_uds = %shown(config.listen.authz_http_uds.as_ref().map(|p| p.display().to_string())),
        destinations = config.decision.destinations.len(),
        trusted_issuers = config.decision.trusted_issuers.len(),
        tracing = config.decision.telemetry.tracing.is_some(),
        %audit,
        "baton serving"
    );
    let grace = config.shutdown_grace;
    let (listen, poll) = (config.listen.clone(), config.reload_interval);
    let plugin: crate::in_proxy::PluginDigest = Arc::new(ArcSwap::from_pointee(config.plugin_digest));
    let authz = build(config.decision)?;
    let telemetry = authz.telemetry().clone();
    let authz: Current = Arc::new(ArcSwap::new(authz));
    let reloader = tokio::spawn(reload::watch(
        path,
        listen,
        authz.clone(),
        plugin.clone(),
        poll,
        build_with,
    ));
    let ssf_poll = crate::ssf::spawn_poll(authz.clone());
    let ssf_current = authz.clone();
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = server::serve(authz, plugin, listeners, async move {
        shutdown.await;
        let _ = signalled_tx.send(());
    });
    tokio::pin!(serving);
    let served = tokio::select! {
        result = &mut serving => result.map_err(|e| e.to_string()),
        _ = signalled_rx => match tokio::time::timeout(grace, serving).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "in-flight requests did not finish within the shutdown grace period"
                );
                Ok(())
            }
        },
    };
    reloader.abort();
    ssf_poll.abort();
    crate::ssf::delete_stream(&ssf_current).await;
    // The last decisions' spans and audit lines go out before the process does.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown(Duration::from_secs(5))).await;
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

    #[tokio::test]
    async fn the_socket_gets_its_mode_and_group_and_replaces_only_a_stale_socket() {
        let dir = std::env::temp_dir().join(format!("baton-app-uds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("baton.sock");

        // A stale socket from an earlier run is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        let listener = bind_uds(&path, 0o600, Some(&UdsGroup::Id(4242))).expect("bind");
        let meta = std::fs::symlink_metadata(&path).expect("socket");
        assert!(meta.file_type().is_socket());
        assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o600, 4242));
        // It is the listening socket, at its final path.
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        assert!(accepted.is_ok() && connected.is_ok());
        // Nothing is left behind where it was bound.
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, ["baton.sock"]);

        // Anything else at the path is left alone, and is an error.
        std::fs::remove_file(&path).expect("remove");
        std::fs::write(&path, "not a socket").expect("write");
        let err = bind_uds(&path, 0o660, None).expect_err("a file");
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "not a socket");

        let err = bind_uds(
            &dir.join("b.sock"),
            0o660,
            Some(&UdsGroup::Name("no-such-group-here".into())),
        )
        .expect_err("unknown group");
        assert!(err.contains("no-such-group-here"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
