//! What a test measured, for people to read (the fault tests' tallies, a reload's): each line goes
//! to stderr, which `cargo test` shows only for a failing test or with `--nocapture`, and to
//! `target/test-reports/<suite>.txt`, which `scripts/test` prints after its tests phase, so the
//! figures are seen on a normal run. The first line a test binary reports empties its file: the file
//! holds that suite's latest run. A line never holds a token; it is the caller's text, as given.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The open report file of this test binary, and its path (for the error messages).
static FILE: OnceLock<Mutex<(PathBuf, std::fs::File)>> = OnceLock::new();

/// Report `line` (one line, no newline) on stderr and in this suite's report file.
pub fn line(line: &str) {
    eprintln!("{line}");
    let file = FILE.get_or_init(|| {
        let (dir, suite) = place();
        open(&dir, &suite)
    });
    append(file, line);
}

/// `dir/<suite>.txt`, created empty.
fn open(dir: &Path, suite: &str) -> Mutex<(PathBuf, std::fs::File)> {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(format!("{suite}.txt"));
    let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    Mutex::new((path, file))
}

fn append(file: &Mutex<(PathBuf, std::fs::File)>, line: &str) {
    let mut guard = file.lock().unwrap_or_else(|e| e.into_inner());
    let (path, file) = &mut *guard;
    writeln!(file, "{line}").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `target/test-reports` and the suite's name, from the test binary's own path
/// (`target/debug/deps/faults-0123abcd`: the suite is `faults`), so a moved target directory
/// (`CARGO_TARGET_DIR`) moves the reports with it.
fn place() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suite = suite(&stem).to_owned();
    let target = exe
        .parent()
        .filter(|deps| deps.ends_with("deps"))
        .and_then(|deps| deps.parent()?.parent())
        .map_or_else(|| crate::repo().join("target"), PathBuf::from);
    (target.join("test-reports"), suite)
}

/// The suite of a test binary: cargo names it `<name>-<16 hex digits>`.
fn suite(stem: &str) -> &str {
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => name,
        _ => stem,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_suite_is_the_binary_without_cargos_hash() {
        assert_eq!(super::suite("faults-4f381cbabf9e854b"), "faults");
        assert_eq!(super::suite("token_services-0123456789abcdef"), "token_services");
        assert_eq!(super::suite("my-suite-0123456789abcdef"), "my-suite");
        assert_eq!(super::suite("no-hash"), "no-hash");
        assert_eq!(super::suite("short-abc"), "short-abc");
    }

    #[test]
    fn lines_are_appended_to_a_file_emptied_when_opened() {
        let dir = std::env::temp_dir().join(format!("baton-report-test-{}", std::process::id()));
        let read = || std::fs::read_to_string(dir.join("suite.txt")).expect("the report file");
        let file = super::open(&dir, "suite");
        super::append(&file, "first");
        super::append(&file, "second");
        assert_eq!(read(), "first\nsecond\n");
        drop(super::open(&dir, "suite"));
        assert_eq!(read(), "", "a new run starts the file again");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
