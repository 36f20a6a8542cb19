//! Resource name → lock file name.
//!
//! A *plain* name — bytes of `[A-Za-z0-9._-]`, not starting with `.`, at most
//! [`MAX_PLAIN_LEN`] bytes — maps to `<name>.lock`. Every other non-empty name
//! maps to `~<prefix>-<hash>.lock`, where `<prefix>` is the name's first
//! characters with anything outside the plain alphabet replaced by `_`, and
//! `<hash>` is the first 128 bits of the SHA-256 of the whole name, in hex.
//! The two forms cannot collide (a plain name never starts with `~`), and
//! neither can contain `/`, NUL, or be `.` / `..`: no name reaches outside
//! the directory.
//!
//! The hash is cryptographic so that nobody can craft a name that shares a
//! lock file with another name (a non-cryptographic hash such as FNV-1a,
//! used before, lets an attacker who controls names compute collisions). It
//! is not keyed: the mapping must be the same in every process on every
//! machine sharing a directory, whatever Rust version built it.

use crate::error::LockError;

/// Longest name that maps to `<name>.lock` unchanged.
pub(crate) const MAX_PLAIN_LEN: usize = 100;
/// How many characters of an escaped name are kept readable in its file name.
const PREFIX_LEN: usize = 32;
/// Lock files end with this.
pub(crate) const SUFFIX: &str = ".lock";

/// Whether `b` may appear in a plain name.
fn is_plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Whether `name` maps to `<name>.lock` unchanged.
pub(crate) fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PLAIN_LEN
        && !name.starts_with('.')
        && name.bytes().all(is_plain_byte)
}

/// Checks that `file_name` is one entry of the lock directory, taken as it
/// is (no `.lock` added, nothing escaped).
///
/// # Errors
///
/// [`LockError::InvalidName`] if it is empty, `.` or `..`, or contains `/`
/// or NUL.
pub(crate) fn check_exact_file_name(file_name: &str) -> Result<(), LockError> {
    let invalid = |reason| LockError::InvalidName {
        name: file_name.to_owned(),
        reason,
    };
    if file_name.is_empty() || file_name == "." || file_name == ".." {
        return Err(invalid("not a file name"));
    }
    if file_name.contains(['/', '\0']) {
        return Err(invalid(
            "a file name in the lock directory cannot contain `/` or NUL",
        ));
    }
    Ok(())
}

/// The file name (no directory) of the lock file for `name`.
///
/// # Errors
///
/// [`LockError::InvalidName`] for the empty name; every other name maps.
pub(crate) fn file_name(name: &str) -> Result<String, LockError> {
    if name.is_empty() {
        return Err(LockError::InvalidName {
            name: String::new(),
            reason: "the name is empty",
        });
    }
    if is_plain(name) {
        return Ok(format!("{name}{SUFFIX}"));
    }
    let prefix: String = name
        .chars()
        .take(PREFIX_LEN)
        .map(|c| {
            if c.is_ascii() && is_plain_byte(c as u8) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(format!(
        "~{prefix}-{:032x}{SUFFIX}",
        name_hash(name.as_bytes())
    ))
}

/// The resource name a lock file name stands for, when the file name alone
/// says it (plain names); escaped names need the name recorded inside the file.
pub(crate) fn plain_name_of(file_name: &str) -> Option<&str> {
    let stem = file_name.strip_suffix(SUFFIX)?;
    is_plain(stem).then_some(stem)
}

/// Whether `file_name` looks like a lock file this module produces.
pub(crate) fn is_lock_file_name(file_name: &str) -> bool {
    match file_name.strip_suffix(SUFFIX) {
        Some(stem) => is_plain(stem) || is_escaped_stem(stem),
        None => false,
    }
}

fn is_escaped_stem(stem: &str) -> bool {
    let Some(rest) = stem.strip_prefix('~') else {
        return false;
    };
    match rest.rsplit_once('-') {
        Some((prefix, hash)) => {
            prefix.chars().count() <= PREFIX_LEN
                && prefix.bytes().all(is_plain_byte)
                && hash.len() == 32
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// The first 128 bits of SHA-256: collision-resistant and stable.
fn name_hash(bytes: &[u8]) -> u128 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// Checks every property the mapping promises for `name`; panics on a broken
/// one. Used by the fuzz target and its corpus test.
pub(crate) fn check_mapping(name: &str) {
    let Ok(file) = file_name(name) else {
        assert!(name.is_empty(), "non-empty name {name:?} refused");
        return;
    };
    assert!(!name.is_empty());
    assert_eq!(
        file_name(name).ok().as_deref(),
        Some(file.as_str()),
        "not deterministic"
    );
    assert!(file.len() <= 255, "file name too long: {}", file.len());
    assert!(file.ends_with(SUFFIX));
    assert!(file != "." && file != "..");
    assert!(!file.starts_with('.'), "hidden file {file:?}");
    assert!(
        file.bytes().all(|b| is_plain_byte(b) || b == b'~'),
        "unsafe byte in {file:?}"
    );
    assert!(
        is_lock_file_name(&file),
        "{file:?} not recognised as a lock file"
    );
    match plain_name_of(&file) {
        Some(back) => assert_eq!(back, name, "plain mapping not invertible"),
        None => assert!(!is_plain(name)),
    }
    let path = std::path::Path::new("/d").join(&file);
    assert_eq!(
        path.parent(),
        Some(std::path::Path::new("/d")),
        "escaped the dir"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_map_unchanged() {
        assert_eq!(file_name("nightly-report").unwrap(), "nightly-report.lock");
        assert_eq!(file_name("a.b_c-1").unwrap(), "a.b_c-1.lock");
        let hundred = "x".repeat(100);
        assert_eq!(file_name(&hundred).unwrap(), format!("{hundred}.lock"));
    }

    #[test]
    fn other_names_are_escaped_and_stay_inside() {
        for name in [
            "..",
            ".",
            "/",
            "a/../../b",
            "../etc/passwd",
            "nul\0byte",
            ".hidden",
            "modèle-ß-模型",
            "white space",
            "~tilde",
            &"y".repeat(101),
            &"é".repeat(5000),
        ] {
            let f = file_name(name).unwrap();
            assert!(f.starts_with('~'), "{name:?} -> {f:?}");
            check_mapping(name);
        }
        assert_ne!(file_name("a/b").unwrap(), file_name("a_b").unwrap());
        assert!(file_name("a/b").unwrap().starts_with("~a_b-"));
    }

    #[test]
    fn empty_name_is_refused() {
        assert!(matches!(file_name(""), Err(LockError::InvalidName { .. })));
    }

    #[test]
    fn hash_is_stable() {
        // Pinned so that an accidental change of the mapping (which would make
        // two versions of lockyard lock different files) fails here.
        assert_eq!(
            file_name("a/b").unwrap(),
            "~a_b-c14cddc033f64b9dea80ea675cf280a0.lock"
        );
        // SHA-256 test vector (the empty string), truncated to 128 bits.
        assert_eq!(name_hash(b""), 0xe3b0c44298fc1c149afbf4c8996fb924);
    }
}
