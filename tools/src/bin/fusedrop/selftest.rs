//! `fusedrop selftest`: every GPU kernel (standalone dropout, fused forward in every tile
//! configuration, backward) in every dtype, on a spread of shapes, dropout probabilities,
//! activations and shard geometries, against the CPU reference.
//!
//! Masks compare exactly (a dropped element must be exactly zero, and a kept one whose reference
//! value is clearly non-zero must not be; the standalone dropout kernel must match bit for bit);
//! values by relative L2 error against the f64 reference, under each
//! dtype's `Element::REL_L2_TOLERANCE`. Outputs are poisoned with NaN before every launch, so an
//! element a kernel forgets to write fails the check.

use clap::Args;
use fusedrop::cuda::backward::{self, BackwardKernel, BackwardOptions, GradientsMut};
use fusedrop::cuda::cudarc::driver::CudaSlice;
use fusedrop::cuda::forward::{ForwardConfig, ForwardOptions};
use fusedrop::cuda::{self, LayerKernels, LoadOptions, ResidentClusters, SeedSource};
use fusedrop::reference::{self, relative_l2_error, to_f64};
use fusedrop::{mask, DropoutSpec, Element, Error, Geometry, LayerSpec, LinearShape, Nonlinearity};
use half::{bf16, f16};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Exit code when no usable GPU, driver or compiled kernels exist: nothing was checked.
pub const NO_GPU_EXIT: i32 = 3;

/// The selftest's flags.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Four shapes instead of seven (a few seconds)
    #[arg(long)]
    pub quick: bool,
    /// The shapes that take every production path (16-byte vector loads and stores, the
    /// element-load fallbacks, every forward config, every backward kernel with its aligned
    /// and split-K forms on an H100, H200 or A100, the identity backward's workspace pre-pass),
    /// for compute-sanitizer (scripts/gpu-check.sh)
    #[arg(long)]
    pub sanitize: bool,
    /// Seed of the random inputs and masks
    #[arg(
        long,
        value_name = "S",
        default_value_t = 7,
        allow_negative_numbers = true,
        value_parser = crate::cli::seed
    )]
    pub seed: u64,
    /// Which GPU to test
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true,
        value_parser = fusedrop_tools::gpu_ordinal
    )]
    pub gpu: usize,
    /// One line per check, not only the summary and the failures
    #[arg(long)]
    pub verbose: bool,
    /// Load no Hopper (sm_90a) kernels: on an H100 / H200 every check then runs the mma.sync and
    /// SIMT kernels other GPUs run (to check them past a fault in a Hopper kernel)
    #[arg(long)]
    pub no_hopper: bool,
}

/// Runs `fusedrop selftest` with `options`; returns the exit code.
pub fn run(options: &Options) -> i32 {
    let ctx = match cuda::open_device(options.gpu) {
        Ok(ctx) => ctx,
        Err(e) => {
            println!(
                "fusedrop selftest: no usable GPU, nothing was checked: {e}\n\
                 (exit code {NO_GPU_EXIT}; the CPU reference is tested by `cargo test`, and \
                 `fusedrop demo --device cpu` runs without a GPU)"
            );
            return NO_GPU_EXIT;
        }
    };
    let name = ctx
        .name()
        .unwrap_or_else(|_| format!("GPU {}", options.gpu));
    let capability = ctx
        .compute_capability()
        .map(|(major, minor)| format!("{major}.{minor}"))
        .unwrap_or_else(|_| "unknown".into());
    println!(
        "fusedrop selftest on {name} (compute capability {capability}), seed {}, {} shapes{}",
        options.seed,
        if options.sanitize {
            "sanitizer"
        } else if options.quick {
            "quick"
        } else {
            "full"
        },
        if options.no_hopper {
            ", no Hopper kernels loaded (--no-hopper)"
        } else {
            ""
        }
    );
    let load = LoadOptions {
        hopper: !options.no_hopper,
    };
    let kernels = match LayerKernels::with_options(ctx.default_stream(), load) {
        Ok(kernels) => kernels,
        Err(e) => {
            println!(
                "fusedrop selftest: the kernels could not be loaded, nothing was checked: {e}"
            );
            return 1;
        }
    };
    if kernels.compute_capability() == (9, 0) {
        // What the Hopper kernels' split-K grids and choices are sized by
        // (`LayerKernels::resident_clusters`): the driver's counts, and the count if every
        // multiprocessor took part.
        let resident = kernels.resident_clusters();
        let every_multiprocessor = ResidentClusters::uniform(resident.sm_count());
        let sizes = [2, 4, 8].map(|size| {
            let driver = resident
                .driver_count(size)
                .map_or("not answered".to_string(), |count| count.to_string());
            format!(
                "of {size} blocks {driver} (every multiprocessor: {})",
                every_multiprocessor.of(size)
            )
        });
        println!(
            "clusters that run at once, as the driver counts them: {}",
            sizes.join(", ")
        );
    }
    let cases = cases(options.quick, options.sanitize, options.seed);
    let mut outcomes = Vec::new();
    run_dtype::<f32>(&kernels, &cases, &mut outcomes);
    run_dtype::<f16>(&kernels, &cases, &mut outcomes);
    run_dtype::<bf16>(&kernels, &cases, &mut outcomes);
    report(&outcomes, options.verbose)
}

/// One layer problem of the spread.
#[derive(Debug, Clone)]
struct Case {
    spec: LayerSpec,
    bias: bool,
    accumulate: bool,
}

