//! `BackwardKernel::HopperOneLaunch` on the harness: dX, dW and db in one persistent launch
//! (kernels/backward_sm90.cu's `fusedrop_backward_dxdw_<config>_<dtype>` entry points), both
//! products' tiles in one sequence on one pipeline ring.

use super::hopper::{hopper_backward_cases, BACKWARD_SM90_CONFIGS};
use super::*;
use fusedrop::cuda::backward::one_launch_plan;

/// The Hopper cases, plus two whose blocks each take tiles of both products over rings that
/// wrap from one product's tiles into the other's: m > n (dW's tiles, which reduce over m, come
/// first) and m = n (dX's first).
fn one_launch_cases() -> Vec<BackwardCase> {
    let mut cases = hopper_backward_cases();
    let base = cases
        .iter()
        .copied()
        .find(|c| c.shape == LinearShape::new(200, 264, 328))
        .expect("the Hopper cases' several-tile case");
    cases.push(BackwardCase {
        shape: LinearShape::new(264, 200, 328),
        ..base
    });
    cases.push(BackwardCase {
        shape: LinearShape::new(136, 136, 200),
        nonlinearity: Nonlinearity::Identity,
        p: 0.5,
        grid_x: Some(1),
        ..base
    });
    cases
}

/// `config`'s one launch on each case, which must match the reference and, bit for bit, the same
/// config's dX and dW launches (dX, dW and db). Without `db`, the launch gets a null db and must
/// leave the db buffer as it was (poisoned, or random when accumulating), while dX and dW are
/// checked as with it (the db checked against the reference is then the two launches').
fn check_one_launch<T: Raw>(config: &str, cases: &[BackwardCase], db: bool, seed: u64) {
    let Some(exe) = driver("backward_sm90") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let inputs: Vec<BackwardInputs<T>> = cases
        .iter()
        .map(|case| BackwardInputs::new(case, &mut rng))
        .collect();
    let mut launches = Vec::new();
    for (case, input) in cases.iter().zip(&inputs) {
        assert!(case.weight_grad, "one launch writes dW: {case:?}");
        let spec = &input.spec;
        let n = case.shape.n;
        let relu = case.nonlinearity == Nonlinearity::Relu;
        let what = format!("{config} {case:?}");
        let operands = ProductOperands {
            dy: Operand::DY,
            y: relu,
            dz: false,
            transform_warps: false,
            out: true,
            db,
            aligned: true,
            partial_at: 0,
        };
        let plan = one_launch_plan::<T>(
            config,
            spec,
            operands,
            case.accumulate,
            ResidentClusters::uniform(case.grid_x.unwrap_or(3) as usize),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut one = Launch::new(&plan.function, format!("{what}, one launch"), &mut rng);
        one.plan(&plan);
        if case.track_proxy_stores {
            one.int("track_proxy_stores", 1);
        }
        let product = |product, rng: &mut StdRng| {
            backward_product_launch::<T>(
                config,
                product,
                spec,
                ProductInput::Dy,
                case,
                what.clone(),
                rng,
            )
        };
        let mut dx = product(BackwardProduct::Dx, &mut rng);
        let mut dw = product(BackwardProduct::Dw, &mut rng);
        for launch in [&mut one, &mut dx, &mut dw] {
            launch
                .mask(&spec.dropout, &case.geometry, n, case.device_seed)
                .buffer("dy", &input.dy, 0, false);
            if relu {
                launch.buffer("y", &input.y, 0, false);
            }
        }
        for launch in [&mut one, &mut dx] {
            launch
                .buffer("w", &input.w, 0, false)
                .buffer("dx", &input.start.0, 0, true);
        }
        for launch in [&mut one, &mut dw] {
            launch
                .buffer("x", &input.x, 0, false)
                .buffer("dw", &input.start.1, 0, true)
                .buffer("db", &input.start.2, 0, true);
        }
        launches.extend([one, dx, dw]);
    }
    run(&exe, &launches);
    for ((case, input), triple) in cases.iter().zip(&inputs).zip(launches.chunks(3)) {
        let [one, dx, dw] = triple else {
            unreachable!("three launches per case")
        };
        let bits = |v: Vec<T>| -> Vec<u64> { v.into_iter().map(class_bits).collect() };
        let db_from = if db {
            one
        } else {
            assert!(
                bits(one.output::<T>("db")) == bits(input.start.2.clone()),
                "db of {}: written without db",
                one.what
            );
            dw
        };
        input.check(
            case,
            &one.what,
            &one.output::<T>("dx"),
            &one.output::<T>("dw"),
            &db_from.output::<T>("db"),
        );
        let own = "the product's own launch";
        assert_same_output_bits::<T>(one, dx, &["dx"], own);
        assert_same_output_bits::<T>(one, dw, if db { &["dw", "db"] } else { &["dw"] }, own);
    }
}

#[test]
fn backward_sm90_one_launch_matches_reference_and_the_two_launches() {
    let cases = one_launch_cases();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    for (i, config) in BACKWARD_SM90_CONFIGS.iter().enumerate() {
        check_one_launch::<f16>(config, &cases, true, 0x1A16 + i as u64);
        check_one_launch::<bf16>(config, &cases, true, 0x1ABF + i as u64);
    }
}

/// The one launch without db (a null pointer): db untouched, dX and dW as with it. The
/// several-tile cases (both orders of the products), f16, both configurations.
#[test]
fn backward_sm90_one_launch_without_db() {
    let cases = several_tiles(one_launch_cases());
    for (i, config) in BACKWARD_SM90_CONFIGS.iter().enumerate() {
        check_one_launch::<f16>(config, &cases, false, 0x1AD0 + i as u64);
    }
}

/// The cases whose blocks take several tiles of both products: 200 x 264 x 328 (dX's first;
/// ReLU, and the identity with p = 0.5) and 264 x 200 x 328 (dW's first).
fn several_tiles(cases: Vec<BackwardCase>) -> Vec<BackwardCase> {
    let several: Vec<BackwardCase> = cases
        .into_iter()
        .filter(|c| {
            [
                LinearShape::new(200, 264, 328),
                LinearShape::new(264, 200, 328),
            ]
            .contains(&c.shape)
        })
        .collect();
    assert_eq!(several.len(), 3, "the several-tile cases");
    several
}

/// Each consumer thread's fence.proxy.async checked on its own (`track_proxy_stores`): dW's
/// tiles form dZᵀ in the stage before or after dX's, which form theirs in registers. f16,
/// 128 x 128, the several-tile cases.
#[test]
fn backward_sm90_one_launch_fence_per_thread() {
    let tracked: Vec<BackwardCase> = several_tiles(one_launch_cases())
        .into_iter()
        .map(|c| BackwardCase {
            track_proxy_stores: true,
            ..c
        })
        .collect();
    check_one_launch::<f16>("wg128x128", &tracked, true, 0x1AFE);
}

/// What `one_launch_plan` refuses: a configuration without a launch for both products, and
/// operands it does not take.
#[test]
fn one_launch_plans_refuse_what_the_kernels_do_not_take() {
    let spec = LayerSpec::new(
        LinearShape::new(64, 64, 64),
        Nonlinearity::Relu,
        DropoutSpec::new(0.1, 1, 0),
    );
    let operands = ProductOperands {
        dy: Operand::DY,
        y: true,
        dz: false,
        transform_warps: false,
        out: true,
        db: true,
        aligned: true,
        partial_at: 0,
    };
    let plan = |config: &str, operands| {
        one_launch_plan::<f16>(config, &spec, operands, false, ResidentClusters::uniform(4))
    };
    let plan_ok = plan("wg128x128", operands).expect("the plain case");
    assert_eq!(plan_ok.function, "fusedrop_backward_dxdw_wg128x128_f16");
    assert_eq!(plan_ok.grid.0, 2, "one dX and one dW tile");
    for config in ["wg128x128s2", "tc64x64", "nonsense"] {
        let e = plan(config, operands).expect_err(config).to_string();
        assert!(e.contains("expected wg128x256 or wg128x128"), "{e}");
    }
    for bad in [
        ProductOperands {
            out: false,
            ..operands
        },
        ProductOperands {
            dz: true,
            ..operands
        },
        ProductOperands {
            transform_warps: true,
            ..operands
        },
    ] {
        let e = plan("wg128x256", bad)
            .expect_err("bad operands")
            .to_string();
        assert!(e.contains("writes dW, and no dZ"), "{e}");
    }
}
