//! kernels/forward_sm90.cu (Hopper: TMA, mbarrier ring, wgmma, persistent grid), its split-K
//! clusters and its sweep variants.

use super::*;

const FORWARD_SM90_CONFIGS: [&str; 3] = ["wg128x256", "wg128x128", "wg64x128"];

/// The forward cases the Hopper kernel takes (k a multiple of 8, 16-byte aligned X and W; the
/// wrapper sends the others to forward_tc: so every case above with such a shape, non-finite
/// inputs and boundary vectors included), each with a persistent block count, plus shapes with
/// many tiles per block so that the ring wraps across tiles, and a long reduction, and b alone
/// one element off 4-byte alignment with even and odd n (the biases read one by one). Odd n
/// takes the element stores instead of the pair stores.
fn hopper_forward_cases(rng: &mut StdRng) -> Vec<(ForwardCase, Option<u32>)> {
    let mut cases: Vec<(ForwardCase, Option<u32>)> = forward_cases(rng)
        .into_iter()
        .filter(|c| c.shape.k % 8 == 0 && c.misalign == 0 && c.grid_y.is_none())
        .map(|c| (c, Some(3)))
        .collect();
    let base = ForwardCase::relu(LinearShape::new(300, 300, 200));
    // 15 tiles of 64 x 128 (or 6 of 128 x 128, 6 of 128 x 256) over 2 blocks, and over one:
    // every block walks several tiles and the ring wraps several times.
    cases.push((base, Some(2)));
    cases.push((
        ForwardCase {
            p: 0.5,
            nonlinearity: Nonlinearity::Identity,
            bias: false,
            ..base
        },
        Some(1),
    ));
    // A reduction of 9 k-blocks (more than some rings have stages), odd n, a shard geometry with
    // the seed read from a device buffer.
    cases.push((
        ForwardCase {
            shape: LinearShape::new(129, 131, 568),
            geometry: Geometry {
                row_offset: 5 + u64::from(rng.random::<u32>()),
                col_offset: 7,
                n_global: Some(1001),
            },
            device_seed: true,
            ..base
        },
        Some(2),
    ));
    // b one element off 4-byte alignment (X, W and Y aligned, so the Hopper kernel runs): the
    // biases read one by one instead of in pairs (gemm/sm90/epilogue.cuh, bias_pair), with even
    // n (the pair stores, and the TMA-store variants) and odd n.
    for n in [136, 131] {
        cases.push((
            ForwardCase {
                shape: LinearShape::new(129, n, 136),
                bias_misalign: 1,
                p: 0.5,
                ..base
            },
            Some(2),
        ));
    }
    // Shards at a large row offset whose columns keep each lane pair's four columns in one
    // Philox call (n_global and col_offset multiples of 4: paired draws, gemm/sm90/epilogue.cuh),
    // and whose n_global would allow it but col_offset does not (every pair straddles two calls).
    for col_offset in [12, 6] {
        cases.push((
            ForwardCase {
                shape: LinearShape::new(129, 200, 136),
                geometry: Geometry {
                    row_offset: 3 + u64::from(rng.random::<u32>()),
                    col_offset,
                    n_global: Some(1004),
                },
                p: 0.5,
                ..base
            },
            Some(2),
        ));
    }
    cases
}

fn check_forward_sm90<T: Raw>(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cases = hopper_forward_cases(&mut rng);
    check_forward_cases::<T>("forward_sm90", &FORWARD_SM90_CONFIGS, &cases, &mut rng);
}

#[test]
fn forward_sm90_f16_matches_reference() {
    check_forward_sm90::<f16>(0x90F16);
}

#[test]
fn forward_sm90_bf16_matches_reference() {
    check_forward_sm90::<bf16>(0x90BF16);
}

/// The split-K configs (clusters of 2 or 4 blocks per tile, gemm/sm90/split_k.cuh).
const FORWARD_SM90_SPLIT_CONFIGS: [&str; 4] =
    ["wg64x128s2", "wg64x128s4", "wg128x128s2", "wg128x128s4"];

/// The lists above name every Hopper forward configuration of the launch table (sorted): one
/// added there cannot go unchecked here.
#[test]
fn the_checked_lists_name_every_hopper_forward_configuration() {
    let mut checked: Vec<&str> = FORWARD_SM90_CONFIGS
        .iter()
        .chain(&FORWARD_SM90_SPLIT_CONFIGS)
        .copied()
        .collect();
    let mut table: Vec<&str> = launch_table::ALL
        .iter()
        .filter_map(|v| v.name.strip_prefix("forward_"))
        .filter(|name| name.starts_with("wg"))
        .collect();
    checked.sort_unstable();
    table.sort_unstable();
    assert_eq!(checked, table);
}

/// The Hopper cases with k raised to at least 5 k-blocks (the wrapper gives every block of a
/// cluster at least one; 5 splits unevenly over 2 and 4 blocks), each on its count of clusters:
/// with fewer clusters than tiles the partial areas and their barriers turn over several times.
fn hopper_split_cases(rng: &mut StdRng) -> Vec<(ForwardCase, Option<u32>)> {
    hopper_forward_cases(rng)
        .into_iter()
        .map(|(case, blocks)| {
            let k = case.shape.k.max(5 * 64 - 24);
            let shape = LinearShape::new(case.shape.m, case.shape.n, k);
            (ForwardCase { shape, ..case }, blocks)
        })
        .collect()
}

