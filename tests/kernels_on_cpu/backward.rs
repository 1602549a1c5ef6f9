//! The backward kernels: the cases and checks every family shares, then the SIMT
//! (kernels/backward_simt.cu) and mma.sync (kernels/backward_tc.cu) products with their split-K.

use super::*;

mod dz_from_dx;
mod hopper;
mod one_launch;
mod plans;
mod tma_store;
mod transform_warps;
mod workspace;

#[derive(Debug, Clone, Copy)]
pub(crate) struct BackwardCase {
    pub(crate) shape: LinearShape,
    pub(crate) nonlinearity: Nonlinearity,
    pub(crate) p: f32,
    pub(crate) geometry: Geometry,
    pub(crate) accumulate: bool,
    pub(crate) weight_grad: bool,
    pub(crate) grid_x: Option<u32>,
    pub(crate) nonfinite: bool,
    /// A fixed (seed, subsequence) instead of random ones (the keep-rule boundary vectors).
    pub(crate) seed_subsequence: Option<(u64, u64)>,
    /// The (seed, subsequence) pair read from a device buffer (`MaskParams::seed_subsequence`).
    pub(crate) device_seed: bool,
    /// Blocks per output tile of the classic kernels' split-K (1: no split), each writing its
    /// share to a poisoned f32 workspace that the split sum then adds.
    pub(crate) splits: u32,
    /// Whether the harness checks each thread's fence.proxy.async on its own (the Hopper
    /// kernels' shared-memory stores credited to the thread that made them; several times
    /// slower, so for a few cases: docs/HARNESS.md, "The async proxy").
    pub(crate) track_proxy_stores: bool,
}

fn backward_cases() -> Vec<BackwardCase> {
    let mut cases = Vec::new();
    // m = 1 makes dW an outer product and n = 1 dX one: every element a single term, checked on
    // its own (check_elementwise), as every element of every case is.
    let shapes = [
        (1, 1, 1),
        (37, 29, 45),
        (70, 75, 64),
        (130, 66, 40),
        (1, 75, 64),
        (70, 1, 64),
    ];
    let rates = [0.0f32, 0.1, 0.5, 1.0];
    for (s, &(m, n, k)) in shapes.iter().enumerate() {
        for (i, &p) in rates.iter().enumerate() {
            cases.push(BackwardCase {
                shape: LinearShape::new(m, n, k),
                nonlinearity: if (i + s) % 2 == 0 {
                    Nonlinearity::Relu
                } else {
                    Nonlinearity::Identity
                },
                p,
                geometry: Geometry::UNSHARDED,
                accumulate: (i + s) % 3 == 1,
                weight_grad: true,
                grid_x: None,
                nonfinite: false,
                seed_subsequence: None,
                device_seed: false,
                splits: 1,
                track_proxy_stores: false,
            });
        }
    }
    let base = BackwardCase {
        shape: LinearShape::new(70, 75, 64),
        nonlinearity: Nonlinearity::Identity,
        p: 0.5,
        geometry: Geometry {
            row_offset: 7,
            col_offset: 5,
            n_global: Some(203),
        },
        accumulate: false,
        weight_grad: true,
        grid_x: Some(1),
        nonfinite: false,
        seed_subsequence: None,
        device_seed: false,
        splits: 1,
        track_proxy_stores: false,
    };
    cases.push(base);
    cases.push(BackwardCase {
        grid_x: Some(3),
        accumulate: true,
        nonlinearity: Nonlinearity::Relu,
        ..base
    });
    cases.push(BackwardCase {
        weight_grad: false,
        grid_x: None,
        ..base
    });
    // Several row and column tiles of both products (4 x 4 of 64 x 64 for dX), walked by 3
    // blocks in the grouped tile order.
    cases.push(BackwardCase {
        shape: LinearShape::new(200, 75, 200),
        nonlinearity: Nonlinearity::Relu,
        p: 0.1,
        geometry: Geometry::UNSHARDED,
        grid_x: Some(3),
        ..base
    });
    // Keep-rule boundary vectors through the identity backward's redrawn mask (a 13x75 dY holds
    // every vector's index; dY is 1 there so the element weighs in every gradient).
    for b in boundaries() {
        for p in [b.p(), b.p_above()] {
            cases.push(BackwardCase {
                shape: LinearShape::new(13, 75, 8),
                p,
                geometry: Geometry::UNSHARDED,
                grid_x: None,
                seed_subsequence: Some((b.seed, b.subsequence)),
                ..base
            });
        }
    }
    // NaN and infinities in dY and (through X) in the saved Y, every rate, both activations:
    // docs/mask-contract.md, "Backward without a mask".
    for (i, &p) in [0.0f32, 0.1, 0.5, 1.0].iter().enumerate() {
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            cases.push(BackwardCase {
                shape: LinearShape::new(70, 75, 64),
                nonlinearity,
                p,
                geometry: Geometry::UNSHARDED,
                accumulate: i == 1,
                grid_x: None,
                nonfinite: true,
                ..base
            });
        }
    }
    // The (seed, subsequence) pair from a device buffer (what a captured graph replays with):
    // the identity's redrawn mask, and ReLU's redraw where the saved Y is NaN, under a shard
    // geometry, so that the mask index's row and column offsets and n_global are used too.
    for nonlinearity in [Nonlinearity::Identity, Nonlinearity::Relu] {
        cases.push(BackwardCase {
            nonlinearity,
            grid_x: None,
            nonfinite: true,
            device_seed: true,
            geometry: Geometry {
                row_offset: 5,
                col_offset: 7,
                n_global: Some(1001),
            },
            ..base
        });
    }
    // Rows of dY that are whole 16-byte units (n a multiple of 8) while k is not: the general
    // entry points' vector copies of dY and Y (the aligned ones need k % 8 == 0 too).
    cases.push(BackwardCase {
        shape: LinearShape::new(37, 64, 45),
        nonlinearity: Nonlinearity::Relu,
        p: 0.1,
        geometry: Geometry::UNSHARDED,
        grid_x: None,
        ..base
    });
    cases
}

