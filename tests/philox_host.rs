//! The kernels' Philox and mask headers (kernels/philox.cuh, kernels/mask.cuh), compiled with the
//! host C++ compiler, checked bit for bit against src/philox.rs and src/mask.rs: every
//! known-answer vector, a million random counters and keys, and mask decisions through the
//! kernels' `MaskParams` path (geometry, threshold, device seed buffer), and the keep-rule
//! boundary vectors (a word equal to the threshold is kept).
//!
//! The compiler is `$CXX`, or `g++` when that is unset; the headers must compile with plain
//! `-std=c++17` and no CUDA headers, since the GPU kernels include these very files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use fusedrop::mask;
use fusedrop::philox::philox4x32_10;
use fusedrop::Geometry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Builds tests/host/philox_driver.cpp once per test run and returns the executable's path.
fn driver() -> &'static Path {
    static DRIVER: OnceLock<PathBuf> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("philox_host");
        std::fs::create_dir_all(&dir).expect("create the driver's build directory");
        let exe = dir.join("philox_driver");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
        let output = Command::new(&cxx)
            .args([
                "-std=c++17",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Wpedantic",
                "-Werror",
                // Undefined behaviour in the headers (a shift by 32, an overflowing signed
                // index) ends the driver with a report instead of passing by luck.
                "-fsanitize=undefined",
                "-fno-sanitize-recover=undefined",
            ])
            .arg("-I")
            .arg(root.join("kernels"))
            .arg(root.join("tests/host/philox_driver.cpp"))
            .arg("-o")
            .arg(&exe)
            .output()
            .unwrap_or_else(|e| panic!("could not run the host C++ compiler {cxx:?}: {e}"));
        assert!(
            output.status.success(),
            "{cxx} failed to compile kernels/philox.cuh and kernels/mask.cuh for the host:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        exe
    })
}

/// Runs the driver in `mode` on `input` (native-endian words) and returns its output words.
fn run_driver(mode: &str, name: &str, input: &[u8]) -> Vec<u8> {
    let exe = driver();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("philox_host");
    let (inp, out) = (
        dir.join(format!("{name}.in")),
        dir.join(format!("{name}.out")),
    );
    std::fs::write(&inp, input).expect("write the driver's input");
    let status = Command::new(exe)
        .arg(mode)
        .arg(&inp)
        .arg(&out)
        .status()
        .expect("run the host driver");
    assert!(status.success(), "philox_driver {mode} failed: {status}");
    std::fs::read(&out).expect("read the driver's output")
}

fn u32_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

fn u64_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

fn bytes_u32(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .collect()
}

fn bytes_u64(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
        .collect()
}

/// Philox through the C++ header for each (counter, key).
fn host_philox(name: &str, inputs: &[([u32; 4], [u32; 2])]) -> Vec<[u32; 4]> {
    let words: Vec<u32> = inputs
        .iter()
        .flat_map(|(c, k)| c.iter().chain(k).copied())
        .collect();
    let out = bytes_u32(&run_driver("philox", name, &u32_bytes(&words)));
    assert_eq!(out.len(), inputs.len() * 4, "driver output length");
    out.chunks_exact(4)
        .map(|w| [w[0], w[1], w[2], w[3]])
        .collect()
}

/// A fresh random seed for this run, printed so a failure can be reproduced.
fn test_rng(what: &str) -> StdRng {
    let seed: u64 = rand::random();
    println!("{what}: random inputs from StdRng::seed_from_u64({seed:#x})");
    StdRng::seed_from_u64(seed)
}

#[test]
fn header_matches_every_known_answer_vector() {
    let mut kats = Vec::new();
    for line in include_str!("data/philox4x32_10_kat.txt").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let w: Vec<u32> = line
            .split_whitespace()
            .skip(2)
            .map(|h| u32::from_str_radix(h, 16).expect("hex word"))
            .collect();
        kats.push((
            [w[0], w[1], w[2], w[3]],
            [w[4], w[5]],
            [w[6], w[7], w[8], w[9]],
        ));
    }
    assert_eq!(kats.len(), 55);
    let inputs: Vec<_> = kats.iter().map(|&(c, k, _)| (c, k)).collect();
    let got = host_philox("kat", &inputs);
    for ((c, k, expected), got) in kats.iter().zip(&got) {
        assert_eq!(got, expected, "counter {c:08x?} key {k:08x?}");
    }
}

