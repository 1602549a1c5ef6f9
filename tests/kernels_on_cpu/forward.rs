//! The forward kernels: the cases and checks every family shares, then the mma.sync
//! (kernels/forward_tc.cu) and f32 SIMT (kernels/forward_f32.cu) kernels and their sweep variants.

use super::*;

mod hopper;
mod plans;

/// One forward case: shape, activation, bias, dropout, geometry, pointer misalignment (in
/// elements, for every buffer, and for b alone on top), folded grid rows, device seed, NaN and
/// infinities planted in X, W and b.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ForwardCase {
    pub(crate) shape: LinearShape,
    pub(crate) nonlinearity: Nonlinearity,
    pub(crate) bias: bool,
    pub(crate) p: f32,
    pub(crate) geometry: Geometry,
    pub(crate) misalign: usize,
    pub(crate) bias_misalign: usize,
    pub(crate) grid_y: Option<u32>,
    pub(crate) device_seed: bool,
    pub(crate) nonfinite: bool,
    /// A fixed (seed, subsequence) instead of random ones (the keep-rule boundary vectors).
    pub(crate) seed_subsequence: Option<(u64, u64)>,
}

impl ForwardCase {
    /// A ReLU call with bias at p = 0.1 on `shape`: unsharded, aligned buffers, the grid's own
    /// rows, a random host seed, finite inputs. Cases change what they test from there.
    pub(crate) fn relu(shape: LinearShape) -> Self {
        Self {
            shape,
            nonlinearity: Nonlinearity::Relu,
            bias: true,
            p: 0.1,
            geometry: Geometry::UNSHARDED,
            misalign: 0,
            bias_misalign: 0,
            grid_y: None,
            device_seed: false,
            nonfinite: false,
            seed_subsequence: None,
        }
    }
}

/// Shapes that are multiples of no tile, k both a multiple of 8 (16-byte rows) and not, with
/// every dropout rate, both activations and with/without bias spread over them.
fn forward_cases(rng: &mut StdRng) -> Vec<ForwardCase> {
    let shapes = [
        (1, 1, 1),
        (37, 29, 45),
        (70, 75, 64),
        (130, 66, 40),
        (33, 100, 97),
        (17, 140, 8),
    ];
    let combos = [
        (0.0f32, Nonlinearity::Relu, true),
        (0.1, Nonlinearity::Identity, false),
        (0.5, Nonlinearity::Relu, false),
        (1.0, Nonlinearity::Identity, true),
    ];
    let mut cases = Vec::new();
    for (s, &(m, n, k)) in shapes.iter().enumerate() {
        for i in 0..combos.len() {
            // Rotate the pairing so that every shape meets every rate and both of the others.
            let (p, _, _) = combos[i];
            let (_, nonlinearity, _) = combos[(i + s) % combos.len()];
            let (_, _, bias) = combos[(i + 2 * s + 1) % combos.len()];
            cases.push(ForwardCase {
                nonlinearity,
                bias,
                p,
                ..ForwardCase::relu(LinearShape::new(m, n, k))
            });
        }
    }
    let base = ForwardCase {
        p: 0.5,
        ..ForwardCase::relu(LinearShape::new(70, 75, 64))
    };
    // Buffers that are not 16-byte aligned although k and n are multiples of 8, so only the
    // pointers' alignment keeps the kernels off their vector paths.
    cases.push(ForwardCase {
        shape: LinearShape::new(70, 72, 64),
        misalign: 2,
        ..base
    });
    cases.push(ForwardCase {
        shape: LinearShape::new(70, 72, 64),
        misalign: 1,
        nonlinearity: Nonlinearity::Identity,
        ..base
    });
    // A shard's geometry and (seed, subsequence) read from a device buffer.
    cases.push(ForwardCase {
        geometry: Geometry {
            row_offset: 3 + (rng.random::<u32>() as u64),
            col_offset: 11,
            n_global: Some(301),
        },
        device_seed: true,
        nonlinearity: Nonlinearity::Identity,
        ..base
    });
    // NaN and infinities in X, W and b: NaN must stay NaN through ReLU and a dropped element, a
    // dropped infinity must become NaN (docs/mask-contract.md, "Non-finite values"). Both the
    // vector path (70x72x64) and the element path (37x29x45), every rate, both activations.
    for (i, &p) in [0.0f32, 0.1, 0.5, 1.0].iter().enumerate() {
        for (shape, nonlinearity) in [
            (LinearShape::new(70, 72, 64), Nonlinearity::Relu),
            (LinearShape::new(37, 29, 45), Nonlinearity::Identity),
        ] {
            cases.push(ForwardCase {
                shape,
                nonlinearity,
                p,
                bias: i % 2 == 0 || nonlinearity == Nonlinearity::Relu,
                nonfinite: true,
                ..base
            });
        }
    }
    // Keep-rule boundary vectors: one element's Philox word equals the threshold (it must be
    // kept), and the next f32 p above (dropped). Identity, so the kept value is non-zero.
    for b in boundaries() {
        for p in [b.p(), b.p_above()] {
            cases.push(ForwardCase {
                nonlinearity: Nonlinearity::Identity,
                p,
                seed_subsequence: Some((b.seed, b.subsequence)),
                ..base
            });
        }
    }
    // Row tiles folded into fewer grid rows than there are tiles.
    cases.push(ForwardCase {
        shape: LinearShape::new(300, 40, 24),
        grid_y: Some(2),
        ..base
    });
    cases
}

