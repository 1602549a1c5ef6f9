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

/// The stream-K variants of kernels/forward_sm90_sweep.cu (gemm/sm90/stream_k.cuh) and the
/// production config each reproduces bit for bit where its tiles fill whole waves (no tile is
/// shared out): elsewhere a tile's pieces are summed in another order.
pub(super) const FORWARD_SM90_STREAM_K_VARIANTS: [(&str, &str); 2] =
    [("wg128x256_sk", "wg128x256"), ("wg128x128_sk", "wg128x128")];

/// Stream-K cases, 128 x 256 tiles (9 of them for 300 x 520), each on its block count: whole
/// waves (nothing shared out); 2 waves and 1 tile on 4 blocks (a whole tile each, then 5 tiles'
/// 20 k-blocks in ranges of 5: every range but the first finishes a tile another began); 4
/// waves and 1 tile on 2 blocks with 9 k-blocks (ranges of 13 and 14); one wave and 2 tiles on
/// 7 blocks with 3 k-blocks (27 over 7: pieces of 1 to 3 k-blocks); one k-block per tile on 5
/// blocks (ranges of whole tiles, nothing to hand over); 5 tiles of 4 k-blocks on 3 blocks
/// (ranges of 6, 7 and 7: the second block finishes tile 1, runs tile 2 whole and contributes
/// to tile 3, three pieces); non-finite inputs, the keep rule's boundary vectors, a device seed
/// with a shard geometry, and the identity at p = 1, each on shared tiles. At 128 x 128 the
/// same cases have 15 tiles for 300 x 520: whole waves on 3 and 5 blocks; on 4 blocks 7 tiles'
/// 28 k-blocks in ranges of 7; on 2 blocks ranges of 13 and 14 again; on 7 blocks 8 tiles' 24
/// k-blocks in ranges of 3 and 4; for 640 x 256, 10 tiles on 3 blocks, ranges of 5, 5 and 6.
fn stream_k_cases(rng: &mut StdRng) -> Vec<(ForwardCase, Option<u32>)> {
    let base = ForwardCase::relu(LinearShape::new(300, 520, 200));
    let with_k = |k: usize| LinearShape::new(300, 520, k);
    let mut cases = vec![
        (base, Some(3)),
        (base, Some(4)),
        (
            ForwardCase {
                shape: with_k(568),
                ..base
            },
            Some(2),
        ),
        (
            ForwardCase {
                shape: with_k(136),
                p: 0.5,
                ..base
            },
            Some(7),
        ),
        (
            ForwardCase {
                shape: with_k(64),
                ..base
            },
            Some(5),
        ),
        (
            ForwardCase {
                shape: LinearShape::new(640, 256, 256),
                p: 0.5,
                ..base
            },
            Some(3),
        ),
        (
            ForwardCase {
                nonfinite: true,
                ..base
            },
            Some(4),
        ),
        (
            ForwardCase {
                shape: with_k(136),
                geometry: Geometry {
                    row_offset: 3 + u64::from(rng.random::<u32>()),
                    col_offset: 12,
                    n_global: Some(1004),
                },
                device_seed: true,
                ..base
            },
            Some(7),
        ),
        (
            ForwardCase {
                p: 1.0,
                nonlinearity: Nonlinearity::Identity,
                bias: false,
                ..base
            },
            Some(4),
        ),
    ];
    // The boundary vectors (a Philox word equal to the threshold: kept), with their n (so the
    // boundary element stays where it was) and more rows: 4 tiles of 4 k-blocks on 3 blocks,
    // ranges of 5, 5 and 6 k-blocks.
    cases.extend(
        forward_cases(rng)
            .into_iter()
            .filter(|c| c.seed_subsequence.is_some())
            .map(|c| {
                let shape = LinearShape::new(400, c.shape.n, 200);
                (ForwardCase { shape, ..c }, Some(3))
            }),
    );
    cases
}

