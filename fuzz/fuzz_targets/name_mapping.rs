//! Resource name → lock file name: never escapes the directory, never
//! panics, deterministic, plain names invertible.
//! Run: `cargo +nightly fuzz run name_mapping`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lockyard::__fuzz::name_mapping(data);
});
