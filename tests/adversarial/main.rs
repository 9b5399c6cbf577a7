//! Baton under attack: table-driven cases, each a variant of a class of bypass, sent through the
//! real Envoy (ext_authz and ext_proc, with the configuration `baton envoy-config` generates and with
//! a hand-written one that does not normalize) or straight at Baton's own listeners. Every case says
//! what the attacker tries and what must happen; the threat model (`docs/threat-model.md`) names the
//! case that covers each attacker position.
//!
//! One module a class: who may ask Baton (`listener`), which path and host a token is delegated for
//! (`paths`, `hosts`), and what Baton does with the tokens it holds and receives (`tokens`).

mod broker;
mod hosts;
mod listener;
mod paths;
mod tokens;

/// The binary under test, passed to the harness (only this package can name it).
pub(crate) const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");
