//! Lock names to advisory lock keys: [`PgKey`] and [`PgKeyMode`].
//!
//! Postgres advisory locks are named by numbers: one `bigint`, or a pair of
//! `integer`s (two key spaces that never overlap). A name becomes a key by
//! one of two documented, versioned mappings:
//!
//! - [`PgKeyMode::Sha256V1`] (the default): the first 8 bytes of the
//!   SHA-256 of the name's UTF-8 bytes, big-endian, as one `bigint`. Any
//!   name works. Two different names share a key (and so a lock) with
//!   probability 2⁻⁶⁴ per pair: among `n` names in use, about n²/2⁶⁵
//!   (a million names: 3·10⁻⁸). A shared key only makes two locks one
//!   (more exclusion, never less).
//! - [`PgKeyMode::DistributedLock`]: exactly as DistributedLock.Postgres
//!   (.NET) maps a name, so a .NET service and a Rust one share a lock:
//!   ASCII names of up to 9 characters are packed 7 bits a character (a
//!   `0` bit, then `1`s fill the 64 bits) and used as an integer *pair*; a
//!   16-hex-digit name is that `bigint`; `XXXXXXXX,XXXXXXXX` is that pair;
//!   other names are refused unless hashing is allowed, which takes the
//!   first 8 bytes of the name's SHA-1, little-endian, as a `bigint`.
//!
//! An explicit key ([`PgLocks::lock_key`](super::PgLocks::lock_key)) skips
//! the mapping.

use std::fmt;

// One `Digest` trait (the `digest` crate's) serves SHA-1 and SHA-256.
use sha1::Digest as _;

use crate::error::LockError;

/// An advisory lock key: one `bigint`, or a pair of `integer`s (a separate
/// key space, as in Postgres).
///
/// ```
/// use lockyard::postgres::{PgKey, PgKeyMode};
///
/// // SHA-256("nightly") begins 2a3b62b53ddb9f16.
/// assert_eq!(PgKeyMode::default().key("nightly")?, PgKey::Single(0x2a3b_62b5_3ddb_9f16));
/// assert_eq!(PgKeyMode::distributed_lock().key("0000000000000007")?, PgKey::Single(7));
/// # Ok::<(), lockyard::LockError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum PgKey {
    /// `pg_advisory_lock(bigint)`.
    Single(i64),
    /// `pg_advisory_lock(integer, integer)`.
    Pair(i32, i32),
}

impl PgKey {
    /// The key's arguments as SQL text (integers only: safe to inline).
    pub(crate) fn sql_args(self) -> String {
        match self {
            PgKey::Single(k) => k.to_string(),
            PgKey::Pair(a, b) => format!("{a}, {b}"),
        }
    }

    /// How `pg_locks` shows the key: `(classid, objid, objsubid)`, the
    /// two ids as unsigned 32-bit numbers.
    pub(crate) fn pg_locks_ids(self) -> (i64, i64, i16) {
        match self {
            PgKey::Single(k) => {
                let bits = k as u64;
                (i64::from((bits >> 32) as u32), i64::from(bits as u32), 1)
            }
            PgKey::Pair(a, b) => (i64::from(a as u32), i64::from(b as u32), 2),
        }
    }

    /// The key `pg_locks` shows as `(classid, objid, objsubid)`, if it is
    /// an advisory key.
    pub(crate) fn from_pg_locks(classid: i64, objid: i64, objsubid: i16) -> Option<Self> {
        let hi = u32::try_from(classid).ok()?;
        let lo = u32::try_from(objid).ok()?;
        match objsubid {
            1 => Some(PgKey::Single(
                ((u64::from(hi) << 32) | u64::from(lo)) as i64,
            )),
            2 => Some(PgKey::Pair(hi as i32, lo as i32)),
            _ => None,
        }
    }
}

impl fmt::Display for PgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgKey::Single(k) => write!(f, "{k}"),
            PgKey::Pair(a, b) => write!(f, "{a},{b}"),
        }
    }
}