/// A forward kernel a test launches, by name: a production configuration
/// ([`ForwardConfig::name`]) or a sweep variant (its launch table name without the
/// `forward_sweep_` prefix).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Planned<'a> {
    Config(&'a str),
    Sweep(&'a str),
    /// What `LayerKernels::forward` picks itself on the GPU these facts describe
    /// (`forward_plan` without a configuration).
    Auto(GpuFacts),
}

/// Where the tests' plans place a stream-K sweep variant's workspace (the driver allocates it
/// 16-byte aligned, as the plan requires).
const WORKSPACE_ADDRESS: u64 = 0x50_0000;

/// The u32 flags at the start of a stream-K workspace (two per block of the largest grid).
pub(crate) const STREAM_K_FLAGS: usize = 2 * launch_table::STREAM_K_MAX_BLOCKS as usize;

/// The GPU a test's plan is for: one that runs `blocks` of the kernel's clusters of `cluster`
/// blocks at once (the persistent grids' size; `None`: 132 multiprocessors, for the kernels
/// whose grid the output decides).
fn resident(blocks: Option<u32>, cluster: u32) -> ResidentClusters {
    ResidentClusters::uniform(blocks.map_or(132, |b| (b * cluster) as usize))
}

/// The sweep variant whose launch table name is `forward_sweep_<name>`.
pub(crate) fn sweep_variant(name: &str) -> &'static launch_table::LaunchNumbers {
    launch_table::FORWARD_SWEEP
        .iter()
        .chain(&launch_table::FORWARD_SM90_SWEEP)
        .chain(&launch_table::FORWARD_F32_SWEEP)
        .find(|v| v.name.strip_prefix("forward_sweep_") == Some(name))
        .unwrap_or_else(|| panic!("no forward sweep variant {name}"))
}

