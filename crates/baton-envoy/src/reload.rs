//! Hot reload: the configuration file is watched (Kubernetes updates a mounted ConfigMap by swapping
//! a symlink, so the file is polled by its `credentials::Stamp`: device, inode, size, modification
//! time) and re-read on SIGHUP. A new configuration is validated, built, then swapped in atomically; checks
//! already running finish on the old one. An invalid file leaves the running configuration in place,
//! logs every error, and is counted. Listeners cannot move without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::file::Config;
use baton_core::authz::{Authz, Current};
use baton_core::credentials::Stamp;
use baton_core::metrics::OutcomeLabels;

/// How a new core is built from a validated configuration, carrying over from the running one
/// (`app::build_with`: passed in, so that reloading does not depend on the composition that starts it).
pub type Build = fn(baton_core::config::Config, Option<&Authz>) -> Result<Arc<Authz>, String>;

/// Watch `path` (every `interval`, and on SIGHUP) and swap a core rebuilt by `build` into `current`
/// on each valid change. Runs until the process ends.
pub async fn watch(
    path: PathBuf,
    listen: crate::listen::Settings,
    current: Current,
    plugin: crate::in_proxy::PluginDigest,
    interval: Option<Duration>,
    build: Build,
) {
    let mut seen = Stamp::of_path(&path);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let signalled = tokio::select! {
            _ = async { match interval { Some(i) => tokio::time::sleep(i).await, None => std::future::pending().await } } => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = Stamp::of_path(&path);
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        let outcome = reload(&path, &listen, &current, &plugin, build);
        let metrics = current.load().telemetry().metrics().clone();
        let counted = &metrics.config_reloads;
        metrics.config_last_reload_ok.set(i64::from(outcome.is_ok()));
        match outcome {
            Ok(()) => {
                counted.get_or_create(&OutcomeLabels { outcome: "ok" }).inc();
                tracing::info!(path = %path.display(), signalled, "configuration reloaded");
            }
            Err(e) => {
                counted.get_or_create(&OutcomeLabels { outcome: "error" }).inc();
                tracing::error!(path = %path.display(), signalled, "configuration not reloaded, the running one stays: {e}");
            }
        }
    }
}

/// Read, validate, build and swap. The exchanged-token cache carries over when its size is
/// unchanged: its keys cover every exchange parameter, so a destination whose parameters changed
/// never reuses a token obtained under the old ones.
fn reload(
    path: &Path,
    listen: &crate::listen::Settings,
    current: &Current,
    plugin: &crate::in_proxy::PluginDigest,
    build: Build,
) -> Result<(), String> {
    let config = Config::from_file(path).map_err(|e| e.to_string().trim_end().replace('\n', "; "))?;
    if config.listen != *listen {
        tracing::warn!("the `listen` section changed: it takes effect only after a restart");
    }
    let old = current.load_full();
    let fresh = build(config.decision, Some(&old))?;
    current.store(fresh);
    plugin.store(Arc::new(config.plugin_digest));
    Ok(())
}
