//! Statistical and geometric properties of the mask contract (docs/mask-contract.md): the keep
//! rate matches 1 - p, decisions show no dependence between neighbours or consecutive subsequences,
//! sharded layers reproduce the unsharded mask, and a Philox word equal to the threshold is kept.
//!
//! Seeds are fixed, so these tests are deterministic: a pass here is a pass everywhere.

use fusedrop::mask;
use fusedrop::validate;
use fusedrop::Geometry;

/// The keep decisions of indices `0 .. len` for one (seed, subsequence, p).
fn decisions(seed: u64, subsequence: u64, p: f32, len: usize) -> Vec<bool> {
    let mut keep = vec![false; len];
    mask::keep_run(seed, subsequence, p, 0, &mut keep);
    keep
}

/// Chi-square statistic (1 degree of freedom) of the 2x2 contingency table of paired
/// decisions: large when the second decision depends on the first.
fn chi_square(pairs: impl Iterator<Item = (bool, bool)>) -> f64 {
    let mut table = [[0u64; 2]; 2];
    for (a, b) in pairs {
        table[usize::from(a)][usize::from(b)] += 1;
    }
    let [[n00, n01], [n10, n11]] = table.map(|row| row.map(|v| v as f64));
    let total = n00 + n01 + n10 + n11;
    let (row0, row1, col0, col1) = (n00 + n01, n10 + n11, n00 + n10, n01 + n11);
    let det = n00 * n11 - n01 * n10;
    total * det * det / (row0 * row1 * col0 * col1)
}

/// The 1 - 10^-4 quantile of the chi-square distribution with one degree of freedom: a
/// dependence test fails when its statistic exceeds this.
const CHI2_1DOF_CRITICAL_1E4: f64 = 15.137;

const PROBABILITIES: [f32; 3] = [0.1, 0.5, 0.9];

#[test]
fn threshold_is_within_2_pow_minus_32_of_p() {
    let two32 = 4_294_967_296.0f64;
    for p in [0.0f32, 1e-9, 0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 0.999_999, 1.0] {
        let t = mask::threshold(p);
        assert!(t <= 1 << 32, "p {p}: threshold {t} above 2^32");
        let drop_probability = t as f64 / two32;
        assert!(
            (drop_probability - f64::from(p)).abs() < 1.0 / two32,
            "p {p}: threshold {t} gives drop probability {drop_probability}"
        );
    }
}

#[test]
fn keep_rate_within_five_standard_deviations() {
    const DECISIONS: usize = 10_000_000;
    for (seed, p) in [(11u64, 0.1f32), (12, 0.5), (13, 0.9)] {
        let kept = decisions(seed, 3, p, DECISIONS)
            .iter()
            .filter(|&&k| k)
            .count() as f64;
        let q = 1.0 - mask::threshold(p) as f64 / 4_294_967_296.0;
        let n = DECISIONS as f64;
        let sigma = (n * q * (1.0 - q)).sqrt();
        let deviation = (kept - n * q) / sigma;
        assert!(
            deviation.abs() < 5.0,
            "p {p}: kept {kept} of {n}, expected {} (deviation {deviation:.2} sigma)",
            n * q
        );
    }
}

#[test]
fn no_dependence_between_neighbours() {
    const PAIRS: usize = 1_000_000;
    // Lag 1 and 4 (inside one Philox call and across calls), and one row apart for a 1000-wide
    // and a 1024-wide output.
    const LAGS: [usize; 4] = [1, 4, 1000, 1024];
    for p in PROBABILITIES {
        let keep = decisions(0x5eed_0000 + u64::from(p.to_bits()), 17, p, PAIRS + 1024);
        for lag in LAGS {
            let chi2 = chi_square((0..PAIRS).map(|i| (keep[i], keep[i + lag])));
            assert!(
                chi2 < CHI2_1DOF_CRITICAL_1E4,
                "p {p}, lag {lag}: chi-square {chi2:.2} exceeds {CHI2_1DOF_CRITICAL_1E4}"
            );
        }
    }
}

#[test]
fn no_dependence_between_consecutive_streams() {
    const PAIRS: usize = 1_000_000;
    for p in PROBABILITIES {
        let seed = 0xabcd_ef01_2345_6789;
        for subsequence in [0u64, 41, u64::MAX - 1] {
            let a = decisions(seed, subsequence, p, PAIRS);
            let b = decisions(seed, subsequence.wrapping_add(1), p, PAIRS);
            let chi2 = chi_square(a.iter().copied().zip(b.iter().copied()));
            assert!(
                chi2 < CHI2_1DOF_CRITICAL_1E4,
                "p {p}, subsequences {subsequence} and {}: chi-square {chi2:.2} exceeds \
                 {CHI2_1DOF_CRITICAL_1E4}",
                subsequence.wrapping_add(1)
            );
        }
    }
}

#[test]
fn chi_square_detects_dependence() {
    // The statistic itself: perfectly dependent pairs are far above the critical value and a
    // balanced independent table is zero, so the tests above can fail.
    let keep = decisions(5, 6, 0.5, 10_000);
    assert!(chi_square(keep.iter().map(|&k| (k, k))) > 1000.0);
    let balanced = [(false, false), (false, true), (true, false), (true, true)];
    assert_eq!(chi_square(balanced.iter().copied().cycle().take(400)), 0.0);
}