fn check_forward_sm90_split<T: Raw>(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cases = hopper_split_cases(&mut rng);
    check_forward_cases::<T>(
        "forward_sm90",
        &FORWARD_SM90_SPLIT_CONFIGS,
        &cases,
        &mut rng,
    );
}

#[test]
fn forward_sm90_split_f16_matches_reference() {
    check_forward_sm90_split::<f16>(0x5F16);
}

#[test]
fn forward_sm90_split_bf16_matches_reference() {
    check_forward_sm90_split::<bf16>(0x5BF16);
}

/// The tuning variants of kernels/forward_sm90_sweep.cu and the production config whose output
/// each must reproduce bit for bit (the same wgmma m64nNk16 sequence and epilogue arithmetic for
/// every output element: the config with the same column tile).
pub(super) const FORWARD_SM90_SWEEP_VARIANTS: [(&str, &str); 14] = [
    ("wg128x256_st3", "wg128x256"),
    ("wg128x256_tmastore", "wg128x256"),
    ("wg128x256_mc2", "wg128x256"),
    ("wg128x256_mc2_tmastore", "wg128x256"),
    ("wg128x128_tmastore", "wg128x128"),
    ("wg128x128_mc2", "wg128x128"),
    ("wg64x256_pp", "wg128x256"),
    ("wg64x256_pp_tmastore", "wg128x256"),
    ("wg128x128_pp", "wg128x128"),
    ("wg128x128_pp_tmastore", "wg128x128"),
    ("wg128x256_g4", "wg128x256"),
    ("wg128x256_g16", "wg128x256"),
    ("wg128x128_g16", "wg128x128"),
    ("wg128x256_unpaired", "wg128x256"),
];

/// The Hopper cases, plus shapes for the clusters of the multicast variants: an odd number of
/// row tiles (the last cluster's second block has no rows of Y, but still loads its half of W
/// for the first) with a partial last column tile, over fewer clusters than cluster tiles so
/// each walks several; a reduction longer than every ring, on one cluster; and more row tiles than
/// a group of the tile order holds at 4 (6 row tiles), over fewer blocks than tiles. The
/// TMA-store variants take the cases whose Y rows start 16-byte aligned (n a multiple of 8).
fn hopper_sweep_cases(rng: &mut StdRng) -> Vec<(ForwardCase, Option<u32>)> {
    let mut cases = hopper_forward_cases(rng);
    let base = ForwardCase::relu(LinearShape::new(300, 520, 200));
    cases.push((base, Some(2)));
    cases.push((
        ForwardCase {
            shape: LinearShape::new(129, 136, 568),
            nonlinearity: Nonlinearity::Identity,
            p: 0.5,
            bias: false,
            ..base
        },
        Some(1),
    ));
    cases.push((
        ForwardCase {
            shape: LinearShape::new(650, 264, 64),
            nonlinearity: Nonlinearity::Identity,
            ..base
        },
        Some(5),
    ));
    cases
}

fn check_forward_sm90_sweep<T: Raw>(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cases = hopper_sweep_cases(&mut rng);
    check_sweep_variants::<T>(
        ("forward_sm90_sweep", "forward_sm90"),
        &FORWARD_SM90_SWEEP_VARIANTS,
        &|variant, case| !variant.contains("tmastore") || case.shape.n % 8 == 0,
        &cases,
        &mut rng,
    );
}

#[test]
fn forward_sm90_sweep_f16_matches_reference_and_production() {
    check_forward_sm90_sweep::<f16>(0x5EE9_90F1);
}

#[test]
fn forward_sm90_sweep_bf16_matches_reference_and_production() {
    check_forward_sm90_sweep::<bf16>(0x5EE9_90BF);
}

/// The TMA-store variants with each thread's fence.proxy.async checked on its own
/// (`track_proxy_stores`): each consumer warpgroup stages its tile of Y with ordinary stores, and
/// every thread must fence its own before the warpgroup's first thread issues the TMA stores.
/// One case, 300 x 520 x 200 on 2 persistent blocks or clusters (several tiles each, so a
/// staging area is written again after its stores read it), in f16, against the reference:
/// the tracking is slow, and the fences do not depend on the type.
#[test]
fn forward_sm90_tma_store_fences_are_checked_per_thread() {
    let Some(exe) = driver("forward_sm90_sweep") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(0xFE9F);
    let case = ForwardCase::relu(LinearShape::new(300, 520, 200));
    let mut launches = Vec::new();
    let mut expected = Vec::new();
    for (variant, _) in FORWARD_SM90_SWEEP_VARIANTS
        .iter()
        .filter(|(variant, _)| variant.contains("tmastore"))
    {
        let (mut launch, want, spec) =
            forward_launch::<f16>(Planned::Sweep(variant), &case, Some(2), &mut rng);
        launch.int("track_proxy_stores", 1);
        launches.push(launch);
        expected.push((want, spec));
    }
    assert_eq!(launches.len(), 5, "the five TMA-store variants");
    run(&exe, &launches);
    for (launch, (want, spec)) in launches.iter().zip(&expected) {
        check_layer_output(
            &launch.what,
            &launch.output::<f16>("y"),
            want,
            &spec.dropout,
            &spec.geometry,
            spec.shape.n,
        );
    }
}
