//! The documentation's YAML examples against the code, so the docs cannot drift from it.
//!
//! Every fenced YAML block in README.md and docs/*.md names its kind after `yaml` in its info string
//! (```` ```yaml baton ````). A `baton` block is parsed and validated as Baton's configuration, an
//! `injector` block as `baton inject`'s, an `sts` block as `baton sts`'s, a `policy-test` block as a
//! `baton policy test` file (its shape and reason codes); any other kind (`envoy`, `k8s`, `otel`, or
//! `baton-fragment` for a deliberate piece of a file) is parsed as YAML. A block
//! without a kind fails the test. Files an example names (secrets, keys) are placeholders: an error
//! that only says such a file cannot be read is not counted. This file only reads the docs.

use std::path::{Path, PathBuf};

/// One fenced YAML block: where it is, its kind, its text.
struct Block {
    file: PathBuf,
    line: usize,
    kind: String,
    text: String,
}

impl Block {
    fn at(&self) -> String {
        let file = self.file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(&self.file);
        format!("{}:{} (yaml {})", file.display(), self.line, self.kind)
    }
}

/// README.md and every docs/*.md, in a stable order.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    files.sort();
    files.insert(0, root.join("README.md"));
    files
}

/// The kind given to a block of another language while it is skipped.
const OTHER: &str = "\u{0}other";

/// The fenced YAML blocks of a Markdown text (fences may be indented, as in a list item). A block
/// whose info string is `yaml` alone has the kind "".
fn yaml_blocks(file: &Path, markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, String, String)> = None; // (line, indent, kind, text)
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let mut words = info.split_whitespace();
                    let kind = match words.next() {
                        Some("yaml" | "yml") => words.next().unwrap_or("").to_string(),
                        // Another language's block (or none): read to its closing fence, not kept.
                        _ => OTHER.into(),
                    };
                    open = Some((n + 1, indent, kind, String::new()));
                }
            }
            Some((start, fence_indent, kind, text)) => {
                if trimmed.starts_with("```") && trimmed.trim_end() == "```" {
                    if kind != OTHER {
                        blocks.push(Block {
                            file: file.to_path_buf(),
                            line: *start,
                            kind: std::mem::take(kind),
                            text: std::mem::take(text),
                        });
                    }
                    open = None;
                } else {
                    text.push_str(line.get(*fence_indent..).unwrap_or(line.trim_start()));
                    text.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "{}: a fenced block is never closed", file.display());
    blocks
}

fn all_blocks() -> Vec<Block> {
    documents()
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            yaml_blocks(file, &text)
        })
        .collect()
}

/// The examples name files (secrets, keys, certificates) by where a deployment keeps them; they do
/// not exist here. An error that only says such a file, named in the block, cannot be read is not
/// the example's fault; every other error is.
fn is_placeholder_file(message: &str, block: &str) -> bool {
    message
        .strip_prefix("cannot read ")
        .and_then(|rest| rest.split(':').next())
        .is_some_and(|path| block.contains(path))
}

/// Baton's configuration: parsed, then validated, every error kept. The one place that names
/// Baton's configuration API, so the restructure moves only this call.
fn baton_config_errors(text: &str) -> Vec<String> {
    match baton_envoy::file::Config::from_yaml(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.into_iter().map(|f| format!("{}: {}", f.path, f.message)).collect(),
    }
}

/// `baton inject`'s configuration, parsed and validated as `baton inject --config` does.
fn injector_config_errors(text: &str) -> Vec<String> {
    match baton_inject::InjectConfig::from_yaml(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.into_iter().map(|f| format!("{}: {}", f.path, f.message)).collect(),
    }
}

