//! Replays the fuzz targets' seed corpora (`fuzz/corpus/<target>/*`) as
//! ordinary tests, so CI exercises what `cargo fuzz` starts from (and any
//! crash input added there later) without a nightly toolchain.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(
            r.is_ok(),
            "{target}: input {} broke a property",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 5, "{target}: only {n} seeds in {}", dir.display());
}

#[test]
fn name_mapping_corpus() {
    replay("name_mapping", lockyard::__fuzz::name_mapping);
}

#[test]
fn owner_parse_corpus() {
    replay("owner_parse", lockyard::__fuzz::owner_parse);
}

#[cfg(feature = "postgres")]
#[test]
fn pg_url_corpus() {
    replay("pg_url", lockyard::__fuzz::pg_url);
}

/// A few thousand pseudo-random inputs derived from the seeds (bit flips,
/// truncations, splices), standing in for a short fuzzing run.
#[test]
fn mutated_seeds() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x10c4_7a2d);
    for (target, check) in [
        ("name_mapping", lockyard::__fuzz::name_mapping as fn(&[u8])),
        ("owner_parse", lockyard::__fuzz::owner_parse),
        #[cfg(feature = "postgres")]
        ("pg_url", lockyard::__fuzz::pg_url),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        for _ in 0..3000 {
            let mut data = seeds[rng.random_range(0..seeds.len())].clone();
            match rng.random_range(0..4) {
                0 if !data.is_empty() => {
                    let i = rng.random_range(0..data.len());
                    data[i] ^= 1 << rng.random_range(0..8);
                }
                1 if !data.is_empty() => data.truncate(rng.random_range(0..data.len())),
                2 => {
                    let other = &seeds[rng.random_range(0..seeds.len())];
                    let at = rng.random_range(0..=data.len());
                    data.splice(at..at, other.iter().copied());
                }
                _ => data.push(rng.random()),
            }
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "{target}: {data:?} broke a property");
        }
    }
}
