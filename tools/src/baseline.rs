//! cuBLASLt baselines: the GEMM floor and the best unfused path the benchmarks compare with.
//!
//! All operands use the crate's row-major layout (X `[m, k]`, W `[n, k]` as in `nn.Linear`, Y
//! `[m, n]`). cuBLASLt is column-major, and a row-major `[r, c]` matrix is the column-major
//! `[c, r]` matrix of its transpose, so every product is computed transposed:
//!
//! | operation              | row-major          | what cuBLASLt computes (column-major) | (M, N, K) |
//! |------------------------|--------------------|---------------------------------------|-----------|
//! | [`GemmOp::Forward`]    | `Y = X·Wᵀ`         | `Yᵀ = op_T(W) · Xᵀ`  (TN)             | (n, m, k) |
//! | [`GemmOp::BackwardData`] | `dX = dZ·W`      | `dXᵀ = Wᵀ · dZᵀ`     (NN)             | (k, m, n) |
//! | [`GemmOp::BackwardWeight`] | `dW = dZᵀ·X`   | `dWᵀ = Xᵀ · op_T(dZᵀ)` (NT)           | (k, n, m) |
//!
//! The bias of [`GemmOp::ForwardReluBias`] runs along cuBLASLt's rows (our columns, one per
//! output feature), and the bias gradient of [`GemmOp::BackwardWeightBiasGrad`] is
//! `CUBLASLT_EPILOGUE_BGRADB`: the sum over the reduction dimension (our rows) of dZ, one per
//! column of cuBLASLt's D (our output feature).
//!
//! f32 runs in true fp32 (`CUBLAS_COMPUTE_32F`, never TF32); f16 and bf16 accumulate in f32.
//!
//! The library is opened when [`Blas::new`] is first called, after [`cublaslt_present`] has
//! checked that it and every symbol used here can be loaded: cudarc panics on a missing library
//! or symbol, this module returns [`Error::DriverUnavailable`] instead.
//!
//! ```no_run
//! # fn main() -> fusedrop::Result<()> {
//! use fusedrop_tools::baseline::{Blas, GemmOp};
//! use fusedrop::LinearShape;
//! let ctx = fusedrop::cuda::open_device(0)?;
//! let stream = ctx.default_stream();
//! let blas = Blas::new(&stream)?; // once per stream
//! let shape = LinearShape::new(256, 512, 128);
//! let plan = blas.plan::<f32>(GemmOp::Forward, shape)?; // once per shape
//! let x = stream.clone_htod(&vec![1.0f32; 256 * 128]).map_err(fusedrop::Error::from)?;
//! let w = stream.clone_htod(&vec![0.5f32; 512 * 128]).map_err(fusedrop::Error::from)?;
//! let mut y = stream.alloc_zeros::<f32>(256 * 512).map_err(fusedrop::Error::from)?;
//! plan.forward(&x, &w, &mut y)?;
//! # Ok(()) }
//! ```

use std::ffi::c_void;
use std::marker::PhantomData;
use std::mem::size_of;
use std::sync::Arc;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use crate::invalid;
use fusedrop::validate;
use fusedrop::Element;
use fusedrop::LinearShape;
use fusedrop::{Error, Result};

/// The cuBLASLt entry points this module calls; all are probed before the first use (when the
/// library is loaded at run time).
#[cfg(not(cudarc_dynamic_linking))]
const SYMBOLS: [&str; 13] = [
    "cublasLtCreate",
    "cublasLtDestroy",
    "cublasLtGetVersion",
    "cublasLtMatmul",
    "cublasLtMatmulAlgoGetHeuristic",
    "cublasLtMatmulDescCreate",
    "cublasLtMatmulDescDestroy",
    "cublasLtMatmulDescSetAttribute",
    "cublasLtMatmulPreferenceCreate",
    "cublasLtMatmulPreferenceDestroy",
    "cublasLtMatmulPreferenceSetAttribute",
    "cublasLtMatrixLayoutCreate",
    "cublasLtMatrixLayoutDestroy",
];