/// The decisions of an `[m, n]` block at `geometry`, row-major.
fn block_mask(
    seed: u64,
    subsequence: u64,
    p: f32,
    m: usize,
    n: usize,
    geometry: &Geometry,
) -> Vec<bool> {
    validate::check_geometry(geometry, m, n).expect("test geometry is valid");
    let mut out = Vec::with_capacity(m * n);
    for r in 0..m {
        for c in 0..n {
            out.push(mask::keep(
                seed,
                subsequence,
                p,
                geometry.linear_index(n, r, c),
            ));
        }
    }
    out
}

#[test]
fn column_and_row_shards_reproduce_the_unsharded_mask() {
    let (m, n, seed, subsequence, p) = (37, 103, 0x1234_5678_9abc_def0, 99, 0.3);
    let full = block_mask(seed, subsequence, p, m, n, &Geometry::UNSHARDED);
    assert!(full.iter().any(|&k| k) && full.iter().any(|&k| !k));

    // Uneven column shards, none a multiple of 4, so shard edges fall inside Philox calls.
    let widths = [13, 1, 50, 39];
    assert_eq!(widths.iter().sum::<usize>(), n);
    let mut col_offset = 0;
    for width in widths {
        let geometry = Geometry {
            row_offset: 0,
            col_offset: col_offset as u64,
            n_global: Some(n as u64),
        };
        let shard = block_mask(seed, subsequence, p, m, width, &geometry);
        for r in 0..m {
            assert_eq!(
                shard[r * width..(r + 1) * width],
                full[r * n + col_offset..r * n + col_offset + width],
                "column shard at offset {col_offset}, row {r}"
            );
        }
        col_offset += width;
    }

    // Row shards, and a block sharded both ways.
    for (row_offset, rows) in [(0, 5), (5, 31), (36, 1)] {
        let geometry = Geometry {
            row_offset: row_offset as u64,
            col_offset: 0,
            n_global: Some(n as u64),
        };
        let shard = block_mask(seed, subsequence, p, rows, n, &geometry);
        assert_eq!(shard, full[row_offset * n..(row_offset + rows) * n]);
    }
    let geometry = Geometry {
        row_offset: 7,
        col_offset: 21,
        n_global: Some(n as u64),
    };
    let shard = block_mask(seed, subsequence, p, 11, 30, &geometry);
    for r in 0..11 {
        assert_eq!(
            shard[r * 30..(r + 1) * 30],
            full[(7 + r) * n + 21..(7 + r) * n + 51]
        );
    }
}

#[test]
fn mask_does_not_depend_on_the_order_it_is_drawn_in() {
    // A pure function of the index: drawing backwards, in runs of any length, or one index at
    // a time gives the same decisions.
    let (seed, subsequence, p) = (77, 78, 0.5);
    let forward = decisions(seed, subsequence, p, 1000);
    for (i, &k) in forward.iter().enumerate().rev() {
        assert_eq!(k, mask::keep(seed, subsequence, p, i as u64));
    }
    let mut first = 0;
    for len in [1, 2, 3, 5, 7, 11, 13].iter().cycle() {
        if first >= 1000 {
            break;
        }
        let len = (*len).min(1000 - first);
        let mut run = vec![false; len];
        mask::keep_run(seed, subsequence, p, first as u64, &mut run);
        assert_eq!(run, forward[first..first + len]);
        first += len;
    }
}

#[path = "common/keep_boundary.rs"]
mod keep_boundary;
use keep_boundary::boundaries;

/// Keep iff r >= t at r == t exactly, which random tests meet with probability 2^-32.
#[test]
fn a_word_equal_to_the_threshold_is_kept() {
    let vectors = boundaries();
    assert_eq!(vectors.len(), 4);
    let mut slots = [false; 4];
    for b in &vectors {
        let p = b.p();
        assert_eq!(
            f64::from(p) * 4_294_967_296.0,
            f64::from(b.word),
            "{b:?}: p not exact"
        );
        assert_eq!(mask::word(b.seed, b.subsequence, b.index), b.word, "{b:?}");
        assert_eq!(mask::threshold(p), u64::from(b.word), "{b:?}");
        assert!(
            mask::keep(b.seed, b.subsequence, p, b.index),
            "{b:?}: r == t must be kept"
        );
        assert!(mask::threshold(b.p_above()) > u64::from(b.word));
        assert!(
            !mask::keep(b.seed, b.subsequence, b.p_above(), b.index),
            "{b:?}: r < t must drop"
        );
        // keep_run, from a start that puts the element at every position of a run.
        for start in b.index.saturating_sub(5)..=b.index {
            let mut run = vec![false; 9];
            mask::keep_run(b.seed, b.subsequence, p, start, &mut run);
            assert!(
                run[(b.index - start) as usize],
                "{b:?}: keep_run from {start}"
            );
            mask::keep_run(b.seed, b.subsequence, b.p_above(), start, &mut run);
            assert!(
                !run[(b.index - start) as usize],
                "{b:?}: keep_run from {start}"
            );
        }
        slots[(b.index & 3) as usize] = true;
    }
    assert_eq!(slots, [true; 4], "one vector per word position");
}