/// Each stream-K variant against the reference, with every block of the grid running at once
/// (`co_resident`: a block that reads a partial before its flag says it is there reads the
/// workspace's NaN poison), twice on different schedules with bit-identical outputs (a tile's
/// pieces are summed in one fixed order), leaving every flag of the workspace zero, and bit for
/// bit against production where the tiles fill whole waves; the boundary vectors' element kept.
fn check_forward_sm90_stream_k<T: Raw>(seed: u64) {
    let (Some(sweep), Some(production)) = (driver("forward_sm90_sweep"), driver("forward_sm90"))
    else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let cases = stream_k_cases(&mut rng);
    let mut launches = Vec::new();
    let mut productions = Vec::new();
    let mut expected = Vec::new();
    for (v, &(variant, config)) in FORWARD_SM90_STREAM_K_VARIANTS.iter().enumerate() {
        for (case, blocks) in &cases {
            let launch_seed = rng.random::<u64>();
            for schedule in [rng.random::<u64>(), rng.random::<u64>()] {
                let (mut launch, want, spec) = forward_launch::<T>(
                    Planned::Sweep(variant),
                    case,
                    *blocks,
                    &mut StdRng::seed_from_u64(launch_seed),
                );
                launch.int("co_resident", 1).schedule(schedule);
                launches.push(launch);
                expected.push((want, spec, *blocks, v));
            }
            let (same, _, _) = forward_launch::<T>(
                Planned::Config(config),
                case,
                *blocks,
                &mut StdRng::seed_from_u64(launch_seed),
            );
            productions.push(same);
        }
    }
    run(&sweep, &launches);
    run(&production, &productions);
    let bits = |y: &[T]| -> Vec<u8> {
        let mut out = Vec::with_capacity(y.len() * T::BYTES);
        for &v in y {
            v.put(&mut out);
        }
        out
    };
    let mut whole_waves = [0; FORWARD_SM90_STREAM_K_VARIANTS.len()];
    let mut kept_on_boundary = 0;
    for ((pair, wants), same) in launches
        .chunks_exact(2)
        .zip(expected.chunks_exact(2))
        .zip(&productions)
    {
        let (want, spec, blocks, v) = &wants[0];
        let numbers = sweep_variant(FORWARD_SM90_STREAM_K_VARIANTS[*v].0);
        let blocks = blocks.expect("a stream-K case has a block count") as usize;
        let got = pair[0].output::<T>("y");
        check_layer_output(
            &pair[0].what,
            &got,
            want,
            &spec.dropout,
            &spec.geometry,
            spec.shape.n,
        );
        assert!(
            bits(&got) == bits(&pair[1].output::<T>("y")),
            "{}: two schedules gave different outputs",
            pair[0].what
        );
        let (n, d) = (spec.shape.n, &spec.dropout);
        if d.p > 0.0 && d.p < 1.0 {
            for (i, g) in got.iter().enumerate() {
                if on_boundary(d, &spec.geometry, n, i / n, i % n) {
                    assert!(
                        g.to_f64() != 0.0,
                        "{}: element {i} (word == threshold) was dropped",
                        pair[0].what
                    );
                    kept_on_boundary += 1;
                }
            }
        }
        for launch in pair {
            let ws = launch.output::<f32>("ws");
            let set: Vec<usize> = (0..STREAM_K_FLAGS)
                .filter(|&i| ws[i].to_bits() != 0)
                .collect();
            assert!(set.is_empty(), "{}: flags left set: {set:?}", launch.what);
        }
        let tiles = spec.shape.m.div_ceil(numbers.block_m as usize)
            * spec.shape.n.div_ceil(numbers.block_n as usize);
        let grid = tiles.min(blocks);
        if tiles % grid == 0 {
            whole_waves[*v] += 1;
            assert!(
                bits(&got) == bits(&same.output::<T>("y")),
                "{}: differs from {} though its tiles fill whole waves",
                pair[0].what,
                same.what
            );
        }
    }
    assert!(
        whole_waves.iter().all(|&cases| cases > 0),
        "a variant without a case of whole waves, whose production check never ran: \
         {whole_waves:?}"
    );
    assert_eq!(
        kept_on_boundary,
        FORWARD_SM90_STREAM_K_VARIANTS.len() * boundaries().len()
    );
}

#[test]
fn forward_sm90_stream_k_f16_matches_reference() {
    check_forward_sm90_stream_k::<f16>(0x5C_F16);
}

#[test]
fn forward_sm90_stream_k_bf16_matches_reference() {
    check_forward_sm90_stream_k::<bf16>(0x5C_BF16);
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
