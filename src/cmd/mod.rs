//! One module per command: its arguments and what it runs. `load` is how every command reads
//! Baton's configuration file.

use std::path::Path;

use baton_envoy::file::Config;

pub(crate) mod check_config;
pub(crate) mod envoy_config;
pub(crate) mod explain;
pub(crate) mod inject;
pub(crate) mod policy;
pub(crate) mod revoke;
pub(crate) mod run;
pub(crate) mod sts;

/// The configuration file at `path`, validated; the error names the file once. A file that cannot
/// be read is one error that already names it; otherwise the errors are the file's, each at its
/// field's path.
pub(crate) fn load(path: &Path) -> Result<Config, String> {
    Config::from_file(path).map_err(|e| {
        let shown = path.display().to_string();
        match e.0.as_slice() {
            [only] if only.path == shown => format!("{}\n", only.message),
            _ => format!("{shown}: {e}"),
        }
    })
}
