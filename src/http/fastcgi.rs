//! placeholder
use super::Handler;
use std::sync::Arc;
pub fn stdin_is_listening_socket() -> bool { false }
pub fn serve_inherited(_h: Arc<dyn Handler>, _workers: usize) -> std::io::Result<()> { unimplemented!() }
pub fn serve_listen(_a: &str, _h: Arc<dyn Handler>, _workers: usize) -> std::io::Result<()> { unimplemented!() }
