//! Owner metadata parser: never panics on anything a foreign lock file may
//! hold, and whatever parses round-trips through `to_text`.
//! Run: `cargo +nightly fuzz run owner_parse`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lockyard::__fuzz::owner_parse(data);
});
