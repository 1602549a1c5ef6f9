//! kernels/backward_sm90.cu (Hopper: dX and dW on the forward's wgmma/TMA main loop) and its
//! split-K clusters.

use super::*;

/// The backward cases the Hopper kernels take: every case above with n and k rounded up to
/// multiples of 8 (TMA's row-stride rule; the wrapper sends other shapes to backward_tc) and dW
/// requested (db-only calls take backward_tc too), each on 3 persistent blocks unless it names a
/// grid; plus products with several tiles per block and reductions longer than the ring, with a
/// shard geometry and the seed read from a device buffer.
pub(super) fn hopper_backward_cases() -> Vec<BackwardCase> {
    let mut cases: Vec<BackwardCase> = backward_cases()
        .into_iter()
        .filter(|c| c.weight_grad)
        .map(|c| {
            let LinearShape { m, n, k } = c.shape;
            BackwardCase {
                shape: LinearShape::new(m, n.next_multiple_of(8), k.next_multiple_of(8)),
                grid_x: c.grid_x.or(Some(3)),
                ..c
            }
        })
        .collect();
    let base = BackwardCase {
        // dX: 2 x 3 tiles, 5 k-blocks of n; dW: 3 x 3 tiles, 4 k-blocks of m. The rings (4
        // stages) wrap within and across tiles.
        shape: LinearShape::new(200, 264, 328),
        nonlinearity: Nonlinearity::Relu,
        p: 0.1,
        geometry: Geometry::UNSHARDED,
        accumulate: false,
        weight_grad: true,
        grid_x: Some(2),
        nonfinite: false,
        seed_subsequence: None,
        device_seed: false,
        splits: 1,
        track_proxy_stores: false,
    };
    cases.push(base);
    cases.push(BackwardCase {
        nonlinearity: Nonlinearity::Identity,
        p: 0.5,
        accumulate: true,
        grid_x: Some(1),
        ..base
    });
    cases.push(BackwardCase {
        shape: LinearShape::new(131, 136, 72),
        nonlinearity: Nonlinearity::Identity,
        geometry: Geometry {
            row_offset: 5,
            col_offset: 7,
            n_global: Some(1001),
        },
        device_seed: true,
        splits: 1,
        ..base
    });
    // The identity's dX draws with the forward's paired draws (lane pairs share Philox calls when
    // n_global and col_offset are multiples of 4): a shard that allows them (col_offset 12) and
    // one whose n_global would but col_offset does not (6), at a large row offset.
    for col_offset in [12, 6] {
        cases.push(BackwardCase {
            shape: LinearShape::new(131, 136, 72),
            nonlinearity: Nonlinearity::Identity,
            p: 0.5,
            geometry: Geometry {
                row_offset: 3 << 32,
                col_offset,
                n_global: Some(1004),
            },
            ..base
        });
    }
    // NaN and infinities in Y under ReLU with a shard geometry whose pairs straddle two Philox
    // calls (the unsharded cases above have n a multiple of 8, so their pairs never do): the
    // mask redrawn where Y is NaN, at the shard's indices.
    cases.push(BackwardCase {
        shape: LinearShape::new(70, 80, 64),
        p: 0.5,
        geometry: Geometry {
            row_offset: 5,
            col_offset: 7,
            n_global: Some(1001),
        },
        nonfinite: true,
        ..base
    });
    cases
}

/// The Hopper backward's configurations without split-K.
pub(super) const BACKWARD_SM90_CONFIGS: [&str; 2] = ["wg128x256", "wg128x128"];

fn check_backward_sm90<T: Raw>(seed: u64) {
    for (i, config) in BACKWARD_SM90_CONFIGS.iter().enumerate() {
        check_backward_cases::<T>(
            "backward_sm90",
            config,
            &hopper_backward_cases(),
            seed + i as u64,
        );
    }
}

#[test]
fn backward_sm90_f16_matches_reference() {
    check_backward_sm90::<f16>(0x9B16);
}

#[test]
fn backward_sm90_bf16_matches_reference() {
    check_backward_sm90::<bf16>(0x9BBF);
}

