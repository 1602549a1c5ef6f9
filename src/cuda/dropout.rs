//! The standalone dropout kernel (kernels/dropout.cu): applies the mask to an `[m, n]` buffer, in
//! place ([`LayerKernels::dropout_in_place`]) or into another one ([`LayerKernels::dropout`]). It
//! is the dropout half of the unfused baselines (in place on Y in the forward's, from dY into dZ
//! in the backward's), a direct GPU check of Philox, and (out of place, with scale 1) the
//! identity backward's workspace pre-pass.

use cudarc::driver::{DevicePtr, DevicePtrMut};

use crate::cuda::launch_plan::{KernelArg, LaunchPlan, Operand};
use crate::cuda::{LayerKernels, MaskParams, SeedSource};
use crate::element::Element;
use crate::error::Result;
use crate::layer::{DropoutSpec, Geometry};
use crate::validate;

const THREADS: u32 = 256;

impl LayerKernels {
    /// Applies dropout in place to the row-major `[m, n]` buffer `y` on the handle's stream:
    /// `y[r, c] = y[r, c] * (keep(i) ? 1/(1-p) : 0)` with `i = geometry.linear_index(n, r, c)` (a
    /// multiplication, so a dropped NaN or infinity becomes NaN),
    /// (seed, subsequence) taken from `seed` as in
    /// [`ForwardOptions::seed`](super::forward::ForwardOptions::seed).
    ///
    /// Asynchronous: returns once the launch is queued. `p = 0` queues nothing (the result is
    /// the input).
    ///
    /// ```no_run
    /// # fn main() -> fusedrop::Result<()> {
    /// use fusedrop::cuda::{self, LayerKernels, SeedSource};
    /// use fusedrop::{DropoutSpec, Geometry};
    /// let ctx = cuda::open_device(0)?;
    /// let kernels = LayerKernels::new(ctx.default_stream())?;
    /// let mut y = kernels.stream().clone_htod(&vec![1.0f32; 6])?;
    /// kernels.dropout_in_place(&mut y, 2, 3, &DropoutSpec::new(0.5, 42, 0),
    ///     &Geometry::UNSHARDED, SeedSource::Host)?;
    /// # Ok(()) }
    /// ```
    pub fn dropout_in_place<T: Element>(
        &self,
        y: &mut impl DevicePtrMut<T>,
        m: usize,
        n: usize,
        dropout: &DropoutSpec,
        geometry: &Geometry,
        seed: SeedSource<'_>,
    ) -> Result<()> {
        self.check_dropout(y, m, n, dropout, geometry, &seed)?;
        if m * n == 0 || dropout.p == 0.0 {
            return Ok(());
        }
        let stream = self.stream();
        let mut params = MaskParams::new(dropout, geometry, n);
        let (y_ptr, _y_guard) = y.device_ptr_mut(stream);
        let _seed_guards = params.read_seed_from(seed, stream);
        let plan = dropout_plan::<T>(Operand::Y, Operand::Y, m, n);
        // SAFETY: the plan is `dropout_plan`'s, in place on y, which holds m*n elements of T
        // (checked above; m*n within MAX_INDEX); the seed pointer (if any) holds two u64
        // (checked above); both stay alive until the guards drop after the launch is queued.
        unsafe { self.queue_plan::<T>(&plan, &|op| (op == Operand::Y).then_some(y_ptr), &params) }
    }

    /// Out of place: `y[r, c] = x[r, c] * (keep(i) ? 1/(1-p) : 0)` for the row-major `[m, n]`
    /// buffers `x` and `y`, otherwise as [`dropout_in_place`](Self::dropout_in_place); `x` is
    /// left as it is. `p = 0` queues a device copy of `x` into `y` (and, like the in-place form,
    /// records no seed pair).
    #[allow(clippy::too_many_arguments)] // the in-place form's arguments and the input
    pub fn dropout<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
        m: usize,
        n: usize,
        dropout: &DropoutSpec,
        geometry: &Geometry,
        seed: SeedSource<'_>,
    ) -> Result<()> {
        self.check_dropout(y, m, n, dropout, geometry, &seed)?;
        validate::check_len("X", x.len(), m * n, &format!("m*n = {m}*{n}"))?;
        self.check_context("X", x.stream())?;
        if m * n == 0 {
            return Ok(());
        }
        let stream = self.stream();
        if dropout.p == 0.0 {
            return Ok(stream.memcpy_dtod(x, y)?);
        }
        let mut params = MaskParams::new(dropout, geometry, n);
        let (x_ptr, _x_guard) = x.device_ptr(stream);
        let (y_ptr, _y_guard) = y.device_ptr_mut(stream);
        let _seed_guards = params.read_seed_from(seed, stream);
        let plan = dropout_plan::<T>(Operand::X, Operand::Y, m, n);
        let address = |op| match op {
            Operand::X => Some(x_ptr),
            Operand::Y => Some(y_ptr),
            _ => None,
        };
        // SAFETY: the plan is `dropout_plan`'s, from x into y, each of which holds m*n elements
        // of T (checked above; m*n within MAX_INDEX) and which are different buffers (x is
        // borrowed shared, y mutably); the seed pointer (if any) holds two u64 (checked above);
        // all stay alive until the guards drop after the launch is queued.
        unsafe { self.queue_plan::<T>(&plan, &address, &params) }
    }

    /// The checks of both forms: p, `m*n` against Y's length, the geometry, Y's CUDA context
    /// and the seed source.
    fn check_dropout<T>(
        &self,
        y: &impl DevicePtrMut<T>,
        m: usize,
        n: usize,
        dropout: &DropoutSpec,
        geometry: &Geometry,
        seed: &SeedSource<'_>,
    ) -> Result<()> {
        validate::check_probability(dropout.p)?;
        let elements = validate::product(m, n, "m*n")?;
        validate::check_len("Y", y.len(), elements as usize, &format!("m*n = {m}*{n}"))?;
        validate::check_geometry(geometry, m, n)?;
        self.check_context("Y", y.stream())?;
        self.check_seed_source(seed)
    }
}

/// The launch of kernels/dropout.cu over `[m, n]` elements: `output = input * (keep(i) ? scale
/// : 0)` with the launch's mask parameters (in place when `input == output`; out of place for
/// [`LayerKernels::dropout`], X into Y, and the backward's workspace pre-pass, dY into the
/// workspace with scale 1). Its arguments:
/// (input, output, m, n, the mask parameters); 256 threads per block, one thread per Philox
/// call (4 elements), grid-stride beyond 65535 * 8 blocks. The grid is sized for the kernel's
/// path for any shard (up to n/4 + 2 calls per row, the partial calls at each row's ends); its
/// path for whole rows needs about m*n/4 calls and leaves the rest of the threads idle.
/// `m * n` must be within `validate::MAX_INDEX` (the wrapper checks it).
pub fn dropout_plan<T: Element>(input: Operand, output: Operand, m: usize, n: usize) -> LaunchPlan {
    let calls = (m as u64).saturating_mul(n as u64 / 4 + 2);
    let blocks = calls.div_ceil(u64::from(THREADS)).clamp(1, 65_535 * 8) as u32;
    LaunchPlan {
        module: "dropout",
        function: format!("fusedrop_dropout_{}", T::NAME),
        grid: (blocks, 1, 1),
        threads: THREADS,
        smem_bytes: 0,
        cluster: 1,
        args: vec![
            KernelArg::Pointer(input),
            KernelArg::Pointer(output),
            KernelArg::I64(m as i64),
            KernelArg::I64(n as i64),
            KernelArg::MaskParams,
        ],
    }
}
