//! What a call launches, decided before anything touches a GPU: the kernel's name, its grid,
//! block and shared memory, and its arguments in the order of its parameters, with the buffers
//! named rather than addressed ([`LaunchPlan`]).
//!
//! The wrappers build their plans with pure functions ([`forward_plan`] for a whole forward
//! call, [`ForwardConfig::launch_plan`] for one configuration, [`forward_sweep_plan`];
//! [`backward_plan`] for a whole backward call, [`product_plan`] for each of its products with
//! their split sums; [`dropout_plan`]) and then queue them on the stream: each [`Operand`]
//! replaced by its device address, each [`KernelArg::TensorMap`] encoded from that address. The
//! CPU harness (tests/kernels_on_cpu/) runs the same plans: its drivers convert each planned
//! argument to the type of the kernel's parameter in that position (refusing a kind that does
//! not fit, such as a pointer where the kernel takes a map) and launch the grid the plan gives.
//! So the argument order, the tensor maps' boxes, the grids and the choice of entry point that a
//! call would send to a GPU are checked on the CPU in every CI run, not only on a GPU host.
//!
//! [`forward_plan`]: crate::cuda::forward::forward_plan
//! [`ForwardConfig::launch_plan`]: crate::cuda::forward::ForwardConfig::launch_plan
//! [`forward_sweep_plan`]: crate::cuda::forward::forward_sweep_plan
//! [`backward_plan`]: crate::cuda::backward::backward_plan
//! [`product_plan`]: crate::cuda::backward::product_plan
//! [`dropout_plan`]: crate::cuda::dropout::dropout_plan

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

use crate::cuda::tensor_map::{self, TensorMap};
use crate::cuda::{LayerKernels, MaskParams};
use crate::element::Element;
use crate::error::{Error, Result};

/// A buffer a kernel argument refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operand {
    /// The input X, `[m, k]`.
    X,
    /// The weight W, `[n, k]`.
    W,
    /// The bias b, `[n]`.
    B,
    /// The forward's output Y, `[m, n]` (the backward reads it for ReLU).
    Y,
    /// The gradient of Y, `[m, n]`.
    DY,
    /// The gradient of X, `[m, k]`.
    DX,
    /// The gradient of W, `[n, k]`.
    DW,
    /// The gradient of b, `[n]`.
    DB,
    /// The backward's workspace (`BackwardOptions::workspace`), or a stream-K sweep variant's
    /// (`forward_sweep_plan`).
    Workspace,
}

impl Operand {
    /// The operand's name in the documentation and in the CPU harness's requests.
    pub const fn name(self) -> &'static str {
        match self {
            Operand::X => "x",
            Operand::W => "w",
            Operand::B => "b",
            Operand::Y => "y",
            Operand::DY => "dy",
            Operand::DX => "dx",
            Operand::DW => "dw",
            Operand::DB => "db",
            Operand::Workspace => "ws",
        }
    }
}

/// One kernel argument, in the order of the kernel's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelArg {
    /// The device address of an operand.
    Pointer(Operand),
    /// The address `offset` bytes into the workspace ([`Operand::Workspace`]), as an `f32*`
    /// (the split-K partial sums).
    WorkspaceAt(u64),
    /// A null pointer (an operand the call does not have, such as an absent bias).
    Null,
    /// The TMA tensor map of an f16/bf16 operand read as a row-major `[rows, cols]` matrix, in
    /// boxes of 64 columns (one 128-byte swizzle span) by `box_rows` rows, 128-byte swizzle,
    /// zero fill out of bounds (src/cuda/tensor_map.rs).
    TensorMap {
        /// The operand the map describes.
        operand: Operand,
        /// Rows of the matrix.
        rows: usize,
        /// Columns of the matrix (the contiguous dimension).
        cols: usize,
        /// Rows per box.
        box_rows: u32,
    },
    /// An all-zero tensor map, for a map parameter the kernel does not read.
    UnusedTensorMap,
    /// A `long long`.
    I64(i64),
    /// An `int`.
    I32(i32),
    /// A `float`.
    F32(f32),
    /// The call's `MaskParams` (kernels/mask.cuh), built from its dropout spec, geometry and seed
    /// source when it is queued.
    MaskParams,
}

/// One kernel launch: which entry point, with what grid and arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// The kernel module, a `kernels/<module>.cu` file.
    pub module: &'static str,
    /// The entry point's name.
    pub function: String,
    /// The grid, in blocks.
    pub grid: (u32, u32, u32),
    /// Threads per block.
    pub threads: u32,
    /// Dynamic shared memory per block, in bytes.
    pub smem_bytes: u32,
    /// Blocks per thread block cluster along x (the kernel's `__cluster_dims__`; 1 for a kernel
    /// without clusters): the grid's x is a multiple of it.
    pub cluster: u32,
    /// The arguments, in the order of the kernel's parameters.
    pub args: Vec<KernelArg>,
}

impl LaunchPlan {
    /// The plan's grid, block and shared memory as cudarc takes them.
    pub fn launch_config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: self.grid,
            block_dim: (self.threads, 1, 1),
            shared_mem_bytes: self.smem_bytes,
        }
    }
}