/// The split-K configurations (clusters of 2, 4 or 8 blocks per tile) and their cluster sizes.
pub(super) const BACKWARD_SM90_SPLIT_CONFIGS: [(&str, usize); 3] =
    [("wg128x128s2", 2), ("wg128x128s4", 4), ("wg128x128s8", 8)];

/// The lists above and tma_store.rs's configurations name every Hopper backward configuration of
/// the launch table (sorted): one added there cannot go unchecked here.
#[test]
fn the_checked_lists_name_every_hopper_backward_configuration() {
    let mut checked: Vec<&str> = BACKWARD_SM90_CONFIGS
        .iter()
        .copied()
        .chain(BACKWARD_SM90_SPLIT_CONFIGS.iter().map(|&(name, _)| name))
        .chain(super::tma_store::TMA_STORE_CONFIGS.map(|(name, _)| name))
        .collect();
    let mut table: Vec<&str> = launch_table::ALL
        .iter()
        .filter_map(|v| v.name.strip_prefix("backward_"))
        .filter(|name| name.starts_with("wg"))
        .collect();
    checked.sort_unstable();
    table.sort_unstable();
    assert_eq!(checked, table);
}

/// The Hopper cases with both reductions (n for dX, m for dW) raised to `splits + 1` k-blocks,
/// which split unevenly over the blocks of a cluster (each gets at least one).
pub(super) fn hopper_split_backward_cases(splits: usize) -> Vec<BackwardCase> {
    let least = (splits + 1) * 64 - 24;
    hopper_backward_cases()
        .into_iter()
        .map(|c| {
            let LinearShape { m, n, k } = c.shape;
            let n = n.max(least);
            // A shard's logical output keeps room for its wider columns.
            let n_global = c
                .geometry
                .n_global
                .map(|g| g.max(c.geometry.col_offset + n as u64));
            BackwardCase {
                shape: LinearShape::new(m.max(least), n, k),
                geometry: Geometry {
                    n_global,
                    ..c.geometry
                },
                ..c
            }
        })
        .collect()
}

fn check_backward_sm90_split<T: Raw>(seed: u64) {
    for (i, (config, splits)) in BACKWARD_SM90_SPLIT_CONFIGS.iter().enumerate() {
        check_backward_cases::<T>(
            "backward_sm90",
            config,
            &hopper_split_backward_cases(*splits),
            seed + i as u64,
        );
    }
}

#[test]
fn backward_sm90_split_f16_matches_reference() {
    check_backward_sm90_split::<f16>(0x5B16);
}

#[test]
fn backward_sm90_split_bf16_matches_reference() {
    check_backward_sm90_split::<bf16>(0x5BBF);
}

/// The two 200 x 264 x 328 cases of `cases` (ReLU; the identity with p = 0.5: 2 x 3 and 3 x 3
/// tiles over rings that wrap), with each thread's fence.proxy.async checked on its own
/// (`track_proxy_stores`).
pub(super) fn fences_tracked(cases: Vec<BackwardCase>) -> Vec<BackwardCase> {
    let tracked: Vec<BackwardCase> = cases
        .into_iter()
        .filter(|c| c.shape == LinearShape::new(200, 264, 328))
        .map(|c| BackwardCase {
            track_proxy_stores: true,
            ..c
        })
        .collect();
    assert_eq!(tracked.len(), 2, "the two 200 x 264 x 328 cases");
    tracked
}

/// The Hopper backward with each thread's fence.proxy.async checked on its own
/// (`track_proxy_stores`): dW's consumers form dZᵀ in the landed stage with ordinary stores, and
/// each must fence its own before the warpgroup's wgmmas read the stage. The two cases of 2 x 3
/// and 3 x 3 tiles over rings that wrap (ReLU; the identity with p = 0.5), unsplit and in
/// clusters of 2; f16 only, since the fences do not depend on the type and the tracking is slow.
#[test]
fn backward_sm90_fences_are_checked_per_thread() {
    check_backward_cases::<f16>(
        "backward_sm90",
        "wg128x128",
        &fences_tracked(hopper_backward_cases()),
        0xFE9C,
    );
    check_backward_cases::<f16>(
        "backward_sm90",
        "wg128x128s2",
        &fences_tracked(hopper_split_backward_cases(2)),
        0xFE9D,
    );
}
