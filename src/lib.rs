//! update-server: a drop-in replacement for the innovaphone PHP based Update Server V2.

pub mod admin;
pub mod app;
pub mod backup;
pub mod certs;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod device;
pub mod device_data;
pub mod dynamic;
pub mod export;
pub mod filecache;
pub mod http;
pub mod master;
pub mod metrics;
pub mod net;
pub mod preview;
pub mod queries;
pub mod route;
pub mod script;
pub mod spa;
pub mod state;
pub mod upgrades;
pub mod urlenc;
pub mod xml;
