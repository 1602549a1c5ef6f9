//! The wrapper's whole backward (LayerKernels::backward's choices, `backward_plan`) on the
//! harness.

use super::*;

/// One call of the backward as the wrapper would plan it on a described GPU.
struct PlannedBackward {
    what: &'static str,
    spec: LayerSpec,
    kernel: BackwardKernel,
    gpu: GpuFacts,
    /// dW asked for (db always is).
    weight_grad: bool,
    /// The workspace's length in bytes, when the call passes one.
    workspace: Option<usize>,
    /// The entry points the plan must launch, in order (so that the test cannot drift to other
    /// kernels than the ones it means to run).
    expected: &'static [&'static str],
}

/// Plans `call` with `backward_plan` and runs its launches in order, each in the driver of its
/// module with the mask parameters the wrapper would give it, the workspace (poisoned) and the
/// gradients (poisoned) carried from one driver's request to the next; then checks every
/// gradient against the reference.
fn check_planned_backward<T: Raw>(call: &PlannedBackward, rng: &mut StdRng) {
    let LinearShape { m, n, k } = call.spec.shape;
    let relu = call.spec.nonlinearity == Nonlinearity::Relu;
    let x = random_values::<T>(m * k, rng);
    let w = random_values::<T>(n * k, rng);
    let b = random_values::<T>(n, rng);
    let dy = random_values::<T>(m * n, rng);
    let y = reference::forward(&call.spec, &x, &w, Some(&b)).expect("valid reference inputs");
    let want = reference::backward_f64(&call.spec, &x, &w, &dy, relu.then_some(&y[..]))
        .expect("valid reference inputs");
    // The same reductions over absolute values: each element's sum of |terms|, for the
    // element-wise bound (as BackwardInputs has it).
    let abs = |v: &[T]| -> Vec<T> { v.iter().map(|e| T::from_f64(e.to_f64().abs())).collect() };
    let abs_sums = reference::backward_f64(
        &call.spec,
        &abs(&x),
        &abs(&w),
        &abs(&dy),
        relu.then_some(&y[..]),
    )
    .expect("valid reference inputs");
    // Addresses as a GPU allocator would give them (16-byte aligned, apart); the harness places
    // each buffer 16-byte aligned too.
    let at = |i: u64| Some(i << 24);
    let buffers = BackwardBuffers {
        dy: 1 << 24,
        y: if relu { at(2) } else { None },
        w: at(3),
        x: if call.weight_grad { at(4) } else { None },
        dx: at(5),
        dw: if call.weight_grad { at(6) } else { None },
        db: at(7),
        workspace: call.workspace.map(|len| (8 << 24, len)),
    };
    let plans = backward_plan::<T>(&call.spec, false, call.kernel, &call.gpu, &buffers)
        .unwrap_or_else(|e| panic!("{}: {e}", call.what));
    let functions: Vec<&str> = plans
        .iter()
        .map(|(plan, _)| plan.function.as_str())
        .collect();
    let expected: Vec<String> = call
        .expected
        .iter()
        .map(|f| format!("{f}_{}", T::NAME))
        .collect();
    assert_eq!(functions, expected, "{}: the planned launches", call.what);

    let mut tensors: HashMap<&str, Vec<T>> = HashMap::new();
    tensors.insert("dy", dy);
    tensors.insert("w", w);
    tensors.insert("dx", poisoned::<T>(m * k));
    tensors.insert("db", poisoned::<T>(n));
    if relu {
        tensors.insert("y", y);
    }
    if call.weight_grad {
        tensors.insert("x", x);
        tensors.insert("dw", poisoned::<T>(n * k));
    }
    let mut workspace: Option<Vec<f32>> = call.workspace.map(|len| poisoned::<f32>(len / 4));
    let outputs = ["dx", "dw", "db"];
    let mut start = 0;
    while start < plans.len() {
        // Consecutive launches of one module with the same mask parameters share a request.
        let (first, mask) = (&plans[start].0, plans[start].1);
        let end = (start..plans.len())
            .find(|&i| plans[i].0.module != first.module || plans[i].1 != mask)
            .unwrap_or(plans.len());
        let mut launch = Launch::new(&first.function, call.what.to_string(), rng);
        for (plan, _) in &plans[start..end] {
            launch.plan(plan);
        }
        let d = &call.spec.dropout;
        match mask {
            BackwardMask::PrePass => {
                launch.mask_with(d, &call.spec.geometry, n, false, mask::threshold(d.p), 1.0)
            }
            BackwardMask::Redrawn => launch.mask(d, &call.spec.geometry, n, false),
            BackwardMask::Premasked => {
                launch.mask_with(d, &call.spec.geometry, n, false, 0, mask::scale(d.p))
            }
        };
        let mut names: Vec<&&str> = tensors.keys().collect();
        names.sort();
        for name in names {
            launch.buffer(name, &tensors[*name], 0, outputs.contains(name));
        }
        if let Some(ws) = &workspace {
            launch.buffer("ws", ws, 0, true);
        }
        let exe = driver(first.module).expect("the driver of a planned module");
        run(&exe, std::slice::from_ref(&launch));
        for name in outputs {
            if tensors.contains_key(name) {
                tensors.insert(name, launch.output::<T>(name));
            }
        }
        if workspace.is_some() {
            workspace = Some(launch.output::<f32>("ws"));
        }
        start = end;
    }
    let mut checked = vec![("dX", "dx", &want.dx, &abs_sums.dx, n, k)];
    if call.weight_grad {
        checked.push(("dW", "dw", &want.dw, &abs_sums.dw, m, k));
    }
    checked.push(("db", "db", &want.db, &abs_sums.db, m, n));
    for (name, buffer, want, abs_sum, terms, cols) in checked {
        let what = format!("{name} of {}", call.what);
        check_close(&what, cols, &tensors[buffer], want);
        // One wrong element (a split share, a pre-pass mask element) hides in a relative L2
        // error of thousands of elements; its own rounding bound does not hide it.
        check_elementwise(&what, cols, &tensors[buffer], want, abs_sum, terms);
    }
}

