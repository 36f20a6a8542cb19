//! Postgres URL `sslmode` parsing: never panics, and what lockyard hands
//! tokio-postgres after taking `sslmode` out sets none (it would be
//! overridden by the default, `prefer`: a silent downgrade).
//! Run: `cargo +nightly fuzz run pg_url`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lockyard::__fuzz::pg_url(data);
});