/// How many algorithms [`Blas::plan`] asks cuBLASLt's heuristic for.
pub const HEURISTIC_CANDIDATES: usize = 8;

/// cuBLASLt's default alignment assumption for A, B, C, D and the bias: the algorithm chosen by
/// the heuristic may use vector loads that need it, so launches check it first.
const ALIGNMENT: u64 = 256;

/// Whether libcublasLt and every entry point used here can be loaded (checked once).
#[cfg(not(cudarc_dynamic_linking))]
pub fn cublaslt_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: is_culib_present only tries to open the library by the names cudarc itself
        // uses and drops it. culib() opens the same names and, as one of them was just found,
        // does not reach its panic; `get` only looks a symbol up (nothing is called).
        unsafe {
            sys::is_culib_present()
                && SYMBOLS.iter().all(|name| {
                    sys::culib()
                        .get::<unsafe extern "C" fn()>(name.as_bytes())
                        .is_ok()
                })
        }
    })
}

/// Whether libcublasLt and every entry point used here can be loaded: with fusedrop's
/// `dynamic-linking` feature cudarc linked it at build time and the process could not have
/// started without it, so this is `true`.
#[cfg(cudarc_dynamic_linking)]
pub fn cublaslt_present() -> bool {
    true
}

fn require_cublaslt() -> Result<()> {
    if cublaslt_present() {
        Ok(())
    } else {
        Err(Error::DriverUnavailable(
            "libcublasLt could not be loaded, or lacks an entry point this crate uses (install \
             the CUDA toolkit's cuBLAS, or put the directory holding libcublasLt.so on \
             LD_LIBRARY_PATH)"
                .into(),
        ))
    }
}

/// The cuBLASLt version number (e.g. 130000 for 13.0.0), or an error without the library.
pub fn cublaslt_version() -> Result<usize> {
    require_cublaslt()?;
    // SAFETY: the library and the symbol were found above; the call takes no arguments.
    Ok(unsafe { sys::cublasLtGetVersion() })
}

fn blas_error(what: &str, e: lt::CublasError) -> Error {
    Error::Cuda(format!("cuBLASLt {what}: {e}"))
}

/// The matrix product a [`GemmPlan`] computes. Shapes are those of the layer
/// ([`LinearShape`]: X `[m, k]`, W `[n, k]`, Y `[m, n]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmOp {
    /// `Y = X·Wᵀ`, no epilogue: the floor every forward is compared with.
    Forward,
    /// `Y = relu(X·Wᵀ + b)` with `CUBLASLT_EPILOGUE_RELU_BIAS`: the first half of the best
    /// unfused forward.
    ForwardReluBias,
    /// `dX = dZ·W` (`dZ` `[m, n]`, `dX` `[m, k]`).
    BackwardData,
    /// `dW = dZᵀ·X` (`dW` `[n, k]`).
    BackwardWeight,
    /// `dW = dZᵀ·X` and `db = Σ_rows dZ` (`CUBLASLT_EPILOGUE_BGRADB`; not every cuBLASLt version
    /// and type offers it: [`Blas::plan`] then fails and the caller can fall back to
    /// [`GemmOp::BackwardWeight`]).
    BackwardWeightBiasGrad,
}

impl GemmOp {
    fn epilogue(self) -> sys::cublasLtEpilogue_t {
        match self {
            GemmOp::ForwardReluBias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU_BIAS,
            GemmOp::BackwardWeightBiasGrad => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BGRADB,
            _ => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
        }
    }

    fn has_bias(self) -> bool {
        matches!(
            self,
            GemmOp::ForwardReluBias | GemmOp::BackwardWeightBiasGrad
        )
    }