impl Case {
    fn describe(&self) -> String {
        let LinearShape { m, n, k } = self.spec.shape;
        let act = match self.spec.nonlinearity {
            Nonlinearity::Relu => "relu",
            Nonlinearity::Identity => "identity",
        };
        let mut text = format!(
            "m={m} n={n} k={k} p={} {act}{}",
            self.spec.dropout.p,
            if self.bias { " +bias" } else { "" }
        );
        if self.spec.geometry != Geometry::UNSHARDED {
            let g = self.spec.geometry;
            text.push_str(&format!(
                " shard(row {}, col {}, of {})",
                g.row_offset,
                g.col_offset,
                g.n_global_for(n)
            ));
        }
        if self.accumulate {
            text.push_str(" accumulate");
        }
        text
    }
}

/// (m, n, k).
type Shape = (usize, usize, usize);

/// The `--sanitize` shapes run at every p. (3, 5, 7) and (127, 129, 65): odd k and n, the
/// element-load and element-store fallbacks. (200, 264, 136) and (130, 72, 64): k and n
/// multiples of 8 on 16-byte aligned buffers, so the cp.async 16-byte loads and the 16-byte
/// epilogue stores, with partial tiles; (256, 512, 72): whole 128 x 256 forward tiles.
/// (64, 1000, 136) and (1000, 64, 131): a dX of 64 x 136 over n = 1000 and a dW of 64 x 131
/// over m = 1000, narrow products that the mma.sync and SIMT kernels split over 3 shares
/// (`tensor_core_split`, `simt_split`; 5 tiles of 64 x 32), on the aligned and on the general
/// kernel, and the Hopper kernels over clusters of 4 (dX). Every forward config runs on every
/// shape; the identity cases with p > 0 also run the backward with a workspace
/// (`auto_workspace`).
const SANITIZE_SHAPES: [Shape; 7] = [
    (3, 5, 7),
    (127, 129, 65),
    (200, 264, 136),
    (130, 72, 64),
    (256, 512, 72),
    (64, 1000, 136),
    (1000, 64, 131),
];

/// The `--sanitize` shapes that take the backward tiles the shapes above do not, on an H100 SXM
/// or H200 (132 multiprocessors), an H100 PCIe (114) and an A100 (108): run at two p, one case with ReLU and one
/// with the identity. Each has one small dimension, so that one product is large and cheap
/// (few multiply-adds per output): which tile a product gets depends on its output tiles
/// against the multiprocessors (`BackwardChoice`, docs/BACKWARD.md), and the small dimension is
/// the other product's output side or this one's reduction. Per shape, the product it is for:
/// - dX (1536 x 2816 outputs) and dW: 128 x 128 mma.sync and SIMT tiles, Hopper's 128 x 256,
///   on aligned operands: (1536, 8, 2816), (8, 1536, 2816); with k odd, the general mma.sync
///   kernels: (1536, 7, 1535), (7, 1536, 1535).
/// - dX (328 x 1536) and dW: 64 x 64 mma.sync and SIMT tiles (144 of them, 36 of 128 x 128),
///   aligned: (328, 8, 1536), (8, 328, 1536); general: (328, 7, 1535), (7, 328, 1535).
/// - Hopper's split-K, narrow products over long reductions: dX over n = 512 in clusters of 2,
///   over 2048 in clusters of 8: (64, 512, 136), (64, 2048, 136); dW likewise (512, 64, 136),
///   (2048, 64, 136) (clusters of 4: (1536, 8, 2816)'s dW, (64, 1000, 136)'s dX).
/// - Hopper's one launch of both products on 128 x 256 tiles (`hopper_one_launch`), which
///   needs both products to have a wave of them: (128, 128, 33792), 132 tiles each (on 128 x 128
///   tiles the shapes above take it, where neither product splits).
///
/// `tests::the_sanitize_shapes_reach_every_kernel` checks that together with the shapes above
/// they launch every forward and backward entry point, as the library plans them.
const SANITIZE_TILE_SHAPES: [Shape; 13] = [
    (1536, 8, 2816),
    (8, 1536, 2816),
    (1536, 7, 1535),
    (7, 1536, 1535),
    (328, 8, 1536),
    (8, 328, 1536),
    (328, 7, 1535),
    (7, 328, 1535),
    (64, 512, 136),
    (64, 2048, 136),
    (512, 64, 136),
    (2048, 64, 136),
    (128, 128, 33792),
];

/// Every p of a case's spread.
const PROBABILITIES: [f32; 4] = [0.0, 0.1, 0.5, 1.0];

