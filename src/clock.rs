//! Time as the old server counted it: whole seconds since the epoch.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now() -> i64 {
    epoch_of(SystemTime::now())
}

pub fn epoch_of(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}
