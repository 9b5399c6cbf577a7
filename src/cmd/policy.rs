//! `baton policy test`: run policy test files against the configuration's compiled decision, offline.

use std::path::PathBuf;
use std::process::ExitCode;

use baton_envoy::dry_run;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run test files (YAML: `config:` and `cases:`, each a request and its expected outcome)
    /// against the configuration's real decision, sending nothing. Exit 0 when every case
    /// matches, 1 on a mismatch, 2 on a bad test file or configuration.
    Test(TestArgs),
}

#[derive(clap::Args)]
struct TestArgs {
    /// Policy test files (YAML).
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// Baton's configuration file, instead of each test file's `config:`.
    #[arg(long, short, value_name = "CONFIG")]
    config: Option<PathBuf>,
    /// Also write a JUnit XML report here (one testsuite per file), for CI systems.
    #[arg(long, value_name = "PATH")]
    junit: Option<PathBuf>,
}

impl Args {
    pub(crate) fn run(self) -> ExitCode {
        match self.command {
            Command::Test(args) => args.run(),
        }
    }
}

impl TestArgs {
    fn run(self) -> ExitCode {
        let mut suites = Vec::new();
        for file in &self.files {
            match dry_run::run_file(file, self.config.as_deref()) {
                Ok(suite) => suites.push(suite),
                Err(e) => {
                    eprintln!("baton: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        let mut out = String::new();
        let (mut passed, mut failed) = (0, 0);
        for suite in &suites {
            out.push_str(&format!(
                "{} (config {})\n",
                suite.file.display(),
                suite.config.display()
            ));
            for case in &suite.cases {
                if case.passed {
                    passed += 1;
                    out.push_str(&format!("  ok        {}: {}\n", case.name, case.got));
                } else {
                    failed += 1;
                    out.push_str(&format!(
                        "  MISMATCH  {}: expected {}, got {}\n",
                        case.name, case.expected, case.got
                    ));
                }
            }
            for note in &suite.notes {
                out.push_str(&format!("  not checked: {note}\n"));
            }
        }
        out.push_str(&format!("{passed} passed, {failed} failed\n"));
        crate::print(&out);
        if let Some(path) = &self.junit {
            let written = dry_run::junit(&suites)
                .and_then(|xml| std::fs::write(path, xml).map_err(|e| format!("cannot write {}: {e}", path.display())));
            if let Err(e) = written {
                eprintln!("baton: {e}");
                return ExitCode::from(2);
            }
        }
        if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}