fn cases(quick: bool, sanitize: bool, seed: u64) -> Vec<Case> {
    let groups: Vec<(&[Shape], &[f32])> = if sanitize {
        vec![
            (&SANITIZE_SHAPES, &PROBABILITIES),
            (&SANITIZE_TILE_SHAPES, &[0.1, 0.5]),
        ]
    } else if quick {
        // The last shape has n and k multiples of 8, so the Hopper kernels take it.
        vec![(
            &[(3, 5, 7), (127, 129, 65), (200, 300, 257), (130, 72, 64)],
            &PROBABILITIES,
        )]
    } else {
        vec![(
            &[
                (1, 1, 1),
                (3, 5, 7),
                (17, 33, 9),
                (64, 64, 64),
                (127, 129, 65),
                (200, 300, 257),
                (513, 257, 1000),
            ],
            &PROBABILITIES,
        )]
    };
    let mut cases = Vec::new();
    let shapes = groups.into_iter().flat_map(|(shapes, probabilities)| {
        shapes.iter().map(move |&shape| (shape, probabilities))
    });
    for (i, ((m, n, k), probabilities)) in shapes.enumerate() {
        for (j, &p) in probabilities.iter().enumerate() {
            let nonlinearity = if (i + j) % 2 == 0 {
                Nonlinearity::Relu
            } else {
                Nonlinearity::Identity
            };
            let dropout = DropoutSpec::new(p, seed.wrapping_add(i as u64), 100 + j as u64);
            let mut spec = LayerSpec::new(LinearShape::new(m, n, k), nonlinearity, dropout);
            if j == 2 && i % 2 == 1 {
                spec = spec.with_geometry(Geometry {
                    row_offset: 3,
                    col_offset: 5,
                    n_global: Some(n as u64 + 11),
                });
            }
            cases.push(Case {
                spec,
                bias: (i + j) % 3 != 0,
                accumulate: j == 1 && i % 2 == 0,
            });
        }
    }
    cases
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    /// The GPU cannot run this kernel (an f16 or bf16 check on a GPU below compute capability
    /// 8.0): not a failure of the code. Any other refusal to run is a failure.
    Skip,
}

struct Outcome {
    op: &'static str,
    dtype: &'static str,
    kernel: String,
    case: String,
    /// The worst relative L2 error of the check's outputs (`None` for bit-exact checks).
    error: Option<f64>,
    tolerance: f64,
    mask_errors: usize,
    status: Status,
    note: String,
}

/// What one check measured, before it is judged.
struct Measured {
    error: Option<f64>,
    mask_errors: usize,
    note: String,
}

/// Judges one check. `gpu_too_old`: the GPU is below what the check's dtype needs
/// (`Element::NEEDS_SM80` on a GPU below 8.0), so the kernels' refusal
/// (`Error::UnsupportedDevice`) is a skip. Every other refusal fails: a build that left out a
/// module this GPU could run, or a handle made without it, has checked nothing.
fn judge(
    op: &'static str,
    dtype: &'static str,
    kernel: String,
    case: &Case,
    (tolerance, gpu_too_old): (f64, bool),
    result: fusedrop::Result<Measured>,
) -> Outcome {
    let case = case.describe();
    match result {
        Ok(m) => {
            let within = m.error.is_none_or(|e| e < tolerance);
            let status = if within && m.mask_errors == 0 {
                Status::Pass
            } else {
                Status::Fail
            };
            Outcome {
                op,
                dtype,
                kernel,
                case,
                error: m.error,
                tolerance,
                mask_errors: m.mask_errors,
                status,
                note: m.note,
            }
        }
        Err(e) => Outcome {
            op,
            dtype,
            kernel,
            case,
            error: None,
            tolerance,
            mask_errors: 0,
            status: if gpu_too_old && matches!(e, Error::UnsupportedDevice(_)) {
                Status::Skip
            } else {
                Status::Fail
            },
            note: e.to_string(),
        },
    }
}

fn run_dtype<T: Element>(kernels: &LayerKernels, cases: &[Case], out: &mut Vec<Outcome>) {
    let gpu_too_old = T::NEEDS_SM80 && kernels.compute_capability() < (8, 0);
    for (index, case) in cases.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(case.spec.dropout.seed ^ ((index as u64) << 20));
        let inputs = Inputs::<T>::new(case, &mut rng);
        out.push(judge(
            "dropout",
            T::NAME,
            "dropout".into(),
            case,
            (0.0, gpu_too_old),
            check_dropout(kernels, case, &inputs),
        ));
        match reference::forward_f64(&case.spec, &inputs.x, &inputs.w, inputs.b()) {
            Ok(want) => {
                for config in forward_configs::<T>(case, kernels.hopper_available::<T>()) {
                    out.push(judge(
                        "forward",
                        T::NAME,
                        config.name().into(),
                        case,
                        (T::REL_L2_TOLERANCE, gpu_too_old),
                        check_forward(kernels, case, &inputs, config, &want),
                    ));
                }
            }
            Err(e) => out.push(judge(
                "forward",
                T::NAME,
                "reference".into(),
                case,
                (T::REL_L2_TOLERANCE, gpu_too_old),
                Err(e),
            )),
        }
        // With the workspace for split-K, where a product is narrow enough to split.
        let splits = |kernel| {
            kernels
                .backward_kernels_with_workspace_for::<T>(
                    case.spec.shape,
                    case.spec.nonlinearity,
                    kernel,
                )
                .is_ok_and(|c| c.dx_splits > 1 || c.dw_splits > 1)
        };
        let families = backward_families::<T>(case, splits, kernels.hopper_available::<T>());
        for (name, kernel, workspace) in families {
            out.push(judge(
                "backward",
                T::NAME,
                name.into(),
                case,
                (T::REL_L2_TOLERANCE, gpu_too_old),
                check_backward(kernels, case, &inputs, kernel, workspace),
            ));
        }
    }
}

/// Every forward config that can run `case`: each one compiled for `T`, and where `hopper` (its
/// modules loaded for `T`) and k is a multiple of 8, each Hopper config whose k-split k allows
/// (the selftest's buffers are whole allocations, so 16-byte aligned).
fn forward_configs<T: Element>(case: &Case, hopper: bool) -> Vec<ForwardConfig> {
    let mut configs = ForwardConfig::all_for::<T>().to_vec();
    let k = case.spec.shape.k;
    if k % 8 == 0 && hopper {
        configs.extend(ForwardConfig::HOPPER.into_iter().filter(|c| k >= c.min_k()));
    }
    configs
}