    /// cuBLASLt's (M, N, K), the stored (rows, cols, ld) of A, B and D, and TRANSA/TRANSB.
    fn geometry(self, s: LinearShape) -> Geometry {
        let (m, n, k) = (s.m as u64, s.n as u64, s.k as u64);
        match self {
            GemmOp::Forward | GemmOp::ForwardReluBias => Geometry {
                a: (k, n),
                b: (k, m),
                d: (n, m),
                trans_a: true,
                trans_b: false,
            },
            GemmOp::BackwardData => Geometry {
                a: (k, n),
                b: (n, m),
                d: (k, m),
                trans_a: false,
                trans_b: false,
            },
            GemmOp::BackwardWeight | GemmOp::BackwardWeightBiasGrad => Geometry {
                a: (k, m),
                b: (n, m),
                d: (k, n),
                trans_a: false,
                trans_b: true,
            },
        }
    }
}

/// Column-major (rows, cols) of the stored A, B, D (leading dimension = rows: every operand is
/// contiguous) and the transposes.
struct Geometry {
    a: (u64, u64),
    b: (u64, u64),
    d: (u64, u64),
    trans_a: bool,
    trans_b: bool,
}

fn data_type<T: Element>() -> sys::cudaDataType {
    match T::NAME {
        "f16" => sys::cudaDataType_t::CUDA_R_16F,
        "bf16" => sys::cudaDataType_t::CUDA_R_16BF,
        _ => sys::cudaDataType_t::CUDA_R_32F,
    }
}

/// A cuBLASLt handle and its workspace, bound to one stream. Create it once per stream and keep
/// it: creating a handle costs far more than a launch.
#[derive(Debug)]
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
}

impl Blas {
    /// Opens cuBLASLt (after probing for it) and allocates the workspace NVIDIA recommends:
    /// 32 MiB on Hopper and newer, 4 MiB before.
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        require_cublaslt()?;
        let major = stream
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let size = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let workspace = stream.alloc_zeros::<u8>(size)?;
        stream.context().bind_to_thread()?;
        let handle = lt::create_handle().map_err(|e| blas_error("cublasLtCreate", e))?;
        Ok(Self {
            handle,
            workspace,
            stream: stream.clone(),
        })
    }

    /// The stream every plan of this handle launches on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Prepares `op` for `shape` in type `T`: builds the descriptors and asks the heuristic for
    /// its candidate algorithms once (up to [`HEURISTIC_CANDIDATES`], best first), so that each
    /// launch is a single `cublasLtMatmul`. The plan launches the heuristic's first; the bench
    /// times them all and keeps the fastest ([`GemmPlan::choose`]).
    ///
    /// Fails on an empty shape (`m`, `n` or `k` = 0: there is nothing to time), on a shape whose
    /// element counts overflow, and when cuBLASLt offers no algorithm for it.
    pub fn plan<T: Element>(&self, op: GemmOp, shape: LinearShape) -> Result<GemmPlan<'_, T>> {
        validate::check_shape(shape)?;
        if shape.m == 0 || shape.n == 0 {
            return Err(invalid!(
                "baseline GEMM of shape m={}, n={}, k={}: every size must be at least 1",
                shape.m,
                shape.n,
                shape.k
            ));
        }
        self.stream.context().bind_to_thread()?;
        let ty = data_type::<T>();
        let g = op.geometry(shape);
        let a = Layout::new(ty, g.a)?;
        let b = Layout::new(ty, g.b)?;
        let d = Layout::new(ty, g.d)?;
        let desc = Desc::new()?;
        desc.set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            &op_of(g.trans_a),
        )?;
        desc.set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
            &op_of(g.trans_b),
        )?;
        desc.set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &op.epilogue(),
        )?;
        let pref = Preference::new(self.workspace.len())?;
        let no_algorithm = |e| {
            blas_error(
                &format!(
                    "no algorithm for {op:?} {} m={} n={} k={}",
                    T::NAME,
                    shape.m,
                    shape.n,
                    shape.k
                ),
                e,
            )
        };
        // cudarc's `get_matmul_algo_heuristic` asks for one algorithm; the driver call itself
        // takes an array.
        // SAFETY: a zeroed heuristic result is plain integers; the call below overwrites the
        // first `returned` of them.
        let mut results: [sys::cublasLtMatmulHeuristicResult_t; HEURISTIC_CANDIDATES] =
            unsafe { std::mem::zeroed() };
        let mut returned = 0i32;
        // SAFETY: every descriptor was created above and is alive; the heuristic reads them and
        // writes at most HEURISTIC_CANDIDATES results into `results` and their count into
        // `returned`.
        unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                desc.0,
                a.0,
                b.0,
                d.0,
                d.0,
                pref.0,
                HEURISTIC_CANDIDATES as i32,
                results.as_mut_ptr(),
                &mut returned,
            )
        }
        .result()
        .map_err(no_algorithm)?;
        let algos: Vec<sys::cublasLtMatmulAlgo_t> = results
            .iter()
            .take(returned.clamp(0, HEURISTIC_CANDIDATES as i32) as usize)
            .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
            .map(|r| r.algo)
            .collect();
        if algos.is_empty() {
            return Err(no_algorithm(lt::CublasError(
                sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
            )));
        }
        Ok(GemmPlan {
            blas: self,
            op,
            shape,
            desc,
            a,
            b,
            d,
            algos,
            chosen: 0,
            _element: PhantomData,
        })
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // A failure to destroy leaks a handle; there is nothing better to do in a destructor.
        // SAFETY: the handle was created in `new` and is destroyed exactly once, here.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// The `cublasOperation_t` value of TRANSA/TRANSB (an int32 in cublas_api.h, which cudarc's
