//! update-server: a drop-in replacement for the innovaphone PHP based Update Server V2.

pub mod app;
pub mod cli;
pub mod http;