/// Every backward kernel family that can run `case`: Auto, and each one forced (the forced
/// Hopper tiles, which run the same kernels, are left to tests/gpu_backward.rs); the classic
/// families also with the workspace for split-K where `splits(family)` says a product of the
/// case splits with it; Hopper where `hopper` (its modules loaded for `T`) and the operands fit,
/// with its one launch and its TMA-store kernels, and, where dZ is not dY, its transform-warp
/// and dZ-from-dX variants; Auto with dY times
/// the identity's mask in a workspace where the case has one.
fn backward_families<T: Element>(
    case: &Case,
    splits: impl Fn(BackwardKernel) -> bool,
    hopper: bool,
) -> Vec<(&'static str, BackwardKernel, Workspace)> {
    let LinearShape { m, n, k } = case.spec.shape;
    let mut families = vec![
        ("auto", BackwardKernel::Auto, Workspace::None),
        ("simt", BackwardKernel::Simt, Workspace::None),
    ];
    if splits(BackwardKernel::Simt) {
        families.push(("simt_split", BackwardKernel::Simt, Workspace::Full));
    }
    if T::NEEDS_SM80 {
        families.push(("tensor_core", BackwardKernel::TensorCore, Workspace::None));
        if splits(BackwardKernel::TensorCore) {
            families.push((
                "tensor_core_split",
                BackwardKernel::TensorCore,
                Workspace::Full,
            ));
        }
        // The selftest's buffers are whole allocations, so 16-byte aligned.
        if m > 0 && n % 8 == 0 && k % 8 == 0 && hopper {
            families.push(("hopper", BackwardKernel::Hopper, Workspace::None));
            // Both products in one launch (issue 11 leaves it to measurement too), where
            // neither product splits (else it runs as `hopper`).
            families.push((
                "hopper_one_launch",
                BackwardKernel::HopperOneLaunch,
                Workspace::None,
            ));
            // The gradients of unsplit products stored by TMA (measured against `hopper`).
            families.push((
                "hopper_tma_store",
                BackwardKernel::HopperTmaStore,
                Workspace::None,
            ));
            // The Hopper variants issue 11 leaves to measurement, where they differ from
            // `hopper` (dZ is not dY): dW's dZᵀ formed by transform warps (entry points of their
            // own), and dZ written by dX into the workspace for dW.
            let spec = &case.spec;
            if spec.nonlinearity == Nonlinearity::Relu || mask::threshold(spec.dropout.p) != 0 {
                families.push((
                    "hopper_transform_warps",
                    BackwardKernel::HopperTransformWarps,
                    Workspace::None,
                ));
                families.push((
                    "hopper_dz_from_dx",
                    BackwardKernel::HopperDzFromDx,
                    Workspace::Full,
                ));
            }
        }
    }
    // The identity with dropout also through a workspace (the mask applied to dY once by the
    // dropout kernel, then the products without a mask), on the family Auto picks.
    if backward::workspace_bytes::<T>(&case.spec) > 0 {
        families.push(("auto_workspace", BackwardKernel::Auto, Workspace::Mask));
    }
    families
}

/// The workspace a backward check passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workspace {
    None,
    /// `workspace_bytes`: room for dY times the identity's mask.
    Mask,
    /// `backward_workspace_bytes`: that, and the split-K partial sums of narrow products.
    Full,
}

/// Fresh random inputs of one case, never zero.
struct Inputs<T> {
    x: Vec<T>,
    w: Vec<T>,
    b: Option<Vec<T>>,
    dy: Vec<T>,
}

impl<T: Element> Inputs<T> {
    fn new(case: &Case, rng: &mut StdRng) -> Self {
        let LinearShape { m, n, k } = case.spec.shape;
        Self {
            x: random(m * k, rng),
            w: random(n * k, rng),
            b: case.bias.then(|| random(n, rng)),
            dy: random(m * n, rng),
        }
    }

    fn b(&self) -> Option<&[T]> {
        self.b.as_deref()
    }
}

/// Values in ±[0.05, 1): random sign and size, never zero.
fn random<T: Element>(len: usize, rng: &mut StdRng) -> Vec<T> {
    (0..len)
        .map(|_| {
            let v = rng.random_range(0.05..1.0);
            T::from_f64(if rng.random() { v } else { -v })
        })
        .collect()
}

fn poisoned<T: Element>(kernels: &LayerKernels, len: usize) -> fusedrop::Result<CudaSlice<T>> {
    Ok(kernels
        .stream()
        .clone_htod(&vec![T::from_f64(f64::NAN); len])?)
}

/// The forward's mask errors: element `i` of `got` (`[m, n]` under the case's spec) is one when
/// the mask drops it but it is not exactly zero, or the mask keeps it but it is exactly zero
/// although the f64 reference `want` is at least 1e-3 of the reference's largest magnitude.
/// Rounding moves a pre-activation by far less than that (f32 accumulation), so only a wrongly
/// dropped element is zero there.
struct ForwardMask<'a> {
    spec: &'a LayerSpec,
    got: &'a [f64],
    want: &'a [f64],
    clearly_nonzero: f64,
}

impl<'a> ForwardMask<'a> {
    fn new(spec: &'a LayerSpec, got: &'a [f64], want: &'a [f64]) -> Self {
        let largest = want
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0_f64, |a, v| a.max(v.abs()));
        ForwardMask {
            spec,
            got,
            want,
            clearly_nonzero: 1e-3 * largest,
        }
    }

    fn error_at(&self, i: usize) -> bool {
        let n = self.spec.shape.n;
        let d = self.spec.dropout;
        let index = self.spec.geometry.linear_index(n, i / n, i % n);
        if mask::keep(d.seed, d.subsequence, d.p, index) {
            self.got[i] == 0.0 && self.want[i].abs() >= self.clearly_nonzero && self.want[i] != 0.0
        } else {
            self.got[i] != 0.0
        }
    }
}