/// cuBLASLt bindings do not carry): `CUBLAS_OP_N` = 0, `CUBLAS_OP_T` = 1.
fn op_of(transpose: bool) -> i32 {
    i32::from(transpose)
}

struct Layout(sys::cublasLtMatrixLayout_t);

impl Layout {
    fn new(ty: sys::cudaDataType, (rows, cols): (u64, u64)) -> Result<Self> {
        lt::create_matrix_layout(ty, rows, cols, rows as i64)
            .map(Self)
            .map_err(|e| blas_error("cublasLtMatrixLayoutCreate", e))
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

struct Desc(sys::cublasLtMatmulDesc_t);

impl Desc {
    fn new() -> Result<Self> {
        lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map(Self)
        .map_err(|e| blas_error("cublasLtMatmulDescCreate", e))
    }

    fn set<V>(&self, attr: sys::cublasLtMatmulDescAttributes_t, value: &V) -> Result<()> {
        // SAFETY: the descriptor is alive; `value` points to size_of::<V>() readable bytes, and
        // each caller passes the type the attribute is documented to take (int32 enums, a
        // device pointer as u64).
        unsafe {
            lt::set_matmul_desc_attribute(
                self.0,
                attr,
                value as *const V as *const c_void,
                size_of::<V>(),
            )
        }
        .map_err(|e| blas_error(&format!("cublasLtMatmulDescSetAttribute({attr:?})"), e))
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

struct Preference(sys::cublasLtMatmulPreference_t);

impl Preference {
    fn new(workspace_bytes: usize) -> Result<Self> {
        let pref = lt::create_matmul_pref()
            .map(Self)
            .map_err(|e| blas_error("cublasLtMatmulPreferenceCreate", e))?;
        let bytes = workspace_bytes as u64;
        // SAFETY: the preference is alive; MAX_WORKSPACE_BYTES takes a uint64.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &bytes as *const u64 as *const c_void,
                size_of::<u64>(),
            )
        }
        .map_err(|e| blas_error("cublasLtMatmulPreferenceSetAttribute", e))?;
        Ok(pref)
    }
}

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

/// One prepared cuBLASLt product (descriptors and algorithm), made by [`Blas::plan`]. Launch it
/// with the method that matches its [`GemmOp`]; each checks every buffer before it queues the
/// product on the handle's stream and returns without waiting.
pub struct GemmPlan<'a, T: Element> {
    blas: &'a Blas,
    op: GemmOp,
    shape: LinearShape,
    desc: Desc,
    a: Layout,
    b: Layout,
    d: Layout,
    /// The heuristic's candidates, best first; `chosen` is the one launched.
    algos: Vec<sys::cublasLtMatmulAlgo_t>,
    chosen: usize,
    _element: PhantomData<T>,
}

impl<T: Element> std::fmt::Debug for GemmPlan<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GemmPlan")
            .field("op", &self.op)
            .field("shape", &self.shape)
            .field("element", &T::NAME)
            .finish()
    }
}

