//! The standalone dropout kernel (kernels/dropout.cu): applies the mask in place to an `[m, n]`
//! buffer. It is the dropout half of the unfused baseline, a direct GPU check of Philox, and (out
//! of place, with scale 1) the identity backward's workspace pre-pass.

use cudarc::driver::{DevicePtrMut, LaunchConfig, PushKernelArg};

use crate::cuda::{check_seed_source, LayerKernels, MaskParams, SeedSource};
use crate::element::Element;
use crate::error::{invalid, Result};
use crate::layer::{DropoutSpec, Geometry};
use crate::validate;

const THREADS: u32 = 256;

impl LayerKernels {
    /// Applies dropout in place to the row-major `[m, n]` buffer `y` on the handle's stream:
    /// `y[r, c] = keep(i) ? y[r, c] * 1/(1-p) : 0` with `i = geometry.linear_index(n, r, c)`,
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
        let stream = self.stream();
        validate::check_probability(dropout.p)?;
        let elements = (m as u64)
            .checked_mul(n as u64)
            .filter(|&e| e <= validate::MAX_INDEX)
            .ok_or_else(|| invalid!("m*n = {m}*{n} overflows 64-bit index arithmetic"))?;
        validate::check_len("Y", y.len(), elements as usize, &format!("m*n = {m}*{n}"))?;
        validate::check_geometry(geometry, m, n)?;
        check_seed_source(&seed)?;
        if elements == 0 || dropout.p == 0.0 {
            return Ok(());
        }
        let mut params = MaskParams::new(dropout, geometry, n);
        let (y_ptr, _y_guard) = y.device_ptr_mut(stream);
        let _seed_guards = params.read_seed_from(seed, stream);
        // SAFETY: y_ptr points to m*n elements of T (checked above), read and written in place;
        // the seed pointer (if any) to two u64 (checked above); both stay alive until the guards
        // drop after the launch is queued.
        unsafe { self.queue_dropout::<T>(y_ptr, y_ptr, m, n, &params) }
    }

    /// Queues kernels/dropout.cu: `y = x * (keep(i) ? scale : 0)` over `[m, n]` elements with
    /// `params`' mask and scale (the backward's workspace pre-pass passes scale 1).
    ///
    /// # Safety
    ///
    /// `x` and `y` must point to at least m*n elements of T on this handle's device (the same
    /// buffer for in place, else buffers that do not overlap), with m*n within
    /// `validate::MAX_INDEX`, and a seed or record pointer in `params` to two u64; all of them
    /// must stay alive until the launch is queued (the callers hold cudarc's guards).
    pub(crate) unsafe fn queue_dropout<T: Element>(
        &self,
        x: u64,
        y: u64,
        m: usize,
        n: usize,
        params: &MaskParams,
    ) -> Result<()> {
        let function = self.function("dropout", &format!("fusedrop_dropout_{}", T::NAME), 0)?;
        let calls = (m as u64) * (n as u64 / 4 + 2);
        let blocks = calls.div_ceil(u64::from(THREADS)).clamp(1, 65_535 * 8) as u32;
        let config = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (m_arg, n_arg) = (m as i64, n as i64);
        let mut launch = self.stream().launch_builder(&function);
        launch.arg(&x).arg(&y).arg(&m_arg).arg(&n_arg).arg(params);
        // SAFETY: the kernel's signature is (const T*, T*, long long, long long, MaskParams); the
        // pointers are valid for m*n elements and any seed or record pointer for two u64 (this
        // function's contract). Any 1-D grid is correct (the kernel loops grid-stride).
        unsafe { launch.launch(config) }?;
        Ok(())
    }
}