/// The standalone dropout kernel on the case's dY (`[m, n]`): bit for bit.
fn check_dropout<T: Element>(
    kernels: &LayerKernels,
    case: &Case,
    inputs: &Inputs<T>,
) -> fusedrop::Result<Measured> {
    let LinearShape { m, n, .. } = case.spec.shape;
    let host = &inputs.dy;
    let mut want = host.clone();
    reference::dropout_in_place(&mut want, m, n, &case.spec.dropout, &case.spec.geometry)?;
    let mut device = kernels.stream().clone_htod(host)?;
    kernels.dropout_in_place(
        &mut device,
        m,
        n,
        &case.spec.dropout,
        &case.spec.geometry,
        SeedSource::Host,
    )?;
    let (got, want) = (
        to_f64(&kernels.stream().clone_dtoh(&device)?),
        to_f64(&want),
    );
    let differs = |i: usize| got[i].to_bits() != want[i].to_bits();
    let differ = (0..m * n).filter(|&i| differs(i)).count();
    Ok(Measured {
        error: None,
        mask_errors: differ,
        note: if differ > 0 {
            reference::describe_differences(m, n, &got, &want, differs)
        } else {
            String::new()
        },
    })
}

fn check_forward<T: Element>(
    kernels: &LayerKernels,
    case: &Case,
    inputs: &Inputs<T>,
    config: ForwardConfig,
    want: &[f64],
) -> fusedrop::Result<Measured> {
    let spec = &case.spec;
    let x = kernels.stream().clone_htod(&inputs.x)?;
    let w = kernels.stream().clone_htod(&inputs.w)?;
    let b = inputs
        .b()
        .map(|b| kernels.stream().clone_htod(b))
        .transpose()?;
    let mut y = poisoned::<T>(kernels, spec.shape.m * spec.shape.n)?;
    kernels.forward(
        spec,
        &x,
        &w,
        b.as_ref().map(|b| b.as_view()).as_ref(),
        &mut y,
        ForwardOptions {
            config: Some(config),
            ..ForwardOptions::default()
        },
    )?;
    let got = to_f64(&kernels.stream().clone_dtoh(&y)?);
    let LinearShape { m, n, .. } = spec.shape;
    let error = relative_l2_error(&got, want);
    let mask = ForwardMask::new(spec, &got, want);
    let mask_errors = (0..m * n).filter(|&i| mask.error_at(i)).count();
    Ok(Measured {
        error: Some(error),
        mask_errors,
        note: if mask_errors > 0 || error >= T::REL_L2_TOLERANCE {
            reference::describe_differences(m, n, &got, want, |i| {
                mask.error_at(i) || reference::off_by_more_than(got[i], want[i], 0.01)
            })
        } else {
            String::new()
        },
    })
}

fn check_backward<T: Element>(
    kernels: &LayerKernels,
    case: &Case,
    inputs: &Inputs<T>,
    kernel: BackwardKernel,
    workspace: Workspace,
) -> fusedrop::Result<Measured> {
    let spec = &case.spec;
    let LinearShape { m, n, k } = spec.shape;
    // ReLU's backward reads the forward output; both sides get the reference's, rounded to T.
    let y_saved = match spec.nonlinearity {
        Nonlinearity::Relu => Some(reference::forward(spec, &inputs.x, &inputs.w, inputs.b())?),
        Nonlinearity::Identity => None,
    };
    let mut want =
        reference::backward_f64(spec, &inputs.x, &inputs.w, &inputs.dy, y_saved.as_deref())?;

    // When accumulating, the gradients start from random values and the result is their sum.
    let mut rng = StdRng::seed_from_u64(spec.dropout.seed ^ 0xACC);
    let start = |len: usize, rng: &mut StdRng| -> Vec<T> {
        if case.accumulate {
            random(len, rng)
        } else {
            vec![T::from_f64(f64::NAN); len]
        }
    };
    let (dx0, dw0, db0) = (
        start(m * k, &mut rng),
        start(n * k, &mut rng),
        start(n, &mut rng),
    );
    if case.accumulate {
        for (want, start) in [
            (&mut want.dx, &dx0),
            (&mut want.dw, &dw0),
            (&mut want.db, &db0),
        ] {
            for (v, s) in want.iter_mut().zip(start) {
                *v += s.to_f64();
            }
        }
    }

    let x = kernels.stream().clone_htod(&inputs.x)?;
    let w = kernels.stream().clone_htod(&inputs.w)?;
    let dy = kernels.stream().clone_htod(&inputs.dy)?;
    let y = y_saved
        .as_ref()
        .map(|y| kernels.stream().clone_htod(y))
        .transpose()?;
    let mut dx = kernels.stream().clone_htod(&dx0)?;
    let mut dw = kernels.stream().clone_htod(&dw0)?;
    let mut db = kernels.stream().clone_htod(&db0)?;
    let workspace_bytes = match workspace {
        Workspace::None => None,
        Workspace::Mask => Some(backward::workspace_bytes::<T>(spec)),
        Workspace::Full => Some(kernels.backward_workspace_bytes::<T>(spec, kernel)?),
    };
    let mut workspace = workspace_bytes
        .map(|bytes| kernels.stream().alloc_zeros::<u8>(bytes))
        .transpose()?;
    kernels.backward(
        spec,
        &x,
        &w,
        &dy,
        y.as_ref().map(|y| y.as_view()).as_ref(),
        GradientsMut {
            dx: Some(dx.as_view_mut()),
            dw: Some(dw.as_view_mut()),
            db: Some(db.as_view_mut()),
        },
        BackwardOptions {
            accumulate: case.accumulate,
            kernel,
            workspace: workspace.as_mut().map(|w| w.as_view_mut()),
            ..BackwardOptions::default()
        },
    )?;
    let mut worst = 0.0f64;
    let mut note = Vec::new();
    for (name, got, want, rows, cols) in [
        ("dX", &dx, &want.dx, m, k),
        ("dW", &dw, &want.dw, n, k),
        ("db", &db, &want.db, 1, n),
    ] {
        let got = to_f64(&kernels.stream().clone_dtoh(got)?);
        let error = relative_l2_error(&got, want);
        worst = worst.max(error);
        note.push(if error < T::REL_L2_TOLERANCE {
            format!("{name} {error:.1e}")
        } else {
            let wrong = reference::describe_differences(rows, cols, &got, want, |i| {
                reference::off_by_more_than(got[i], want[i], 0.01)
            });
            format!("{name} {error:.1e} ({wrong})")
        });
    }
    Ok(Measured {
        error: Some(worst),
        mask_errors: 0,
        note: note.join(", "),
    })
}