impl<'a, T: Element> GemmPlan<'a, T> {
    /// The product this plan computes.
    pub fn op(&self) -> GemmOp {
        self.op
    }

    /// The layer shape it was planned for.
    pub fn shape(&self) -> LinearShape {
        self.shape
    }

    /// How many algorithms the heuristic offered (at least 1).
    pub fn candidates(&self) -> usize {
        self.algos.len()
    }

    /// Which of them is launched (0: the heuristic's first).
    pub fn chosen(&self) -> usize {
        self.chosen
    }

    /// Launches the heuristic's `index`-th algorithm from now on.
    pub fn choose(&mut self, index: usize) -> Result<()> {
        if index >= self.algos.len() {
            return Err(invalid!(
                "algorithm {index} of {:?}: the heuristic offered {}; expected an index below it",
                self.op,
                self.algos.len()
            ));
        }
        self.chosen = index;
        Ok(())
    }

    /// `y = x·wᵀ` ([`GemmOp::Forward`]).
    pub fn forward(
        &self,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.expect_op(&[GemmOp::Forward])?;
        self.check_forward_lens(x.len(), w.len(), y.len())?;
        self.launch(w, x, y, None)
    }

    /// `y = relu(x·wᵀ + b)` ([`GemmOp::ForwardReluBias`]).
    pub fn forward_relu_bias(
        &self,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        b: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.expect_op(&[GemmOp::ForwardReluBias])?;
        self.check_forward_lens(x.len(), w.len(), y.len())?;
        let n = self.shape.n;
        validate::check_len(
            "b",
            b.len(),
            n,
            &format!("n = {n}, one bias per output feature"),
        )?;
        let stream = &self.blas.stream;
        let (b_ptr, _b_guard) = b.device_ptr(stream);
        self.launch(w, x, y, Some(b_ptr))
    }

    /// `dx = dz·w` ([`GemmOp::BackwardData`]).
    pub fn backward_data(
        &self,
        dz: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.expect_op(&[GemmOp::BackwardData])?;
        let LinearShape { m, n, k } = self.shape;
        validate::check_len("dZ", dz.len(), m * n, &format!("m*n = {m}*{n}"))?;
        validate::check_len("W", w.len(), n * k, &format!("n*k = {n}*{k}"))?;
        validate::check_len("dX", dx.len(), m * k, &format!("m*k = {m}*{k}"))?;
        self.launch(w, dz, dx, None)
    }

    /// `dw = dzᵀ·x` ([`GemmOp::BackwardWeight`]).
    pub fn backward_weight(
        &self,
        dz: &impl DevicePtr<T>,
        x: &impl DevicePtr<T>,
        dw: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.expect_op(&[GemmOp::BackwardWeight])?;
        self.check_weight_lens(dz.len(), x.len(), dw.len())?;
        self.launch(x, dz, dw, None)
    }

    /// `dw = dzᵀ·x` and `db = Σ_rows dz` in one product ([`GemmOp::BackwardWeightBiasGrad`]).
    pub fn backward_weight_bias_grad(
        &self,
        dz: &impl DevicePtr<T>,
        x: &impl DevicePtr<T>,
        dw: &mut impl DevicePtrMut<T>,
        db: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.expect_op(&[GemmOp::BackwardWeightBiasGrad])?;
        self.check_weight_lens(dz.len(), x.len(), dw.len())?;
        let n = self.shape.n;
        validate::check_len(
            "db",
            db.len(),
            n,
            &format!("n = {n}, one per output feature"),
        )?;
        let stream = &self.blas.stream;
        let (db_ptr, _db_guard) = db.device_ptr_mut(stream);
        self.launch(x, dz, dw, Some(db_ptr))
    }

    fn expect_op(&self, ops: &[GemmOp]) -> Result<()> {
        if ops.contains(&self.op) {
            Ok(())
        } else {
            Err(invalid!(
                "this plan computes {:?}; the method called expects {:?}",
                self.op,
                ops
            ))
        }
    }

