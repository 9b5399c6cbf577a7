//! Reading what the operator gives Baton in files: a configuration file (YAML, into a section's
//! `Raw*` shape), a secret file, a PEM bundle. Every read is bounded (never past `max`: `/dev/zero`
//! is an error, not an endless read) and every error names the file, never its content.

use std::path::Path;

use crate::secret::Secret;
use baton_decide::settings::{ConfigError, Errors, FieldError};

/// The largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// The largest secret file (client secret, key, header value) read.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// A YAML document into its `Raw*` shape: a syntax or shape error is one error at `(yaml)`.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str(text).map_err(|e| {
        ConfigError(vec![FieldError {
            path: "(yaml)".into(),
            message: e.to_string(),
        }])
    })
}

/// A configuration file's text; an unreadable file is one error naming it.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    read_text(path, MAX_CONFIG_BYTES).map_err(|message| {
        ConfigError(vec![FieldError {
            path: path.display().to_string(),
            message,
        }])
    })
}

/// A UTF-8 file of at most `max` bytes.
fn read_text(path: &Path, max: u64) -> Result<String, String> {
    let bytes = read_bounded(path, max)?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// A secret held in a file (trimmed; empty is an error), reported at `field` when it cannot be had.
pub fn read_secret(path: &Path, field: &str, errors: &mut Errors) -> Option<Secret> {
    match read_text(path, MAX_SECRET_FILE_BYTES) {
        Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
        Ok(_) => {
            errors.add(field, format!("{} is empty", path.display()));
            None
        }
        Err(e) => {
            errors.add(field, e);
            None
        }
    }
}

/// A file's bytes, refused when larger than `max` (never read past it: `/dev/zero` is an error, not
/// an endless read). The error names the file, never its content.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    Ok(bytes)
}