/// How names map to keys.
///
/// Postgres advisory locks are named by numbers: one `bigint`, or a pair of
/// `integer`s (two key spaces that never overlap). A name becomes a key by
/// one of two documented, versioned mappings:
///
/// - [`PgKeyMode::Sha256V1`] (the default): the first 8 bytes of the
///   SHA-256 of the name's UTF-8 bytes, big-endian, as one `bigint`. Any
///   name works. Two different names share a key (and so a lock) with
///   probability 2⁻⁶⁴ per pair: among `n` names in use, about n²/2⁶⁵
///   (a million names: 3·10⁻⁸). A shared key only makes two locks one
///   (more exclusion, never less).
/// - [`PgKeyMode::DistributedLock`]: exactly as DistributedLock.Postgres
///   (.NET) maps a name, so a .NET service and a Rust one share a lock:
///   ASCII names of up to 9 characters are packed 7 bits a character (a
///   `0` bit, then `1`s fill the 64 bits) and used as an integer *pair*; a
///   16-hex-digit name is that `bigint`; `XXXXXXXX,XXXXXXXX` is that pair;
///   other names are refused unless hashing is allowed, which takes the
///   first 8 bytes of the name's SHA-1, little-endian, as a `bigint`.
///
/// An explicit key ([`PgLocks::lock_key`](super::PgLocks::lock_key)) skips
/// the mapping.
///
/// ```
/// use lockyard::postgres::PgKeyMode;
///
/// // DistributedLock refuses a long name unless hashing is allowed.
/// assert!(PgKeyMode::distributed_lock().key("a-name-longer-than-nine").is_err());
/// assert!(PgKeyMode::DistributedLock { allow_hashing: true }.key("a-name-longer-than-nine").is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PgKeyMode {
    /// Version 1 of lockyard's mapping: the first 8 bytes of SHA-256,
    /// big-endian, as a `bigint`. It will not change; another mapping
    /// would be another variant.
    #[default]
    Sha256V1,
    /// DistributedLock.Postgres's mapping (its `PostgresAdvisoryLockKey`
    /// from a name).
    DistributedLock {
        /// Hash names that no other rule encodes (SHA-1, first 8 bytes,
        /// little-endian), as DistributedLock's `allowHashing`.
        allow_hashing: bool,
    },
}

/// DistributedLock's ASCII packing: 7 bits a character.
const ASCII_BITS: u32 = 7;
const ASCII_MAX: u64 = (1 << ASCII_BITS) - 1;
/// 64 / 7: at most 9 characters.
const ASCII_MAX_LEN: usize = 9;

impl PgKeyMode {
    /// DistributedLock's mapping without hashing (its default).
    pub fn distributed_lock() -> Self {
        PgKeyMode::DistributedLock {
            allow_hashing: false,
        }
    }

    /// The key of `name`.
    ///
    /// ```
    /// use lockyard::postgres::{PgKey, PgKeyMode};
    ///
    /// let dl = PgKeyMode::distributed_lock();
    /// assert_eq!(dl.key("7fffffff,00000001")?, PgKey::Pair(i32::MAX, 1));
    /// # Ok::<(), lockyard::LockError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for a name DistributedLock's mapping
    /// refuses (not ASCII of at most 9 characters, not hex, hashing not
    /// allowed).
    pub fn key(self, name: &str) -> Result<PgKey, LockError> {
        match self {
            PgKeyMode::Sha256V1 => {
                let digest = sha2::Sha256::digest(name.as_bytes());
                let mut first = [0u8; 8];
                first.copy_from_slice(&digest[..8]);
                Ok(PgKey::Single(i64::from_be_bytes(first)))
            }
            PgKeyMode::DistributedLock { allow_hashing } => {
                if let Some(key) = ascii_key(name) {
                    return Ok(key);
                }
                if let Some(key) = hex_key(name) {
                    return Ok(key);
                }
                if allow_hashing {
                    let digest = sha1::Sha1::digest(name.as_bytes());
                    let mut first = [0u8; 8];
                    first.copy_from_slice(&digest[..8]);
                    return Ok(PgKey::Single(i64::from_le_bytes(first)));
                }
                Err(LockError::InvalidName {
                    name: name.to_owned(),
                    reason: "DistributedLock's key mapping takes ASCII names of at most 9 \
                             characters, 16 hex digits or `XXXXXXXX,XXXXXXXX` (8 hex digits \
                             each); allow hashing for other names",
                })
            }
        }
    }
}

/// The permit keys of the semaphore `name`: for permit `i` (0-based), the
/// first 8 bytes, big-endian, of the SHA-256 of
/// `lockyard-semaphore-v1 NUL name NUL i` (`i` in decimal), whatever the
/// key mode. A semaphore's keys never equal a lock's but by a 2⁻⁶⁴ chance.
pub(crate) fn permit_keys(name: &str, permits: u32) -> Vec<i64> {
    (0..permits)
        .map(|i| {
            let mut hash = sha2::Sha256::new();
            hash.update(b"lockyard-semaphore-v1\0");
            hash.update(name.as_bytes());
            hash.update(b"\0");
            hash.update(i.to_string().as_bytes());
            let digest = hash.finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            i64::from_be_bytes(first)
        })
        .collect()
}