/// Checks `fusedrop_backward_{dx,dw}_<config>_<dtype>` from tests/harness/<driver_name>.cpp.
fn check_backward<T: Raw>(driver_name: &str, config: &str, seed: u64) {
    check_backward_cases::<T>(driver_name, config, &backward_cases(), seed);
}

/// A value's bits with every NaN the same (NaN payloads are not part of the contract).
pub(crate) fn class_bits<T: Raw>(v: T) -> u64 {
    let v = v.to_f64();
    if v.is_nan() {
        u64::MAX
    } else {
        v.to_bits()
    }
}

/// Asserts that the outputs `names` of launch `got` equal those of `want` bit for bit (NaN
/// payloads aside); `want_is` names `want` in the message.
pub(crate) fn assert_same_output_bits<T: Raw>(
    got: &Launch,
    want: &Launch,
    names: &[&str],
    want_is: &str,
) {
    for &name in names {
        let bits = |launch: &Launch| -> Vec<u64> {
            launch
                .output::<T>(name)
                .into_iter()
                .map(class_bits)
                .collect()
        };
        assert!(
            bits(got) == bits(want),
            "{name} of {}: differs from {want_is}",
            got.what
        );
    }
}

/// What a backward product reads as dY, and whether it writes dZ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProductInput {
    /// dY, and Y for ReLU.
    Dy,
    /// dY times the mask from the workspace `ws` (the identity's pre-pass): no Y, and the
    /// launch's mask switched off.
    PremaskedDy,
    /// dY and Y as `Dy`, with the Hopper dX kernel writing dZ / scale to the workspace `ws`
    /// (`BackwardKernel::HopperDzFromDx`).
    DyWritingDz,
    /// dZ / scale from the workspace `ws` (dW after `DyWritingDz`): no Y, and the launch's mask
    /// switched off.
    Dz,
}