fn format_error(error: Option<f64>) -> String {
    match error {
        None => "exact".into(),
        Some(e) => format!("{e:.1e}"),
    }
}

/// Prints the summary table (one row per op, dtype and kernel), every failure, and the
/// verdict; returns the exit code.
fn report(outcomes: &[Outcome], verbose: bool) -> i32 {
    if verbose {
        for o in outcomes {
            println!(
                "{:<4} {:<8} {:<5} {:<12} {:<58} err {:>8} mask {} {}",
                match o.status {
                    Status::Pass => "ok",
                    Status::Fail => "FAIL",
                    Status::Skip => "skip",
                },
                o.op,
                o.dtype,
                o.kernel,
                o.case,
                format_error(o.error),
                o.mask_errors,
                o.note
            );
        }
        println!();
    }
    println!(
        "{:<9} {:<5} {:<12} {:>6} {:>6} {:>6} {:>11} {:>9} {:>11}  result",
        "op",
        "dtype",
        "kernel",
        "checks",
        "passed",
        "skipped",
        "worst error",
        "tolerance",
        "mask errors"
    );
    let mut groups: Vec<(&str, &str, &str)> = Vec::new();
    for o in outcomes {
        let key = (o.op, o.dtype, o.kernel.as_str());
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    for (op, dtype, kernel) in groups {
        let group: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.op == op && o.dtype == dtype && o.kernel == kernel)
            .collect();
        let passed = group.iter().filter(|o| o.status == Status::Pass).count();
        let skipped = group.iter().filter(|o| o.status == Status::Skip).count();
        let worst = group
            .iter()
            .filter_map(|o| o.error)
            .fold(None, |acc: Option<f64>, e| {
                Some(acc.map_or(e, |a| if e.is_nan() || e > a { e } else { a }))
            });
        let masks: usize = group.iter().map(|o| o.mask_errors).sum();
        let result = if passed + skipped < group.len() {
            "FAIL"
        } else if skipped == group.len() {
            "skipped"
        } else {
            "pass"
        };
        let tolerance = group.first().map_or(0.0, |o| o.tolerance);
        println!(
            "{op:<9} {dtype:<5} {kernel:<12} {:>6} {passed:>6} {skipped:>6} {:>11} {:>9} {masks:>11}  {result}",
            group.len(),
            format_error(worst),
            if tolerance > 0.0 {
                format!("{tolerance:.0e}")
            } else {
                "bit-exact".into()
            },
        );
    }
    let failures: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status == Status::Fail)
        .collect();
    let skipped: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status == Status::Skip)
        .collect();
    if !failures.is_empty() {
        println!("\nfailures:");
        for o in &failures {
            println!(
                "  {} {} {} [{}]: error {} (tolerance {:.0e}), {} mask errors {}",
                o.op,
                o.dtype,
                o.kernel,
                o.case,
                format_error(o.error),
                o.tolerance,
                o.mask_errors,
                o.note
            );
        }
    }
    if let Some(first) = skipped.first() {
        println!(
            "\n{} checks skipped because this GPU cannot run them: {}",
            skipped.len(),
            first.note
        );
    }
    println!();
    if failures.is_empty() && skipped.len() == outcomes.len() {
        println!(
            "selftest: NOTHING CHECKED (all {} checks skipped; exit code {NO_GPU_EXIT})",
            outcomes.len()
        );
        NO_GPU_EXIT
    } else if failures.is_empty() {
        println!(
            "selftest: PASS ({} checks passed, {} skipped)",
            outcomes.len() - skipped.len(),
            skipped.len()
        );
        0
    } else {
        println!(
            "selftest: FAIL ({} of {} checks failed)",
            failures.len(),
            outcomes.len()
        );
        1
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use fusedrop::cuda::backward::{backward_plan, BackwardBuffers};
    use fusedrop::cuda::forward::forward_plan;
    use fusedrop::cuda::launch_plan::OperandAddresses;
    use fusedrop::cuda::launch_table;
    use fusedrop::cuda::GpuFacts;

    use super::*;

    /// Room for every split's partial sums: the `Full` workspace, which holds them by definition.
    const WHOLE_WORKSPACE: usize = 1 << 40;

    /// The backward entry points that `selftest --sanitize` launches in `T` on a GPU and build
    /// that `gpu` describes: its cases and families (`backward_families`), planned as the
    /// wrapper plans them for whole allocations.
    fn sanitize_backward_entry_points<T: Element>(gpu: &GpuFacts) -> BTreeSet<String> {
        let plan = |case: &Case, kernel, workspace: Option<usize>| {
            let buffers = BackwardBuffers {
                dy: 1 << 32,
                y: (case.spec.nonlinearity == Nonlinearity::Relu).then_some(2 << 32),
                w: Some(3 << 32),
                x: Some(4 << 32),
                dx: Some(5 << 32),
                dw: Some(6 << 32),
                db: Some(7 << 32),
                workspace: workspace.map(|len| (8 << 32, len)),
            };
            backward_plan::<T>(&case.spec, case.accumulate, kernel, gpu, &buffers)
        };
        let hopper = hopper_runs::<T>(gpu);
        let mut reached = BTreeSet::new();
        for case in cases(false, true, 1) {
            let splits = |kernel| {
                plan(&case, kernel, Some(WHOLE_WORKSPACE)).is_ok_and(|plans| {
                    plans
                        .iter()
                        .any(|(p, _)| p.function.starts_with("fusedrop_backward_split_sum"))
                })
            };
            for (name, kernel, workspace) in backward_families::<T>(&case, splits, hopper) {
                let bytes = match workspace {
                    Workspace::None => None,
                    Workspace::Mask => Some(backward::workspace_bytes::<T>(&case.spec)),
                    Workspace::Full => Some(WHOLE_WORKSPACE),
                };
                let plans = plan(&case, kernel, bytes).unwrap_or_else(|e| {
                    panic!("{name} on {}: {e}", case.describe());
                });
                reached.extend(plans.into_iter().map(|(p, _)| p.function));
            }
        }
        reached
    }

    fn facts(sm_count: usize, compute_capability: (i32, i32)) -> GpuFacts {
        let hopper = compute_capability == (9, 0);
        GpuFacts {
            compute_capability,
            resident: ResidentClusters::uniform(sm_count),
            forward_sm90_loaded: hopper,
            backward_sm90_loaded: hopper,
        }
    }

    /// Whether the Hopper modules of `gpu` run `T`.
    fn hopper_runs<T: Element>(gpu: &GpuFacts) -> bool {
        T::NEEDS_SM80
            && gpu.compute_capability == (9, 0)
            && gpu.forward_sm90_loaded
            && gpu.backward_sm90_loaded
    }

    /// The forward entry points that `selftest --sanitize` launches in `T` on a GPU and build
    /// that `gpu` describes: every config of `forward_configs` on every case, planned as the
    /// wrapper plans them for whole allocations.
    fn sanitize_forward_entry_points<T: Element>(gpu: &GpuFacts) -> BTreeSet<String> {
        let addresses = |case: &Case| OperandAddresses {
            x: 1 << 32,
            w: 2 << 32,
            b: case.bias.then_some(3 << 32),
            y: 4 << 32,
        };
        let mut reached = BTreeSet::new();
        for case in cases(false, true, 1) {
            for config in forward_configs::<T>(&case, hopper_runs::<T>(gpu)) {
                let plan = forward_plan::<T>(&case.spec, Some(config), gpu, &addresses(&case))
                    .unwrap_or_else(|e| panic!("{} on {}: {e}", config.name(), case.describe()));
                reached.insert(plan.function);
            }
        }
        reached
    }

    /// Every forward and backward entry point the build has for `dtype` on a GPU that `gpu`
    /// describes: each config of the launch table but the sweep's (SIMT for the forward only in
    /// f32, for the backward in every dtype; mma.sync and its aligned-operand kernels for f16
    /// and bf16; Hopper's where its modules are loaded), the backward's for dX and for dW (and
    /// Hopper's dW with transform warps, and its unsplit configs' launch of both products, but
    /// for the TMA-store config, which has neither), and the backward's split-K sums.
    fn entry_points(dtype: &str, gpu: &GpuFacts) -> BTreeSet<String> {
        let halves = dtype != "f32";
        let mut all = BTreeSet::from([format!("fusedrop_backward_split_sum_{dtype}")]);
        for numbers in launch_table::ALL {
            let (pass, config, products, hopper_loaded): (_, _, &[&str], _) =
                if let Some(config) = numbers.name.strip_prefix("forward_") {
                    ("forward", config, &[""], gpu.forward_sm90_loaded)
                } else if let Some(config) = numbers.name.strip_prefix("backward_") {
                    (
                        "backward",
                        config,
                        &["dx_", "dw_"],
                        gpu.backward_sm90_loaded,
                    )
                } else {
                    continue;
                };
            let variants: &[&str] = if config.starts_with("sweep_") {
                &[]
            } else if config.starts_with("simt") && (pass == "backward" || !halves) {
                &[""]
            } else if config.starts_with("tc") && halves {
                &["", "_aligned"]
            } else if config.starts_with("wg") && halves && hopper_loaded {
                &[""]
            } else {
                &[]
            };
            for product in products {
                for variant in variants {
                    all.insert(format!(
                        "fusedrop_{pass}_{product}{config}{variant}_{dtype}"
                    ));
                }
            }
            if pass == "backward"
                && config.starts_with("wg")
                && !variants.is_empty()
                && !numbers.tma_store
            {
                all.insert(format!("fusedrop_backward_dw_{config}_transform_{dtype}"));
                if numbers.cluster == 1 {
                    all.insert(format!("fusedrop_backward_dxdw_{config}_{dtype}"));
                }
            }
        }
        all
    }

    /// The forward and backward entry points that `selftest --sanitize` launches in `T`.
    fn sanitize_entry_points<T: Element>(gpu: &GpuFacts) -> BTreeSet<String> {
        let mut reached = sanitize_forward_entry_points::<T>(gpu);
        reached.extend(sanitize_backward_entry_points::<T>(gpu));
        reached
    }

    #[test]
    fn the_sanitize_shapes_reach_every_kernel() {
        for (gpu, facts) in [
            ("an H100 SXM or H200", facts(132, (9, 0))),
            ("an H100 PCIe", facts(114, (9, 0))),
            ("an A100", facts(108, (8, 0))),
        ] {
            for (dtype, reached) in [
                ("f32", sanitize_entry_points::<f32>(&facts)),
                ("f16", sanitize_entry_points::<f16>(&facts)),
                ("bf16", sanitize_entry_points::<bf16>(&facts)),
            ] {
                let every = entry_points(dtype, &facts);
                let missed: Vec<_> = every.difference(&reached).collect();
                assert!(
                    missed.is_empty(),
                    "on {gpu}, selftest --sanitize never launches {missed:?}"
                );
                for pass in [
                    "fusedrop_forward_",
                    "fusedrop_backward_dx_",
                    "fusedrop_backward_dw_",
                ] {
                    assert!(
                        every.iter().any(|entry| entry.starts_with(pass)),
                        "{dtype}: the launch table lists no {pass}* configs"
                    );
                }
            }
        }
    }

    fn small_case(p: f32) -> Case {
        Case {
            spec: LayerSpec::new(
                LinearShape { m: 3, n: 40, k: 8 },
                Nonlinearity::Relu,
                DropoutSpec {
                    p,
                    seed: 11,
                    subsequence: 2,
                },
            ),
            bias: false,
            accumulate: false,
        }
    }

    fn refused() -> fusedrop::Result<Measured> {
        Err(Error::UnsupportedDevice("not loaded".into()))
    }

    #[test]
    fn a_refusal_is_a_skip_only_on_a_gpu_too_old_for_the_dtype() {
        let case = small_case(0.1);
        let skip = judge(
            "forward",
            "f16",
            "tc".into(),
            &case,
            (2e-3, true),
            refused(),
        );
        assert_eq!(skip.status, Status::Skip);
        let fail = judge(
            "forward",
            "f16",
            "tc".into(),
            &case,
            (2e-3, false),
            refused(),
        );
        assert_eq!(fail.status, Status::Fail, "{}", fail.note);
        let other = judge(
            "forward",
            "f16",
            "tc".into(),
            &case,
            (2e-3, true),
            Err(Error::InvalidArgument("bad".into())),
        );
        assert_eq!(other.status, Status::Fail);
    }

    #[test]
    fn the_verdict_needs_a_check_that_ran() {
        let case = small_case(0.1);
        let outcome = |gpu_too_old, result| {
            judge(
                "dropout",
                "bf16",
                "dropout".into(),
                &case,
                (0.0, gpu_too_old),
                result,
            )
        };
        let passed = || {
            outcome(
                false,
                Ok(Measured {
                    error: None,
                    mask_errors: 0,
                    note: String::new(),
                }),
            )
        };
        assert_eq!(
            report(&[outcome(true, refused()), outcome(true, refused())], false),
            NO_GPU_EXIT
        );
        assert_eq!(report(&[outcome(true, refused()), passed()], false), 0);
        assert_eq!(report(&[outcome(false, refused()), passed()], false), 1);
    }

    #[test]
    fn the_forward_mask_check_catches_both_directions() {
        let case = small_case(0.5);
        let spec = &case.spec;
        let LinearShape { m, n, .. } = spec.shape;
        let d = spec.dropout;
        let kept = |i: usize| mask::keep(d.seed, d.subsequence, d.p, i as u64);
        // A reference with every element clearly non-zero where kept, and a correct output.
        let want: Vec<f64> = (0..m * n)
            .map(|i| if kept(i) { 1.0 + i as f64 } else { 0.0 })
            .collect();
        let first_kept = (0..m * n).find(|&i| kept(i)).unwrap();
        let first_dropped = (0..m * n).find(|&i| !kept(i)).unwrap();
        let errors = |got: &[f64]| {
            let mask = ForwardMask::new(spec, got, &want);
            (0..m * n).filter(|&i| mask.error_at(i)).collect::<Vec<_>>()
        };
        assert_eq!(errors(&want), Vec::<usize>::new());
        let mut extra_drop = want.clone();
        extra_drop[first_kept] = 0.0;
        assert_eq!(errors(&extra_drop), vec![first_kept]);
        let mut kept_dropped = want.clone();
        kept_dropped[first_dropped] = 0.5;
        assert_eq!(errors(&kept_dropped), vec![first_dropped]);
        // A kept element whose reference is tiny (a pre-activation near zero) may round to zero.
        let mut tiny = want.clone();
        tiny[first_kept] = 1e-9;
        let mut tiny_zero = tiny.clone();
        tiny_zero[first_kept] = 0.0;
        let mask = ForwardMask::new(spec, &tiny_zero, &tiny);
        assert!(!mask.error_at(first_kept));
    }
}