impl Planned<'_> {
    /// The library's plan for `spec` with the operands at `addresses` (a stream-K variant's
    /// workspace at [`WORKSPACE_ADDRESS`]), on a GPU that runs `blocks` of the kernel's clusters
    /// at once ([`resident`]).
    fn plan<T: Element>(
        self,
        spec: &LayerSpec,
        addresses: &OperandAddresses,
        blocks: Option<u32>,
    ) -> LaunchPlan {
        let resident = |cluster: u32| resident(blocks, cluster);
        let planned = match self {
            Planned::Config(name) => {
                let config = ForwardConfig::all_for::<T>()
                    .iter()
                    .chain(&ForwardConfig::HOPPER)
                    .find(|c| c.name() == name)
                    .unwrap_or_else(|| panic!("no forward config {name} for {}", T::NAME));
                config.launch_plan::<T>(spec, addresses, resident(config.splits()))
            }
            Planned::Sweep(name) => {
                let variant = sweep_variant(name);
                forward_sweep_plan::<T>(
                    variant,
                    spec,
                    addresses,
                    variant.stream_k.then_some(WORKSPACE_ADDRESS),
                    resident(variant.cluster),
                )
            }
            Planned::Auto(gpu) => forward_plan::<T>(spec, None, &gpu, addresses),
        };
        planned.unwrap_or_else(|e| panic!("{self:?} on {:?}: {e}", spec.shape))
    }
}

pub(crate) fn forward_launch<T: Raw>(
    kernel: Planned,
    case: &ForwardCase,
    blocks: Option<u32>,
    rng: &mut StdRng,
) -> (Launch, ForwardWant, LayerSpec) {
    let LinearShape { m, n, k } = case.shape;
    let (seed, subsequence) = case
        .seed_subsequence
        .unwrap_or_else(|| (rng.random(), rng.random_range(0..16)));
    let dropout = DropoutSpec::new(case.p, seed, subsequence);
    let spec = LayerSpec::new(case.shape, case.nonlinearity, dropout).with_geometry(case.geometry);
    let mut x = random_values::<T>(m * k, rng);
    let mut w = random_values::<T>(n * k, rng);
    let mut b = random_values::<T>(n, rng);
    if case.nonfinite {
        // Rows of X with one non-finite element make whole rows of z NaN or +-inf (the sign from
        // W); one in W does the same to a column; the bias to a column.
        plant(
            &mut x,
            k,
            &[(1, k / 3), (m / 2, k - 1), (m - 1, 0), (m / 3, k / 2)],
        );
        plant(&mut w, k, &[(n - 2, k / 4), (n / 2, 1)]);
        plant(&mut b, n, &[(0, 2), (0, n / 3), (0, n - 1)]);
    }
    let want = ForwardWant::of(&spec, &x, &w, case.bias.then_some(&b[..]));
    // Addresses with the case's misalignment, for the plan's choices; the driver places the
    // buffers so.
    let offset = (case.misalign * T::BYTES) as u64;
    let bias_misalign = case.misalign + case.bias_misalign;
    let addresses = OperandAddresses {
        x: 0x10_0000 + offset,
        w: 0x20_0000 + offset,
        b: case
            .bias
            .then_some(0x30_0000 + (bias_misalign * T::BYTES) as u64),
        y: 0x40_0000 + offset,
    };
    let plan = kernel.plan::<T>(&spec, &addresses, blocks);
    let mut launch = Launch::new(&plan.function, format!("{case:?}"), rng);
    launch
        .plan(&plan)
        .mask(&dropout, &case.geometry, n, case.device_seed)
        .buffer("x", &x, case.misalign, false)
        .buffer("w", &w, case.misalign, false)
        .buffer("y", &poisoned::<T>(m * n), case.misalign, true);
    if case.bias {
        launch.buffer("b", &b, bias_misalign, false);
    }
    if let Some(g) = case.grid_y {
        launch.int("grid_y", g);
    }
    if let Planned::Sweep(name) = kernel {
        // A stream-K variant's workspace: the partial tiles poisoned (NaN), the flags zero, as
        // a zero-filled allocation has them before its first launch.
        let variant = sweep_variant(name);
        let bytes = sweep_workspace_bytes(variant, case.shape, resident(blocks, variant.cluster))
            .unwrap_or_else(|e| panic!("{name} on {:?}: {e}", case.shape));
        if bytes > 0 {
            let mut ws = vec![0.0f32; STREAM_K_FLAGS];
            ws.extend(poisoned::<f32>(bytes / 4 - STREAM_K_FLAGS));
            launch.buffer("ws", &ws, 0, true);
        }
    }
    (launch, want, spec)
}