    fn check_weight_lens(&self, dz: usize, x: usize, dw: usize) -> Result<()> {
        let LinearShape { m, n, k } = self.shape;
        validate::check_len("dZ", dz, m * n, &format!("m*n = {m}*{n}"))?;
        validate::check_len("X", x, m * k, &format!("m*k = {m}*{k}"))?;
        validate::check_len("dW", dw, n * k, &format!("n*k = {n}*{k}"))
    }

    fn check_forward_lens(&self, x: usize, w: usize, y: usize) -> Result<()> {
        let LinearShape { m, n, k } = self.shape;
        validate::check_len("X", x, m * k, &format!("m*k = {m}*{k}"))?;
        validate::check_len(
            "W",
            w,
            n * k,
            &format!("n*k = {n}*{k}, the nn.Linear [out, in] layout"),
        )?;
        validate::check_len("Y", y, m * n, &format!("m*n = {m}*{n}"))
    }

    /// Queues D = op(A)·op(B) with the plan's epilogue; `bias` is the epilogue's vector (bias
    /// for RELU_BIAS, its gradient for BGRADB). Lengths were checked by the caller.
    fn launch(
        &self,
        a: &impl DevicePtr<T>,
        b: &impl DevicePtr<T>,
        d: &mut impl DevicePtrMut<T>,
        bias: Option<u64>,
    ) -> Result<()> {
        let stream = &self.blas.stream;
        if self.op.has_bias() != bias.is_some() {
            return Err(invalid!(
                "{:?} {} a bias vector",
                self.op,
                if self.op.has_bias() {
                    "needs"
                } else {
                    "takes no"
                }
            ));
        }
        let (a_ptr, _a_guard) = a.device_ptr(stream);
        let (b_ptr, _b_guard) = b.device_ptr(stream);
        let (d_ptr, _d_guard) = d.device_ptr_mut(stream);
        let (w_ptr, _w_guard) = self.blas.workspace.device_ptr(stream);
        for (name, ptr) in [
            ("A", Some(a_ptr)),
            ("B", Some(b_ptr)),
            ("D", Some(d_ptr)),
            ("bias", bias),
        ] {
            if let Some(ptr) = ptr {
                if ptr % ALIGNMENT != 0 {
                    return Err(invalid!(
                        "cuBLASLt operand {name} of {:?} is at {ptr:#x}; expected a {ALIGNMENT}-byte \
                         aligned address (a whole allocation, or a view starting at a multiple of \
                         {ALIGNMENT} bytes)",
                        self.op
                    ));
                }
            }
        }
        if let Some(bias_ptr) = bias {
            self.desc.set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias_ptr,
            )?;
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        stream.context().bind_to_thread()?;
        // SAFETY: the descriptors and the algorithm were made for exactly these shapes and this
        // type by `Blas::plan`; the callers checked every buffer's length against the shape
        // (A, B, D and the bias vector hold what the layouts describe), the addresses are
        // aligned as the heuristic assumed, the workspace holds the size the preference
        // announced, alpha/beta are f32 as the scale type says, C aliases D with beta = 0, and
        // the guards keep every buffer alive until the product is queued on the stream.
        unsafe {
            lt::matmul(
                self.blas.handle,
                self.desc.0,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                a_ptr as *const c_void,
                self.a.0,
                b_ptr as *const c_void,
                self.b.0,
                d_ptr as *const c_void,
                self.d.0,
                d_ptr as *mut c_void,
                self.d.0,
                &self.algos[self.chosen],
                w_ptr as *mut c_void,
                self.blas.workspace.len(),
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| blas_error(&format!("cublasLtMatmul ({:?})", self.op), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cublaslt_probe_answers_without_panicking() {
        // On a machine without the library this is false and nothing panics; with it, the
        // version is a plausible number.
        if cublaslt_present() {
            assert!(cublaslt_version().expect("version") >= 110_000);
        } else {
            assert!(matches!(
                cublaslt_version(),
                Err(Error::DriverUnavailable(_))
            ));
        }
    }
}
