//! A FastCGI connection's record stream (src/http/fastcgi.rs): framing, the per-connection
//! session state machine, name-value decoding and the response encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    update_server::http::fastcgi::fuzzing::record_stream(data);
});
