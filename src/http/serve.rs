//! placeholder
use super::Handler;
use std::sync::Arc;
pub fn run(_listen: &str, _root: std::path::PathBuf, _h: Arc<dyn Handler>) -> std::io::Result<()> { unimplemented!() }