/// A backward product's launches (the product, then its split sums when `case.splits > 1`) as
/// the library plans them (`product_plan`), reading what `input` says, writing dW when the case
/// asks for it and db always; its buffers and mask parameters still to add.
/// `config` names the configuration, with `_aligned` for the mma.sync kernels' entry points for
/// aligned operands, `_transform` for the Hopper dW kernels with transform warps. A Hopper configuration runs on a GPU that runs the case's `grid_x` (else 3)
/// of its blocks or clusters at once; a classic one takes `grid_x` as its grid when the case
/// gives one. The split-K partial sums go to a poisoned workspace `ws`, 256 bytes in.
pub(crate) fn backward_product_launch<T: Raw>(
    config: &str,
    product: BackwardProduct,
    spec: &LayerSpec,
    input: ProductInput,
    case: &BackwardCase,
    what: String,
    rng: &mut StdRng,
) -> Launch {
    let (config, aligned) = match config.strip_suffix("_aligned") {
        Some(base) => (base, true),
        None => (config, false),
    };
    let (config, transform_warps) = match config.strip_suffix("_transform") {
        Some(base) => (base, true),
        None => (config, false),
    };
    let hopper = config.starts_with("wg");
    let splits = if hopper { 1 } else { case.splits };
    let from_workspace = matches!(input, ProductInput::PremaskedDy | ProductInput::Dz);
    assert!(
        splits == 1 || !from_workspace,
        "a split product reading dY times the mask from the workspace is not modelled here"
    );
    let operands = ProductOperands {
        dy: if from_workspace {
            Operand::Workspace
        } else {
            Operand::DY
        },
        y: !from_workspace && spec.nonlinearity == Nonlinearity::Relu,
        dz: input == ProductInput::DyWritingDz,
        transform_warps,
        out: product == BackwardProduct::Dx || case.weight_grad,
        db: product == BackwardProduct::Dw,
        aligned,
        partial_at: 256,
    };
    let plan_on = |blocks: usize| {
        product_plan::<T>(
            config,
            splits,
            product,
            spec,
            operands,
            case.accumulate,
            ResidentClusters::uniform(blocks),
        )
        .unwrap_or_else(|e| panic!("{config} {product:?} of {what}: {e}"))
    };
    let mut plans = plan_on(132);
    if hopper {
        plans = plan_on(case.grid_x.unwrap_or(3) as usize * plans[0].cluster as usize);
    }
    let mut launch = Launch::new(&plans[0].function, what, rng);
    for plan in &plans {
        launch.plan(plan);
    }
    if let (false, Some(g)) = (hopper, case.grid_x) {
        launch.int("grid_x", g);
    }
    if case.track_proxy_stores {
        launch.int("track_proxy_stores", 1);
    }
    if splits > 1 {
        let LinearShape { m, n, k } = spec.shape;
        let shares = match product {
            BackwardProduct::Dx => m * k,
            BackwardProduct::Dw => n * k + n,
        };
        launch.buffer(
            "ws",
            &poisoned::<f32>(64 + splits as usize * shares),
            0,
            false,
        );
    }
    launch
}

/// One backward case's inputs (fresh random values, non-finite ones planted where the case asks
/// for them), the gradients' starting values (poisoned, or random when accumulating) and what
/// each gradient must become: the f64 reference (plus the starting value when accumulating) and
/// the element-wise bound of `check_elementwise`, as (dX, dW, db).
pub(crate) struct BackwardInputs<T> {
    pub(crate) spec: LayerSpec,
    pub(crate) x: Vec<T>,
    pub(crate) w: Vec<T>,
    pub(crate) dy: Vec<T>,
    /// The forward's Y (read for ReLU only).
    pub(crate) y: Vec<T>,
    pub(crate) start: (Vec<T>, Vec<T>, Vec<T>),
    want: (Vec<f64>, Vec<f64>, Vec<f64>),
    bounds: (Vec<f64>, Vec<f64>, Vec<f64>),
}