fn check_forward<T: Raw>(driver_name: &str, configs: &[&str], seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cases: Vec<(ForwardCase, Option<u32>)> = forward_cases(&mut rng)
        .into_iter()
        .map(|c| (c, None))
        .collect();
    check_forward_cases::<T>(driver_name, configs, &cases, &mut rng);
}

/// Runs every case (with its persistent block count, for the Hopper driver) on every config and
/// checks the outputs against the reference, the mask and the boundary vectors.
fn check_forward_cases<T: Raw>(
    driver_name: &str,
    configs: &[&str],
    cases: &[(ForwardCase, Option<u32>)],
    rng: &mut StdRng,
) {
    let Some(exe) = driver(driver_name) else {
        return;
    };
    let mut launches = Vec::new();
    let mut expected = Vec::new();
    for config in configs {
        for (case, blocks) in cases {
            let (launch, want, spec) =
                forward_launch::<T>(Planned::Config(config), case, *blocks, rng);
            launches.push(launch);
            expected.push((want, spec));
        }
    }
    run(&exe, &launches);
    let mut kept_on_boundary = 0;
    for (launch, (want, spec)) in launches.iter().zip(&expected) {
        let got = launch.output::<T>("y");
        check_layer_output(
            &launch.what,
            &got,
            want,
            &spec.dropout,
            &spec.geometry,
            spec.shape.n,
        );
        // check_layer_output lets a kept element of tiny value be 0; on the boundary vectors
        // the word == threshold element must be non-zero whatever its size.
        let (n, d) = (spec.shape.n, &spec.dropout);
        if d.p > 0.0 && d.p < 1.0 {
            for (i, g) in got.iter().enumerate() {
                if on_boundary(d, &spec.geometry, n, i / n, i % n) {
                    assert!(
                        g.to_f64() != 0.0 && want.y[i] != 0.0,
                        "{}: element {i} (word == threshold) was dropped",
                        launch.what
                    );
                    kept_on_boundary += 1;
                }
            }
        }
    }
    assert_eq!(kept_on_boundary, configs.len() * boundaries().len());
}

const FORWARD_TC_CONFIGS: [&str; 5] = ["tc128x256", "tc128x128", "tc64x128", "tc64x64", "tc64x32"];
const FORWARD_F32_CONFIGS: [&str; 3] = ["simt128x128", "simt64x64", "simt64x32"];

#[test]
fn forward_f32_matches_reference() {
    check_forward::<f32>("forward_f32", &FORWARD_F32_CONFIGS, 0xF32);
}

#[test]
fn forward_tc_f16_matches_reference() {
    check_forward::<f16>("forward_tc", &FORWARD_TC_CONFIGS, 0xF16);
}

#[test]
fn forward_tc_bf16_matches_reference() {
    check_forward::<bf16>("forward_tc", &FORWARD_TC_CONFIGS, 0xBF16);
}

/// The tuning variants of kernels/forward_tc_sweep.cu (`fusedrop_forward_sweep_<variant>_<dtype>`)
/// and the production config of the same tile, whose output each must reproduce bit for bit
/// (the same mma sequence for every output element).
const FORWARD_TC_SWEEP_VARIANTS: [(&str, &str); 13] = [
    ("tc128x128_bk32_f1", "tc128x128"),
    ("tc128x128_bk32_f2", "tc128x128"),
    ("tc128x128_bk64_f1", "tc128x128"),
    ("tc128x128_bk64_f2", "tc128x128"),
    ("tc128x256_bk32_f1", "tc128x256"),
    ("tc128x256_bk64_f1", "tc128x256"),
    ("tc128x256_bk64_f2", "tc128x256"),
    ("tc128x128_bk32_f1_spread", "tc128x128"),
    ("tc128x128_bk64_f1_spread", "tc128x128"),
    ("tc128x256_bk32_f1_spread", "tc128x256"),
    ("tc128x256_bk64_f1_spread", "tc128x256"),
    ("tc128x128_bk32_f1_interleaved", "tc128x128"),
    ("tc128x256_bk32_f1_interleaved", "tc128x256"),
];