#[test]
fn header_matches_rust_on_a_million_random_counters_and_keys() {
    const CALLS: usize = 1_000_000;
    let mut rng = test_rng("philox");
    let inputs: Vec<([u32; 4], [u32; 2])> = (0..CALLS)
        .map(|i| {
            let mut c: [u32; 4] = rng.random();
            let mut k: [u32; 2] = rng.random();
            // Every 16th input takes extreme words, where carries and wrap-around happen.
            if i % 16 == 0 {
                let extremes = [0, 1, u32::MAX, u32::MAX - 1, 1 << 31];
                c = c.map(|w| {
                    if w & 1 == 0 {
                        extremes[w as usize % 5]
                    } else {
                        w
                    }
                });
                k = k.map(|w| {
                    if w & 1 == 0 {
                        extremes[w as usize % 5]
                    } else {
                        w
                    }
                });
            }
            (c, k)
        })
        .collect();
    let got = host_philox("random", &inputs);
    for ((c, k), got) in inputs.iter().zip(&got) {
        assert_eq!(*got, philox4x32_10(*c, *k), "counter {c:08x?} key {k:08x?}");
    }
}

/// One mask query: the kernels' MaskParams fields plus the element's (r, c).
#[derive(Debug, Clone, Copy)]
struct Query {
    seed: u64,
    subsequence: u64,
    p: f32,
    geometry: Geometry,
    r: u64,
    c: u64,
}

/// What the C++ header answers for one query.
#[derive(Debug, PartialEq)]
struct Answer {
    index: u64,
    keep: bool,
    keep_from_buffer: bool,
    enabled: bool,
    word: u32,
}

fn host_mask(name: &str, queries: &[Query]) -> Vec<Answer> {
    let words: Vec<u64> = queries
        .iter()
        .flat_map(|q| {
            [
                q.seed,
                q.subsequence,
                mask::threshold(q.p),
                q.geometry.row_offset,
                q.geometry.col_offset,
                q.geometry.n_global.expect("queries carry n_global"),
                q.r,
                q.c,
            ]
        })
        .collect();
    let out = bytes_u64(&run_driver("mask", name, &u64_bytes(&words)));
    assert_eq!(out.len(), queries.len() * 5, "driver output length");
    out.chunks_exact(5)
        .map(|a| Answer {
            index: a[0],
            keep: a[1] != 0,
            keep_from_buffer: a[2] != 0,
            enabled: a[3] != 0,
            word: a[4] as u32,
        })
        .collect()
}

/// What src/mask.rs and src/layer.rs say for one query.
fn rust_answer(q: &Query) -> Answer {
    let n_global = q.geometry.n_global.expect("queries carry n_global");
    // The shard's own width only matters when n_global is None; any width works here.
    let index = q
        .geometry
        .linear_index(n_global as usize, q.r as usize, q.c as usize);
    let keep = mask::keep(q.seed, q.subsequence, q.p, index);
    Answer {
        index,
        keep,
        keep_from_buffer: keep,
        enabled: mask::threshold(q.p) != 0,
        word: mask::word(q.seed, q.subsequence, index),
    }
}

#[test]
fn mask_header_matches_rust_keep_and_geometry() {
    const QUERIES: usize = 200_000;
    let mut rng = test_rng("mask");
    let fixed_p = [0.0f32, 1e-7, 0.1, 0.3, 0.5, 0.9, 0.999_999_9, 1.0];
    let queries: Vec<Query> = (0..QUERIES)
        .map(|i| {
            let p = if i % 2 == 0 {
                fixed_p[rng.random_range(0..fixed_p.len())]
            } else {
                rng.random::<f32>()
            };
            // Sizes from tiny to huge, keeping (row_offset + r + 1) * n_global < 2^63.
            let n_global: u64 = 1 << rng.random_range(0..31);
            let n_global = rng.random_range(n_global..=2 * n_global);
            let col_offset = rng.random_range(0..n_global);
            let c = rng.random_range(0..n_global - col_offset);
            let max_rows = (1u64 << 62) / n_global;
            let rows_bits = 64 - max_rows.leading_zeros();
            let row_limit = 1u64 << rng.random_range(0..rows_bits);
            let row_offset = rng.random_range(0..row_limit.min(max_rows) / 2 + 1);
            let r = rng.random_range(0..row_limit.min(max_rows) / 2 + 1);
            Query {
                seed: rng.random(),
                subsequence: rng.random(),
                p,
                geometry: Geometry {
                    row_offset,
                    col_offset,
                    n_global: Some(n_global),
                },
                r,
                c,
            }
        })
        .collect();
    let got = host_mask("mask", &queries);
    for (q, got) in queries.iter().zip(&got) {
        assert_eq!(*got, rust_answer(q), "{q:?}");
    }
}

