//! Configuration parsing: YAML text into `RawConfig` (`files::parse_yaml`), then `validate`, which
//! also compiles every policy and its CEL expression. Never a panic; a refused file names at least
//! one problem, each with the path of its field.
#![no_main]

use baton_core::config::Config;
use baton_core::files::parse_yaml;
use baton_envoy::file::RawConfig;
use baton_sts::RawStsConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_yaml::<RawConfig>(text) {
        Ok(raw) => match raw.validate() {
            Ok(config) => check(&config.decision),
            Err(errors) => {
                assert!(!errors.0.is_empty(), "refused without a reason");
                for e in &errors.0 {
                    assert!(!e.path.is_empty() && !e.message.is_empty(), "{e:?}");
                }
            }
        },
        Err(errors) => {
            // One error at `(yaml)`, after the template hint if the text holds `{{name}}` placeholders.
            let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
            let expected: &[&str] = match baton_core::files::template_hint(text) {
                Some(_) => &["(template)", "(yaml)"],
                None => &["(yaml)"],
            };
            assert_eq!(paths, expected, "{errors}");
        }
    }
    // The same text as `baton sts`'s configuration.
    if let Ok(raw) = parse_yaml::<RawStsConfig>(text)
        && let Err(errors) = raw.validate()
    {
        assert!(!errors.is_empty());
    }
});

/// What validation promises of an accepted configuration.
fn check(config: &Config) {
    assert!(!config.token_services.is_empty(), "no token service");
    for d in &config.destinations {
        assert!(
            config.token_services.iter().any(|t| t.name == d.token_service),
            "destination `{}` names an unknown token service",
            d.name
        );
        for scope in &d.scopes {
            assert!(baton_decide::settings::is_scope_token(scope), "{scope:?}");
        }
    }
}