impl<T: Raw> BackwardInputs<T> {
    pub(crate) fn new(case: &BackwardCase, rng: &mut StdRng) -> Self {
        let LinearShape { m, n, k } = case.shape;
        let (seed, subsequence) = case
            .seed_subsequence
            .unwrap_or_else(|| (rng.random(), rng.random_range(0..16)));
        let dropout = DropoutSpec::new(case.p, seed, subsequence);
        let spec =
            LayerSpec::new(case.shape, case.nonlinearity, dropout).with_geometry(case.geometry);
        let mut x = random_values::<T>(m * k, rng);
        let w = random_values::<T>(n * k, rng);
        let b = random_values::<T>(n, rng);
        let mut dy = random_values::<T>(m * n, rng);
        if case.nonfinite {
            // X rows 3 and 40 make whole rows of Y NaN or +-inf (so ReLU redraws the mask there);
            // dY gets single non-finite elements spread over rows and columns.
            plant(&mut x, k, &[(3, 5), (40, 0)]);
            let at: Vec<(usize, usize)> = (0..12).map(|i| (5 * i + 1, (7 * i + 2) % n)).collect();
            plant(&mut dy, n, &at);
        }
        if case.seed_subsequence.is_some() {
            for b in boundaries()
                .iter()
                .filter(|b| (b.seed, b.subsequence) == (seed, subsequence))
            {
                dy[b.index as usize] = T::from_f64(1.0);
            }
        }
        let relu = case.nonlinearity == Nonlinearity::Relu;
        let y = reference::forward(&spec, &x, &w, Some(&b)).expect("valid reference inputs");
        let grads = reference::backward_f64(&spec, &x, &w, &dy, relu.then_some(&y[..]))
            .expect("valid reference inputs");
        // The same reductions over absolute values (the mask and ReLU's activity unchanged):
        // each element's sum of |terms|, for the element-wise bound.
        let abs = |v: &[T]| -> Vec<T> { v.iter().map(|e| T::from_f64(e.to_f64().abs())).collect() };
        let abs_grads =
            reference::backward_f64(&spec, &abs(&x), &abs(&w), &abs(&dy), relu.then_some(&y[..]))
                .expect("valid reference inputs");
        let init = |len: usize, rng: &mut StdRng| {
            if case.accumulate {
                random_values::<T>(len, rng)
            } else {
                poisoned::<T>(len)
            }
        };
        let start = (init(m * k, rng), init(n * k, rng), init(n, rng));
        let plus = |start: &[T], grad: &[f64]| -> Vec<f64> {
            if case.accumulate {
                start
                    .iter()
                    .zip(grad)
                    .map(|(s, g)| s.to_f64() + g)
                    .collect()
            } else {
                grad.to_vec()
            }
        };
        let want = (
            plus(&start.0, &grads.dx),
            plus(&start.1, &grads.dw),
            plus(&start.2, &grads.db),
        );
        let abs_plus = |start: &[T], sums: &[f64]| -> Vec<f64> {
            let start = abs(start);
            plus(&start, sums)
        };
        let bounds = (
            abs_plus(&start.0, &abs_grads.dx),
            abs_plus(&start.1, &abs_grads.dw),
            abs_plus(&start.2, &abs_grads.db),
        );
        Self {
            spec,
            x,
            w,
            dy,
            y,
            start,
            want,
            bounds,
        }
    }

    /// Checks the gradients `case`'s launches wrote (`dw` when the case asks for dW) against
    /// the reference: relative L2 and element by element.
    pub(crate) fn check(&self, case: &BackwardCase, what: &str, dx: &[T], dw: &[T], db: &[T]) {
        let LinearShape { m, n, k } = case.shape;
        let mut outputs = vec![("dX", dx, &self.want.0, &self.bounds.0, n, k)];
        if case.weight_grad {
            outputs.push(("dW", dw, &self.want.1, &self.bounds.1, m, k));
        }
        outputs.push(("db", db, &self.want.2, &self.bounds.2, m, n));
        for (name, got, want, abs_sum, terms, cols) in outputs {
            let what = format!("{name} of {what}");
            check_close(&what, cols, got, want);
            // Exact operands: every backward kernel multiplies dY (or 0) in T and applies the
            // dropout scale to its f32 sums, so only the sums and the result are rounded.
            check_elementwise(&what, cols, got, want, abs_sum, terms);
        }
    }
}

