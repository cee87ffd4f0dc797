//! The parts of `lb-agent` and `lbctl` a CNI reuses: the configuration file ([`config`]), the
//! pinned maps of a running node ([`pinned`]), what `lbctl` shows ([`views`]) and drop events
//! as streamed ([`monitor`]).

pub mod config;
pub mod metrics;
pub mod monitor;
pub mod pinned;
pub mod sync;
pub mod views;