/// `baton sts`'s configuration, parsed and validated as `baton sts --config` does. It does not say
/// why a client's secret file was unreadable, so each `secret_file` the example names is read from
/// a stand-in file instead.
fn sts_config_errors(text: &str) -> Vec<String> {
    let secret = std::env::temp_dir().join(format!("baton-docs-sts-secret-{}", std::process::id()));
    std::fs::write(&secret, "secret").expect("write the stand-in secret");
    let text: String = text
        .lines()
        .map(|line| match line.split_once("secret_file:") {
            Some((key, _)) => format!("{key}secret_file: {}\n", secret.display()),
            None => format!("{line}\n"),
        })
        .collect();
    let errors = match serde_saphyr::from_str::<baton_sts::RawStsConfig>(&text) {
        Ok(raw) => raw.validate().err().unwrap_or_default(),
        Err(e) => vec![format!("(yaml): {e}")],
    };
    let _ = std::fs::remove_file(&secret);
    errors
}

/// What is wrong with one block, by its kind; empty when it holds.
fn check(block: &Block) -> Vec<String> {
    let errors = match block.kind.as_str() {
        "" => {
            return vec!["a YAML block without a kind: write ```yaml baton (or injector, sts, envoy, k8s, ...)".into()];
        }
        "baton" => baton_config_errors(&block.text),
        "injector" => injector_config_errors(&block.text),
        "sts" => sts_config_errors(&block.text),
        // A `baton policy test` file: its shape and its reason codes.
        "policy-test" => baton_envoy::dry_run::TestFile::parse(&block.text)
            .err()
            .into_iter()
            .collect(),
        _ => match serde_saphyr::from_str::<serde_json::Value>(&block.text) {
            Ok(_) => Vec::new(),
            Err(e) => vec![format!("not YAML: {e}")],
        },
    };
    errors
        .into_iter()
        .filter(|e| !is_placeholder_file(e.split_once(": ").map_or(e.as_str(), |(_, m)| m), &block.text))
        .collect()
}

#[test]
fn every_yaml_example_in_the_docs_holds() {
    let blocks = all_blocks();
    assert!(
        blocks.iter().filter(|b| b.kind == "baton").count() >= 3,
        "the docs' Baton configuration examples were not found"
    );
    let failures: Vec<String> = blocks
        .iter()
        .flat_map(|block| check(block).into_iter().map(move |e| format!("{}: {e}", block.at())))
        .collect();
    assert!(
        failures.is_empty(),
        "{} broken YAML examples:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The full example in docs/configuration.md is the first `baton` block there; fuzz/make-corpus
/// seeds the config fuzzer with it.
#[test]
fn the_configuration_reference_starts_with_the_full_example() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let text = std::fs::read_to_string(&file).expect("docs/configuration.md");
    let first = yaml_blocks(&file, &text).into_iter().next().expect("a YAML block");
    assert_eq!(first.kind, "baton");
    for section in [
        "listen:",
        "token_service:",
        "trusted_issuers:",
        "telemetry:",
        "audit:",
        "destinations:",
    ] {
        assert!(
            first.text.lines().any(|l| l.starts_with(section)),
            "the full example lacks {section}"
        );
    }
}

// === The checker itself ===

#[test]
fn an_untagged_block_fails() {
    let blocks = yaml_blocks(Path::new("x.md"), "text\n```yaml\na: 1\n```\n");
    assert_eq!(blocks.len(), 1);
    assert!(!check(&blocks[0]).is_empty());
}

#[test]
fn a_broken_baton_example_fails() {
    let md = "```yaml baton\ndestinations:\n  - name: a\n    audiance: x\n```\n";
    let blocks = yaml_blocks(Path::new("x.md"), md);
    assert!(!check(&blocks[0]).is_empty(), "an unknown key must fail");
}

#[test]
fn other_languages_and_indented_blocks_are_read_right() {
    let md = "```sh\necho '```yaml'\n```\n- item:\n\n  ```yaml envoy\n  a:\n    b: 1\n  ```\n```json\n{}\n```\n";
    let blocks = yaml_blocks(Path::new("x.md"), md);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].kind, "envoy");
    assert_eq!(blocks[0].text, "a:\n  b: 1\n");
    assert!(check(&blocks[0]).is_empty());
}