/// `case`'s dX launch and its dW-and-db launch on `config`, reading dY (and Y for ReLU) with the
/// case's mask, with `input`'s buffers (the gradients starting as `input.start`).
fn backward_case_launches<T: Raw>(
    config: &str,
    case: &BackwardCase,
    input: &BackwardInputs<T>,
    what: String,
    rng: &mut StdRng,
) -> [Launch; 2] {
    let n = case.shape.n;
    let spec = input.spec;
    let mut dx = backward_product_launch::<T>(
        config,
        BackwardProduct::Dx,
        &spec,
        ProductInput::Dy,
        case,
        what.clone(),
        rng,
    );
    let mut dw = backward_product_launch::<T>(
        config,
        BackwardProduct::Dw,
        &spec,
        ProductInput::Dy,
        case,
        what,
        rng,
    );
    for launch in [&mut dx, &mut dw] {
        launch
            .mask(&spec.dropout, &case.geometry, n, case.device_seed)
            .buffer("dy", &input.dy, 0, false);
        if case.nonlinearity == Nonlinearity::Relu {
            launch.buffer("y", &input.y, 0, false);
        }
    }
    dx.buffer("w", &input.w, 0, false)
        .buffer("dx", &input.start.0, 0, true);
    dw.buffer("x", &input.x, 0, false)
        .buffer("db", &input.start.2, 0, true);
    if case.weight_grad {
        dw.buffer("dw", &input.start.1, 0, true);
    }
    [dx, dw]
}

/// Checks `case`'s gradients from its two launches (`backward_case_launches`) against the
/// reference.
pub(crate) fn check_case_outputs<T: Raw>(
    case: &BackwardCase,
    input: &BackwardInputs<T>,
    pair: &[Launch],
) {
    let dw = if case.weight_grad {
        pair[1].output::<T>("dw")
    } else {
        Vec::new()
    };
    input.check(
        case,
        &pair[0].what,
        &pair[0].output::<T>("dx"),
        &dw,
        &pair[1].output::<T>("db"),
    );
}

/// Fresh inputs for each case, and its two launches (`backward_case_launches`) on each of
/// `configs` in turn, from those inputs: the launches of case i on config c are at
/// `2 (i · configs.len() + c)` and the next.
pub(crate) fn case_launches_on<T: Raw>(
    configs: &[&str],
    cases: &[BackwardCase],
    rng: &mut StdRng,
) -> (Vec<Launch>, Vec<(BackwardCase, BackwardInputs<T>)>) {
    let mut launches = Vec::new();
    let mut inputs = Vec::new();
    for &case in cases {
        let input = BackwardInputs::<T>::new(&case, rng);
        for config in configs {
            launches.extend(backward_case_launches(
                config,
                &case,
                &input,
                format!("{config} {case:?}"),
                rng,
            ));
        }
        inputs.push((case, input));
    }
    (launches, inputs)
}

fn check_backward_cases<T: Raw>(
    driver_name: &str,
    config: &str,
    cases: &[BackwardCase],
    seed: u64,
) {
    let Some(exe) = driver(driver_name) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let (launches, inputs) = case_launches_on::<T>(&[config], cases, &mut rng);
    run(&exe, &launches);
    for (pair, (case, input)) in launches.chunks(2).zip(&inputs) {
        check_case_outputs(case, input, pair);
    }
}

/// Every SIMT config in every dtype.
#[test]
fn backward_simt_matches_reference() {
    for (i, config) in ["simt128x128", "simt64x64", "simt64x32"].iter().enumerate() {
        let seed = 0xB320 + 4 * i as u64;
        check_backward::<f32>("backward_simt", config, seed);
        check_backward::<f16>("backward_simt", config, seed + 1);
        check_backward::<bf16>("backward_simt", config, seed + 2);
    }
}

/// Split-K on the SIMT kernels, as on the mma.sync ones: each output tile's reduction shared by
/// 2, 3 or 4 blocks whose f32 partial sums (in a poisoned workspace) the split sum adds, scales
/// and rounds, on every backward case and every tile (the wrapper splits only 64 x 64 and
/// 64 x 32; the kernel template is the same), shares of no slice among them (4 shares of a
/// 40-long reduction's 3 slices of 16, 3 shares of the 1-long one's single slice), grids of 1
/// and 3 blocks walking the work items, accumulation, db without dW.
#[test]
fn backward_simt_split_k_matches_reference() {
    let split = |splits: u32| -> Vec<BackwardCase> {
        backward_cases()
            .into_iter()
            .map(|c| BackwardCase { splits, ..c })
            .collect()
    };
    check_backward_cases::<f32>("backward_simt", "simt64x64", &split(2), 0x5B32);
    check_backward_cases::<f32>("backward_simt", "simt128x128", &split(3), 0x5B33);
    check_backward_cases::<f32>("backward_simt", "simt64x32", &split(4), 0x5B34);
    check_backward_cases::<bf16>("backward_simt", "simt64x64", &split(3), 0x5BBF);
}

