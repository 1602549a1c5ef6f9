//! The keep-rule boundary vectors of tests/data/keep_boundary.txt, shared by the test crates
//! that check them (tests/mask_contract.rs, tests/philox_host.rs, tests/kernels_on_cpu/).

/// One keep-rule boundary vector of tests/data/keep_boundary.txt: the element at `index` of
/// (`seed`, `subsequence`) draws `word`, which is exactly the threshold of `p = word / 2^32`.
#[derive(Debug, Clone, Copy)]
pub struct Boundary {
    pub seed: u64,
    pub subsequence: u64,
    pub index: u64,
    pub word: u32,
}

impl Boundary {
    /// The f32 `p` whose threshold is `word` (exact: the words were chosen with at most 24
    /// significant bits).
    pub fn p(&self) -> f32 {
        (f64::from(self.word) / 4_294_967_296.0) as f32
    }

    /// The smallest f32 whose threshold exceeds `word` (so the element is dropped): the next
    /// f32 above `p()` is not always enough, since for a small word its threshold can still
    /// floor to `word`.
    pub fn p_above(&self) -> f32 {
        let target = (f64::from(self.word) + 1.0) / 4_294_967_296.0;
        let p = target as f32;
        if f64::from(p) < target {
            f32::from_bits(p.to_bits() + 1)
        } else {
            p
        }
    }
}

pub fn boundaries() -> Vec<Boundary> {
    include_str!("../data/keep_boundary.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .map(|h| u64::from_str_radix(h, 16).expect("hex field"))
                .collect();
            Boundary {
                seed: f[0],
                subsequence: f[1],
                index: f[2],
                word: f[3] as u32,
            }
        })
        .collect()
}