#[test]
fn mask_header_reproduces_the_contract_keep_strings() {
    let cases = [
        (
            0x0123_4567_89ab_cdef_u64,
            0u64,
            0.5f32,
            "1100100111001001111101110101111011100100110100110011101000100100",
        ),
        (
            42,
            7,
            0.1,
            "1111111111111111111101110110111111111001111101111111111111111111",
        ),
        (
            u64::MAX,
            0xffff_ffff_ffff_fffe,
            0.9,
            "0000110000100000100000010000001010000000000000110000000000000000",
        ),
    ];
    for (seed, subsequence, p, expected) in cases {
        // The 64 indices as an 8x8 unsharded block, so the geometry path is exercised too.
        let queries: Vec<Query> = (0..64)
            .map(|i| Query {
                seed,
                subsequence,
                p,
                geometry: Geometry {
                    row_offset: 0,
                    col_offset: 0,
                    n_global: Some(8),
                },
                r: i / 8,
                c: i % 8,
            })
            .collect();
        let got: String = host_mask("strings", &queries)
            .iter()
            .map(|a| if a.keep { '1' } else { '0' })
            .collect();
        assert_eq!(
            got, expected,
            "seed {seed:#x} subsequence {subsequence:#x} p {p}"
        );
    }
}

#[test]
fn mask_params_layout_is_the_one_rust_mirrors() {
    // src/cuda/mod.rs mirrors this struct as #[repr(C)]: seven 8-byte fields, the f32 scale,
    // a u32 pad, then the record pointer; 72 bytes, 8-aligned. Its unit test
    // `mask_params_has_the_layout_of_the_kernels_struct` checks the Rust side against the same
    // numbers.
    let layout = bytes_u64(&run_driver("layout", "layout", &[]));
    assert_eq!(
        layout,
        [72, 8, 0, 8, 16, 24, 32, 40, 48, 56, 60, 64],
        "sizeof, alignof, then offsets of seed, subsequence, seed_subsequence, threshold, row_offset, \
         col_offset, n_global, scale, pad, record"
    );
}

#[path = "common/keep_boundary.rs"]
mod keep_boundary;
use keep_boundary::boundaries;

#[test]
fn mask_header_keeps_a_word_equal_to_the_threshold() {
    let mut queries = Vec::new();
    for b in boundaries() {
        // As an unsharded element of a 7-column output, and as column 0 of a shard whose first
        // row starts at the element.
        for (geometry, r, c) in [
            (
                Geometry {
                    row_offset: 0,
                    col_offset: 0,
                    n_global: Some(7),
                },
                b.index / 7,
                b.index % 7,
            ),
            (
                Geometry {
                    row_offset: 1,
                    col_offset: 0,
                    n_global: Some(b.index),
                },
                0,
                0,
            ),
        ] {
            for p in [b.p(), b.p_above()] {
                queries.push((
                    b,
                    Query {
                        seed: b.seed,
                        subsequence: b.subsequence,
                        p,
                        geometry,
                        r,
                        c,
                    },
                ));
            }
        }
    }
    let plain: Vec<Query> = queries.iter().map(|(_, q)| *q).collect();
    let got = host_mask("boundary", &plain);
    for ((b, q), got) in queries.iter().zip(&got) {
        assert_eq!(got.index, b.index, "{q:?}");
        assert_eq!(got.word, b.word, "{q:?}");
        let kept = q.p == b.p();
        assert_eq!(
            got.keep, kept,
            "{b:?} at p {}: word == threshold must be kept",
            q.p
        );
        assert_eq!(got.keep_from_buffer, kept, "{q:?}");
        assert_eq!(*got, rust_answer(q), "{q:?}");
    }
}
