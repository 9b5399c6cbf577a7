//! One module per command: its arguments and what it runs.

pub(crate) mod check_config;
pub(crate) mod envoy_config;
pub(crate) mod inject;
pub(crate) mod run;
pub(crate) mod sts;