/// The device addresses of one call's operands. The plan functions read the alignment of
/// those that decide a path; queueing a plan passes them to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperandAddresses {
    /// X's address.
    pub x: u64,
    /// W's address.
    pub w: u64,
    /// b's address, `None` when the call has no bias.
    pub b: Option<u64>,
    /// Y's address.
    pub y: u64,
}

impl OperandAddresses {
    /// The address of `operand`, `None` where the call has no such buffer.
    pub(crate) fn of(&self, operand: Operand) -> Option<u64> {
        match operand {
            Operand::X => Some(self.x),
            Operand::W => Some(self.w),
            Operand::B => self.b,
            Operand::Y => Some(self.y),
            _ => None,
        }
    }
}

/// A plan with its function loaded and its arguments' values (maps encoded), ready to queue.
pub(crate) struct PreparedLaunch {
    function: CudaFunction,
    values: Vec<ArgValue>,
    config: LaunchConfig,
}

/// A planned argument with its value.
enum ArgValue {
    Map(TensorMap),
    Address(u64),
    I64(i64),
    I32(i32),
    F32(f32),
    MaskParams,
}

impl LayerKernels {
    /// Queues `plan` on the handle's stream: its function (loaded once, its shared memory limit
    /// raised to the plan's), each operand replaced by its address from `address` (`None`: the
    /// call has no such buffer, an error), each tensor map encoded from that address, `params`
    /// as the MaskParams argument.
    ///
    /// # Safety
    ///
    /// `plan` must be the plan the library built for this call, so that its arguments are the
    /// function's parameters and its grid the kernel's grid rule; the buffers behind `address`
    /// must hold what the plan's shape implies (for the forward X m*k, W n*k, b n, Y m*n
    /// elements of `T`; for the backward as `LayerKernels::backward` checks) and stay alive and
    /// borrowed until the launch is queued, and `params`' seed buffers (when it names any)
    /// likewise.
    pub(crate) unsafe fn queue_plan<T: Element>(
        &self,
        plan: &LaunchPlan,
        address: &dyn Fn(Operand) -> Option<u64>,
        params: &MaskParams,
    ) -> Result<()> {
        let ready = self.prepare_plan::<T>(plan, address)?;
        // SAFETY: as this function's contract.
        unsafe { self.queue_prepared(&ready, params) }
    }

    /// What queueing `plan` needs that can fail on a check (its function, its operands'
    /// addresses, its tensor maps), so that a call of several launches can prepare them all
    /// before it queues any.
    pub(crate) fn prepare_plan<T: Element>(
        &self,
        plan: &LaunchPlan,
        address: &dyn Fn(Operand) -> Option<u64>,
    ) -> Result<PreparedLaunch> {
        let of = |operand: Operand| {
            address(operand).ok_or_else(|| {
                Error::Cuda(format!(
                    "the launch plan of {} refers to {}, which the call does not have",
                    plan.function,
                    operand.name()
                ))
            })
        };
        let function = self.function(plan.module, &plan.function, plan.smem_bytes)?;
        let values = plan
            .args
            .iter()
            .map(|arg| {
                Ok(match *arg {
                    KernelArg::Pointer(operand) => ArgValue::Address(of(operand)?),
                    KernelArg::WorkspaceAt(offset) => {
                        ArgValue::Address(of(Operand::Workspace)? + offset)
                    }
                    KernelArg::Null => ArgValue::Address(0),
                    KernelArg::TensorMap {
                        operand,
                        rows,
                        cols,
                        box_rows,
                    } => ArgValue::Map(tensor_map::row_major::<T>(
                        of(operand)?,
                        rows,
                        cols,
                        box_rows,
                    )?),
                    KernelArg::UnusedTensorMap => ArgValue::Map(TensorMap::unused()),
                    KernelArg::I64(v) => ArgValue::I64(v),
                    KernelArg::I32(v) => ArgValue::I32(v),
                    KernelArg::F32(v) => ArgValue::F32(v),
                    KernelArg::MaskParams => ArgValue::MaskParams,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PreparedLaunch {
            function,
            values,
            config: plan.launch_config(),
        })
    }

    /// Queues a prepared launch with `params` as its MaskParams argument.
    ///
    /// # Safety
    ///
    /// As [`queue_plan`](Self::queue_plan), for the plan `ready` was prepared from.
    pub(crate) unsafe fn queue_prepared(
        &self,
        ready: &PreparedLaunch,
        params: &MaskParams,
    ) -> Result<()> {
        let PreparedLaunch {
            function,
            values,
            config,
        } = ready;
        let mut builder = self.stream().launch_builder(function);
        for value in values {
            match value {
                ArgValue::Map(map) => builder.arg(map),
                ArgValue::Address(address) => builder.arg(address),
                ArgValue::I64(v) => builder.arg(v),
                ArgValue::I32(v) => builder.arg(v),
                ArgValue::F32(v) => builder.arg(v),
                ArgValue::MaskParams => builder.arg(params),
            };
        }
        // SAFETY: the arguments are the function's parameters in order and the grid follows its
        // rule (the plan is the library's, by this function's contract; the CPU harness runs the
        // same plans against the kernels' own signatures); the buffers are as the launch needs,
        // also by the contract. `values` outlives the builder's borrows.
        unsafe { builder.launch(*config) }?;
        Ok(())
    }
}
