//! Human-readable output escapes control characters: a lock name (or a
//! holder record) with a newline or an escape sequence cannot forge a row
//! of `status`, or a line of an error message.
#![cfg(unix)]

mod cli_support;

use cli_support::*;

const EVIL: &str = "evil\nforged  yes  exclusive  1  host  2026-01-01T00:00:00Z\x1b[2K";

fn assert_no_forgery(text: &str, rows: usize) {
    assert_eq!(text.lines().count(), rows, "a row was forged: {text:?}");
    assert!(!text.contains('\x1b'), "a raw escape sequence: {text:?}");
    assert!(
        text.contains("evil\\nforged"),
        "the name is not shown escaped: {text:?}"
    );
}

#[test]
fn status_escapes_a_file_lock_name() {
    let env = Env::new();
    let _holder = env.hold(EVIL, &[]);
    let out = env.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_no_forgery(&stdout(&out), 2);
    // JSON keeps the name exact (JSON escapes it its own way).
    let out = env.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v[0]["name"], EVIL);
}

#[test]
fn conflict_line_escapes_the_lock_name() {
    let env = Env::new();
    let _holder = env.hold(EVIL, &[]);
    let out = env.run(&["exec", "-n", EVIL, "--", "true"]);
    assert_clean_failure(&out, 1);
    assert!(!stderr(&out).contains('\x1b'), "{:?}", stderr(&out));
}