/// The lists the tests here run (with the production configuration each sweep variant must
/// reproduce) name every configuration and sweep variant of the library's tables, in the same
/// order: one added there cannot go unchecked here.
#[test]
fn the_checked_lists_name_every_forward_configuration_and_variant() {
    let configs = |list: &[ForwardConfig]| -> Vec<&str> { list.iter().map(|c| c.name()).collect() };
    assert_eq!(
        FORWARD_TC_CONFIGS.to_vec(),
        configs(&ForwardConfig::TENSOR_CORE)
    );
    assert_eq!(FORWARD_F32_CONFIGS.to_vec(), configs(&ForwardConfig::SIMT));
    let variants = |checked: &[(&'static str, &str)]| -> Vec<&str> {
        checked.iter().map(|&(variant, _)| variant).collect()
    };
    let table = |numbers: &[launch_table::LaunchNumbers]| -> Vec<&str> {
        numbers
            .iter()
            .map(|v| v.name.strip_prefix("forward_sweep_").unwrap_or(v.name))
            .collect()
    };
    assert_eq!(
        variants(&FORWARD_TC_SWEEP_VARIANTS),
        table(&launch_table::FORWARD_SWEEP)
    );
    let mut hopper_variants = variants(&hopper::FORWARD_SM90_SWEEP_VARIANTS);
    hopper_variants.extend(variants(&hopper::FORWARD_SM90_STREAM_K_VARIANTS));
    assert_eq!(hopper_variants, table(&launch_table::FORWARD_SM90_SWEEP));
    assert_eq!(
        variants(&FORWARD_F32_SWEEP_VARIANTS),
        table(&launch_table::FORWARD_F32_SWEEP)
    );
}

/// The forward cases a sweep variant takes (X and W 16-byte aligned, k a multiple of 8, as its
/// callers guarantee), plus a reduction of many slices (k = 328: 11 slices of 32, 6 of 64, more
/// than the pipeline has stages, the last one partial) for the fragment prefetch across slices.
fn forward_sweep_cases(rng: &mut StdRng) -> Vec<ForwardCase> {
    let mut cases: Vec<ForwardCase> = forward_cases(rng)
        .into_iter()
        .filter(|c| c.misalign == 0 && c.shape.k % 8 == 0)
        .collect();
    cases.push(ForwardCase::relu(LinearShape::new(37, 45, 328)));
    cases
}

/// Every mma.sync sweep variant against the reference and the production kernel.
fn check_forward_sweep<T: Raw>(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cases: Vec<(ForwardCase, Option<u32>)> = forward_sweep_cases(&mut rng)
        .into_iter()
        .map(|c| (c, None))
        .collect();
    check_sweep_variants::<T>(
        ("forward_tc_sweep", "forward_tc"),
        &FORWARD_TC_SWEEP_VARIANTS,
        &|_, _| true,
        &cases,
        &mut rng,
    );
}

/// Every (variant, production config) pair on every case that `takes` admits for the variant
/// (with its persistent block count, for the Hopper drivers): the variant
/// `fusedrop_forward_sweep_<variant>_<dtype>` of driver `drivers.0` against the reference, and bit
/// for bit against `fusedrop_forward_<config>_<dtype>` of driver `drivers.1` on the same inputs,
/// mask and schedule seed.
fn check_sweep_variants<T: Raw>(
    drivers: (&str, &str),
    variants: &[(&str, &str)],
    takes: &dyn Fn(&str, &ForwardCase) -> bool,
    cases: &[(ForwardCase, Option<u32>)],
    rng: &mut StdRng,
) {
    let (Some(sweep), Some(production)) = (driver(drivers.0), driver(drivers.1)) else {
        return;
    };
    let mut variant_launches = Vec::new();
    let mut productions = Vec::new();
    let mut expected = Vec::new();
    for &(variant, config) in variants {
        let taken: Vec<_> = cases.iter().filter(|(c, _)| takes(variant, c)).collect();
        assert!(
            !taken.is_empty(),
            "sweep variant {variant} takes none of the {} cases: it would pass unchecked",
            cases.len()
        );
        for (case, blocks) in taken {
            let launch_seed = rng.random::<u64>();
            let (launch, want, spec) = forward_launch::<T>(
                Planned::Sweep(variant),
                case,
                *blocks,
                &mut StdRng::seed_from_u64(launch_seed),
            );
            let (same, _, _) = forward_launch::<T>(
                Planned::Config(config),
                case,
                *blocks,
                &mut StdRng::seed_from_u64(launch_seed),
            );
            variant_launches.push(launch);
            productions.push(same);
            expected.push((want, spec));
        }
    }
    run(&sweep, &variant_launches);
    run(&production, &productions);
    let bits = |y: &[T]| {
        let mut out = Vec::with_capacity(y.len() * T::BYTES);
        for &v in y {
            v.put(&mut out);
        }
        out
    };
    for ((launch, same), (want, spec)) in variant_launches.iter().zip(&productions).zip(&expected) {
        let got = launch.output::<T>("y");
        check_layer_output(
            &launch.what,
            &got,
            want,
            &spec.dropout,
            &spec.geometry,
            spec.shape.n,
        );
        let produced = same.output::<T>("y");
        let differ = bits(&got)
            .chunks_exact(T::BYTES)
            .zip(bits(&produced).chunks_exact(T::BYTES))
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differ, 0,
            "{}: {differ} elements differ from {} (expected bit-identical outputs)",
            launch.what, same.what
        );
    }
}