/// What `LayerKernels::backward` itself decides, run: the kernels, tiles and split-K it picks on
/// an A100-like GPU (compute capability 8.0, 108 multiprocessors) and on a small Hopper GPU
/// (9.0, 8 multiprocessors, so that small shapes take the Hopper kernels), the identity's
/// pre-pass into the workspace and the products reading it, the partial sums placed after the
/// mask area in a workspace of exactly the bytes the call needs, db without dW, a Hopper tile
/// forced for both products, dZ written by dX for dW, dW's dZᵀ formed by transform warps, both
/// products in one launch. Each call's launches are checked by name first.
#[test]
fn backward_plans_of_the_wrapper_match_reference() {
    let (Some(_), Some(_), Some(_), Some(_)) = (
        driver("dropout"),
        driver("backward_tc"),
        driver("backward_simt"),
        driver("backward_sm90"),
    ) else {
        return;
    };
    let (a100, small_hopper) = (A100, SMALL_HOPPER);
    let spec = |(m, n, k), nonlinearity, p, seed| {
        LayerSpec::new(
            LinearShape::new(m, n, k),
            nonlinearity,
            DropoutSpec::new(p, seed, 3),
        )
    };
    let mut rng = StdRng::seed_from_u64(0xB1A2);
    // 1024 x 64 x 64: dX (32 tiles of 64 x 32) has too short a reduction to split; dW's one
    // row of 64 x 32 tiles splits its 1024-long reduction in 4. Workspace: dY times the mask
    // (131072 bytes), then dW's and db's shares (4 x (64 x 64 + 64) f32).
    let identity_narrow = spec((1024, 64, 64), Nonlinearity::Identity, 0.5, 11);
    let narrow_workspace = 131_072 + 4 * (64 * 64 + 64) * 4;
    check_planned_backward::<f16>(
        &PlannedBackward {
            what: "identity, A100, workspace",
            spec: identity_narrow,
            kernel: BackwardKernel::Auto,
            gpu: a100,
            weight_grad: true,
            workspace: Some(narrow_workspace),
            expected: &[
                "fusedrop_dropout",
                "fusedrop_backward_dx_tc64x32_aligned",
                "fusedrop_backward_dw_tc64x32_aligned",
                "fusedrop_backward_split_sum",
                "fusedrop_backward_split_sum",
            ],
        },
        &mut rng,
    );
    check_planned_backward::<f32>(
        &PlannedBackward {
            what: "identity, f32, A100, workspace",
            spec: identity_narrow,
            kernel: BackwardKernel::Auto,
            gpu: a100,
            weight_grad: true,
            workspace: Some(2 * 131_072 + 4 * (64 * 64 + 64) * 4),
            expected: &[
                "fusedrop_dropout",
                "fusedrop_backward_dx_simt64x32",
                "fusedrop_backward_dw_simt64x32",
                "fusedrop_backward_split_sum",
                "fusedrop_backward_split_sum",
            ],
        },
        &mut rng,
    );
    // db without dW, ReLU: the dW kernel with the product switched off, unsplit.
    check_planned_backward::<bf16>(
        &PlannedBackward {
            what: "ReLU db only, A100",
            spec: spec((1024, 64, 64), Nonlinearity::Relu, 0.1, 12),
            kernel: BackwardKernel::Auto,
            gpu: a100,
            weight_grad: false,
            workspace: None,
            expected: &[
                "fusedrop_backward_dx_tc64x32_aligned",
                "fusedrop_backward_dw_tc64x32_aligned",
            ],
        },
        &mut rng,
    );
    // 512 x 64 x 512 on 8 multiprocessors: dX has 8 tiles of 128 x 256, dW 4 of 128 x 128.
    check_planned_backward::<bf16>(
        &PlannedBackward {
            what: "ReLU, small Hopper",
            spec: spec((512, 64, 512), Nonlinearity::Relu, 0.1, 13),
            kernel: BackwardKernel::Auto,
            gpu: small_hopper,
            weight_grad: true,
            workspace: None,
            expected: &[
                "fusedrop_backward_dx_wg128x256",
                "fusedrop_backward_dw_wg128x128",
            ],
        },
        &mut rng,
    );
    // 512 x 128 x 128: dX 4 tiles of 128 x 128 (half a wave); dW one tile, its reduction of 8
    // k-blocks split over clusters of 2; both read dY times the mask from the workspace.
    check_planned_backward::<f16>(
        &PlannedBackward {
            what: "identity, small Hopper, workspace",
            spec: spec((512, 128, 128), Nonlinearity::Identity, 0.5, 14),
            kernel: BackwardKernel::Auto,
            gpu: small_hopper,
            weight_grad: true,
            workspace: Some(512 * 128 * 2),
            expected: &[
                "fusedrop_dropout",
                "fusedrop_backward_dx_wg128x128",
                "fusedrop_backward_dw_wg128x128s2",
            ],
        },
        &mut rng,
    );
    // The same two calls with a Hopper tile forced for both products, unsplit
    // (BackwardKernel::HopperWg128x128, HopperWg128x256).
    check_planned_backward::<bf16>(
        &PlannedBackward {
            what: "ReLU, small Hopper, 128 x 128 forced",
            spec: spec((512, 64, 512), Nonlinearity::Relu, 0.1, 15),
            kernel: BackwardKernel::HopperWg128x128,
            gpu: small_hopper,
            weight_grad: true,
            workspace: None,
            expected: &[
                "fusedrop_backward_dx_wg128x128",
                "fusedrop_backward_dw_wg128x128",
            ],
        },
        &mut rng,
    );
    check_planned_backward::<f16>(
        &PlannedBackward {
            what: "identity, small Hopper, workspace, 128 x 256 forced",
            spec: spec((512, 128, 128), Nonlinearity::Identity, 0.5, 16),
            kernel: BackwardKernel::HopperWg128x256,
            gpu: small_hopper,
            weight_grad: true,
            workspace: Some(512 * 128 * 2),
            expected: &[
                "fusedrop_dropout",
                "fusedrop_backward_dx_wg128x256",
                "fusedrop_backward_dw_wg128x256",
            ],
        },
        &mut rng,
    );
    // The same two calls with dZ written by dX into the workspace and read by dW
    // (BackwardKernel::HopperDzFromDx): no pre-pass for the identity, Auto's tiles.
    check_planned_backward::<bf16>(
        &PlannedBackward {
            what: "ReLU, small Hopper, dZ from dX",
            spec: spec((512, 64, 512), Nonlinearity::Relu, 0.1, 17),
            kernel: BackwardKernel::HopperDzFromDx,
            gpu: small_hopper,
            weight_grad: true,
            workspace: Some(512 * 64 * 2),
            expected: &[
                "fusedrop_backward_dx_wg128x256",
                "fusedrop_backward_dw_wg128x128",
            ],
        },
        &mut rng,
    );
    check_planned_backward::<f16>(
        &PlannedBackward {
            what: "identity, small Hopper, dZ from dX",
            spec: spec((512, 128, 128), Nonlinearity::Identity, 0.5, 18),
            kernel: BackwardKernel::HopperDzFromDx,
            gpu: small_hopper,
            weight_grad: true,
            workspace: Some(512 * 128 * 2),
            expected: &[
                "fusedrop_backward_dx_wg128x128",
                "fusedrop_backward_dw_wg128x128s2",
            ],
        },
        &mut rng,
    );
    // dW's dZᵀ formed by transform warps (BackwardKernel::HopperTransformWarps): the `_transform`
    // dW entry points, Auto's tiles; the identity with no workspace (with one, its pre-pass
    // leaves nothing to form).
    check_planned_backward::<bf16>(
        &PlannedBackward {
            what: "ReLU, small Hopper, transform warps",
            spec: spec((512, 64, 512), Nonlinearity::Relu, 0.1, 19),
            kernel: BackwardKernel::HopperTransformWarps,
            gpu: small_hopper,
            weight_grad: true,
            workspace: None,
            expected: &[
                "fusedrop_backward_dx_wg128x256",
                "fusedrop_backward_dw_wg128x128_transform",
            ],
        },
        &mut rng,
    );
    check_planned_backward::<f16>(
        &PlannedBackward {
            what: "identity, small Hopper, transform warps",
            spec: spec((512, 128, 128), Nonlinearity::Identity, 0.5, 20),
            kernel: BackwardKernel::HopperTransformWarps,
            gpu: small_hopper,
            weight_grad: true,
            workspace: None,
            expected: &[
                "fusedrop_backward_dx_wg128x128",
                "fusedrop_backward_dw_wg128x128s2_transform",
            ],
        },
        &mut rng,
    );
    // dX, dW and db in one launch (BackwardKernel::HopperOneLaunch): 128 x 128 where the
    // products' tiles differ (dX 128 x 256, dW 128 x 128); two launches where dW splits (the
    // identity with its pre-pass); 128 x 256 where both products have it (on 4 multiprocessors,
    // 256 x 256 x 512: 4 tiles each), reading dY times the mask from the workspace.
    check_planned_backward::<bf16>(
        &PlannedBackward {
            what: "ReLU, small Hopper, one launch",
            spec: spec((512, 64, 512), Nonlinearity::Relu, 0.1, 21),
            kernel: BackwardKernel::HopperOneLaunch,
            gpu: small_hopper,
            weight_grad: true,
            workspace: None,
            expected: &["fusedrop_backward_dxdw_wg128x128"],
        },
        &mut rng,
    );
    check_planned_backward::<f16>(
        &PlannedBackward {
            what: "identity, small Hopper, workspace, one launch (dW split)",
            spec: spec((512, 128, 128), Nonlinearity::Identity, 0.5, 22),
            kernel: BackwardKernel::HopperOneLaunch,
            gpu: small_hopper,
            weight_grad: true,
            workspace: Some(512 * 128 * 2),
            expected: &[
                "fusedrop_dropout",
                "fusedrop_backward_dx_wg128x128",
                "fusedrop_backward_dw_wg128x128s2",
            ],
        },
        &mut rng,
    );
    check_planned_backward::<f16>(
        &PlannedBackward {
            what: "identity, 4-multiprocessor Hopper, workspace, one launch",
            spec: spec((256, 256, 512), Nonlinearity::Identity, 0.5, 23),
            kernel: BackwardKernel::HopperOneLaunch,
            gpu: GpuFacts {
                resident: ResidentClusters::uniform(4),
                ..small_hopper
            },
            weight_grad: true,
            workspace: Some(256 * 256 * 2),
            expected: &["fusedrop_dropout", "fusedrop_backward_dxdw_wg128x256"],
        },
        &mut rng,
    );
}