#[test]
fn backward_tc_f16_matches_reference() {
    check_backward::<f16>("backward_tc", "tc128x128", 0xBC16);
    check_backward::<f16>("backward_tc", "tc64x64", 0xBC17);
}

#[test]
fn backward_tc_bf16_matches_reference() {
    check_backward::<bf16>("backward_tc", "tc128x128", 0xBCBF);
    check_backward::<bf16>("backward_tc", "tc64x64", 0xBCC0);
}

/// The backward cases the aligned mma.sync kernels take (`*_aligned`: the host promises 16-byte
/// aligned dY, Y and B with n and k multiples of 8): every case above with n and k rounded up to
/// multiples of 8, db-only calls included.
fn aligned_backward_cases() -> Vec<BackwardCase> {
    backward_cases()
        .into_iter()
        .map(|c| {
            let LinearShape { m, n, k } = c.shape;
            let shape = LinearShape::new(m, n.next_multiple_of(8), k.next_multiple_of(8));
            let n_global = c
                .geometry
                .n_global
                .map(|g| g.max(c.geometry.col_offset + shape.n as u64));
            BackwardCase {
                shape,
                geometry: Geometry {
                    n_global,
                    ..c.geometry
                },
                ..c
            }
        })
        .collect()
}

#[test]
fn backward_tc_aligned_matches_reference() {
    for (config, seed) in [("tc128x128_aligned", 0xBA16), ("tc64x64_aligned", 0xBA17)] {
        check_backward_cases::<f16>("backward_tc", config, &aligned_backward_cases(), seed);
        check_backward_cases::<bf16>("backward_tc", config, &aligned_backward_cases(), seed + 2);
    }
}

/// The narrow products' tile (64 x 32: B's MN-major tile 32 columns wide), general and aligned.
#[test]
fn backward_tc64x32_matches_reference() {
    check_backward::<f16>("backward_tc", "tc64x32", 0xBC32);
    check_backward::<bf16>("backward_tc", "tc64x32", 0xBC33);
    check_backward_cases::<f16>(
        "backward_tc",
        "tc64x32_aligned",
        &aligned_backward_cases(),
        0xBA32,
    );
    check_backward_cases::<bf16>(
        "backward_tc",
        "tc64x32_aligned",
        &aligned_backward_cases(),
        0xBA33,
    );
}

/// Split-K on the mma.sync kernels that can split (64 x 64, 64 x 32; general and aligned): each
/// output tile's reduction shared by 2, 3 or 4 blocks whose f32 partial sums (in a poisoned
/// workspace) the split sum adds, scales and rounds, on every backward case (shares of no slice
/// among them: 3 shares of a 40-long reduction's 2 slices; grids of 1 and 3 blocks walking the
/// work items; accumulation; db without dW).
#[test]
fn backward_tc_split_k_matches_reference() {
    let split = |cases: Vec<BackwardCase>, splits: u32| -> Vec<BackwardCase> {
        cases
            .into_iter()
            .map(|c| BackwardCase { splits, ..c })
            .collect()
    };
    check_backward_cases::<f16>(
        "backward_tc",
        "tc64x64",
        &split(backward_cases(), 2),
        0x5C16,
    );
    check_backward_cases::<bf16>(
        "backward_tc",
        "tc64x32",
        &split(backward_cases(), 3),
        0x5CBF,
    );
    check_backward_cases::<bf16>(
        "backward_tc",
        "tc64x64_aligned",
        &split(aligned_backward_cases(), 4),
        0x5CA1,
    );
    check_backward_cases::<f16>(
        "backward_tc",
        "tc64x32_aligned",
        &split(aligned_backward_cases(), 3),
        0x5CA2,
    );
}