/// The tuning variants of kernels/forward_f32_sweep.cu and the production config each must
/// reproduce bit for bit (the same FMA sequence for every output element).
const FORWARD_F32_SWEEP_VARIANTS: [(&str, &str); 4] = [
    ("simt128x128_f2", "simt128x128"),
    ("simt64x64_f2", "simt64x64"),
    ("simt128x128_bk16", "simt128x128"),
    ("simt128x128_bk16_f2", "simt128x128"),
];

/// Every f32 sweep variant against the reference and the production kernel, on every forward case
/// (the f32 kernels take any alignment) plus a reduction of many slices (k = 328: 41 slices of 8,
/// 21 of 16, the last partial).
#[test]
fn forward_f32_sweep_matches_reference_and_production() {
    let mut rng = StdRng::seed_from_u64(0x5EE9_0F32);
    let mut cases: Vec<(ForwardCase, Option<u32>)> = forward_sweep_cases(&mut rng)
        .into_iter()
        .map(|c| (c, None))
        .collect();
    cases.extend(
        forward_cases(&mut rng)
            .into_iter()
            .filter(|c| c.misalign != 0 || c.shape.k % 8 != 0)
            .map(|c| (c, None)),
    );
    check_sweep_variants::<f32>(
        ("forward_f32_sweep", "forward_f32"),
        &FORWARD_F32_SWEEP_VARIANTS,
        &|_, _| true,
        &cases,
        &mut rng,
    );
}

#[test]
fn forward_tc_sweep_f16_matches_reference_and_production() {
    check_forward_sweep::<f16>(0x5EE9_0F16);
}

#[test]
fn forward_tc_sweep_bf16_matches_reference_and_production() {
    check_forward_sweep::<bf16>(0x5EE9_0B16);
}
