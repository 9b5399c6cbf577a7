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
/// A template's placeholders are named first ([`template_hint`]).
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str(text).map_err(|e| {
        let error = FieldError {
            path: "(yaml)".into(),
            message: e.to_string(),
        };
        ConfigError(template_hint(text).into_iter().chain([error]).collect())
    })
}

/// At most this many placeholders are named; more add nothing to the hint.
const MAX_PLACEHOLDERS_NAMED: usize = 8;

/// The first error to give for a refused file that holds `{{name}}` placeholders outside its
/// comments: a template (like `examples/demo/`'s, which `scripts/demo` fills in), whose own errors
/// (a YAML flow mapping where a string belongs, an address that is not one) do not say so.
pub fn template_hint(text: &str) -> Option<FieldError> {
    let mut names: Vec<&str> = Vec::new();
    for line in text.lines() {
        // A comment starts at a `#` that begins the line or follows a blank.
        let code = line
            .char_indices()
            .find(|&(at, c)| c == '#' && (at == 0 || line[..at].ends_with([' ', '\t'])))
            .map_or(line, |(at, _)| &line[..at]);
        let mut rest = code;
        while let Some(open) = rest.find("{{") {
            rest = &rest[open + 2..];
            let Some(close) = rest.find("}}") else { break };
            let name = rest[..close].trim();
            let is_name = !name.is_empty()
                && name.len() <= 64
                && name.bytes().any(|b| b.is_ascii_alphanumeric())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if is_name && !names.contains(&name) {
                names.push(name);
            }
            rest = &rest[close + 2..];
        }
    }
    if names.is_empty() {
        return None;
    }
    let shown: Vec<String> = names
        .iter()
        .take(MAX_PLACEHOLDERS_NAMED)
        .map(|n| format!("{{{{{n}}}}}"))
        .collect();
    let more = names.len().saturating_sub(MAX_PLACEHOLDERS_NAMED);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Some(FieldError {
        path: "(template)".into(),
        message: format!(
            "this looks like a template: it still holds the placeholder{} {}{more}; fill the placeholders \
             (scripts/demo fills examples/demo's), or start from the ready-to-use files in examples/local/ \
             of Baton's repository",
            if names.len() == 1 { "" } else { "s" },
            shown.join(", ")
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Shape {
        url: String,
    }

    #[test]
    fn a_template_that_does_not_parse_is_named_first() {
        let e = parse_yaml::<Shape>("# {{not_this}}\nurl: {{token_endpoint}}\n").expect_err("a flow mapping");
        assert_eq!(e.0.len(), 2, "{e}");
        assert_eq!((e.0[0].path.as_str(), e.0[1].path.as_str()), ("(template)", "(yaml)"));
        assert!(e.0[0].message.contains("placeholder {{token_endpoint}};"), "{e}");
        assert!(e.0[0].message.contains("examples/local/"), "{e}");
        assert!(
            !e.0[0].message.contains("not_this"),
            "a comment is not the template: {e}"
        );
        let e = parse_yaml::<Shape>("url: [x]\n").expect_err("a list");
        assert_eq!(e.0.len(), 1, "no placeholder, no hint: {e}");
    }

    #[test]
    fn only_names_in_double_braces_outside_comments_are_placeholders() {
        assert!(template_hint("a: '{{ }}' # {{x}}\nb: \"{{a b}}\"\nc: {{}}\n#{{y}}\n").is_none());
        let hint = template_hint("a: \"{{ port }}#{{port}}\"\nb: x{{.Values.host}}\n").expect("a template");
        assert!(
            hint.message.contains("placeholders {{port}}, {{.Values.host}};"),
            "{}",
            hint.message
        );
        let many: String = (0..12).map(|n| format!("k{n}: {{{{p{n}}}}}\n")).collect();
        let hint = template_hint(&many).expect("a template").message;
        assert!(hint.contains("{{p7}} and 4 more;"), "{hint}");
    }
}