/// DistributedLock's ASCII encoding: up to 9 characters of 7 bits, then a
/// `0` bit, then `1` bits to fill 64; used as the pair of its two halves.
fn ascii_key(name: &str) -> Option<PgKey> {
    if name.len() > ASCII_MAX_LEN || !name.is_ascii() {
        return None;
    }
    let mut bits: u64 = 0;
    for b in name.bytes() {
        bits = (bits << ASCII_BITS) | u64::from(b);
    }
    bits <<= 1;
    for _ in name.len()..ASCII_MAX_LEN {
        bits = (bits << ASCII_BITS) | ASCII_MAX;
    }
    Some(PgKey::Pair((bits >> 32) as u32 as i32, bits as u32 as i32))
}

/// DistributedLock's hex forms: 16 hex digits (a `bigint`) or
/// `XXXXXXXX,XXXXXXXX` (a pair), each half read as a 32-bit number.
fn hex_key(name: &str) -> Option<PgKey> {
    let (hi, lo, pair) = match name.len() {
        16 => (name.get(..8)?, name.get(8..)?, false),
        17 if name.as_bytes().get(8) == Some(&b',') => (name.get(..8)?, name.get(9..)?, true),
        _ => return None,
    };
    let half = |s: &str| {
        // .NET's AllowHexSpecifier takes hex digits only (no sign, no 0x).
        s.bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
    };
    let (hi, lo) = (half(hi)?, half(lo)?);
    Some(if pair {
        PgKey::Pair(hi as i32, lo as i32)
    } else {
        PgKey::Single(((u64::from(hi) << 32) | u64::from(lo)) as i64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DistributedLock's ASCII rule by hand: "a" is 0x61 in the top 7
    /// bits, a 0, then 8 × 7 = 56 one bits.
    #[test]
    fn ascii_names_pack_as_distributed_lock_does() {
        let dl = PgKeyMode::distributed_lock();
        let a: u64 = (0x61 << 57) | ((1 << 56) - 1);
        assert_eq!(
            dl.key("a").unwrap(),
            PgKey::Pair((a >> 32) as i32, a as u32 as i32)
        );
        // The empty name: a 0 bit then 63 ones.
        assert_eq!(
            dl.key("").unwrap(),
            PgKey::Pair(i32::MAX, -1),
            "0x7fffffff_ffffffff"
        );
        // Nine characters fill 63 bits, then the 0 bit.
        let nine = "abcdefghi";
        let mut v: u64 = 0;
        for b in nine.bytes() {
            v = (v << 7) | u64::from(b);
        }
        v <<= 1;
        assert_eq!(
            dl.key(nine).unwrap(),
            PgKey::Pair((v >> 32) as i32, v as u32 as i32)
        );
        // A leading NUL makes another key than no character at all.
        assert_ne!(dl.key("\0a").unwrap(), dl.key("a").unwrap());
    }

    #[test]
    fn hex_names_are_numbers_in_distributed_lock_mode() {
        let dl = PgKeyMode::distributed_lock();
        assert_eq!(
            dl.key("ffffffffffffffff").unwrap(),
            PgKey::Single(-1),
            "Int64 -1 as .NET's ToString(\"x16\")"
        );
        assert_eq!(dl.key("7FFFFFFFFFFFFFFF").unwrap(), PgKey::Single(i64::MAX));
        assert_eq!(dl.key("ffffffff,00000002").unwrap(), PgKey::Pair(-1, 2));
        // Not hex, 17 characters without the comma: refused without hashing.
        assert!(dl.key("fffffffg00000000").is_err());
        assert!(dl.key("ffffffff;00000002").is_err());
        assert!(dl.key("+fffffff00000000").is_err());
        assert!(dl.key("é").is_err(), "not ASCII");
    }

    /// SHA-1("abcdefghij") = d68c19a0a345b7eab78d5e11e991c026ec60db63:
    /// its first 8 bytes read little-endian.
    #[test]
    fn hashing_reads_sha1_little_endian() {
        let dl = PgKeyMode::DistributedLock {
            allow_hashing: true,
        };
        assert_eq!(
            dl.key("abcdefghij").unwrap(),
            PgKey::Single(i64::from_le_bytes([
                0xd6, 0x8c, 0x19, 0xa0, 0xa3, 0x45, 0xb7, 0xea
            ]))
        );
    }

    /// SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223…: its first 8
    /// bytes read big-endian.
    #[test]
    fn sha256_v1_reads_the_first_eight_bytes_big_endian() {
        assert_eq!(
            PgKeyMode::Sha256V1.key("abc").unwrap(),
            PgKey::Single(i64::from_be_bytes([
                0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea
            ]))
        );
    }

    #[test]
    fn pg_locks_ids_round_trip() {
        for key in [
            PgKey::Single(-1),
            PgKey::Single(i64::MIN),
            PgKey::Single(42),
            PgKey::Pair(-5, i32::MAX),
        ] {
            let (c, o, s) = key.pg_locks_ids();
            assert_eq!(PgKey::from_pg_locks(c, o, s), Some(key));
        }
    }
}
