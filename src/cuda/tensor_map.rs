//! TMA tensor maps for the Hopper kernels (kernels/forward_sm90.cu, kernels/backward_sm90.cu).
//!
//! A row-major matrix `[rows, cols]` is described to the Tensor Memory Accelerator as a 2-D
//! tensor with inner dimension cols, boxes of 64 elements (128 bytes of f16/bf16, one 128-byte
//! swizzle span) by `box_rows` rows, 128-byte swizzle, and zero fill out of bounds (the
//! `FLOAT_OOB_FILL_NONE` mode fills zeros), so the kernels need no predicates at the tails.
//! Whether the kernel reads such a box as a K-major operand (cols is the reduction: the
//! forward's X and W, the backward's dY for dX) or an MN-major one (rows is the reduction: the
//! backward's W, X, and dY for dW) is the kernel's business. The driver's rules
//! (cuTensorMapEncodeTiled): the base address 16-byte aligned, the row stride `cols * 2` bytes a
//! multiple of 16, every dimension at most 2^32, box sides at most 256.

use cudarc::driver::sys;
use cudarc::driver::DeviceRepr;

use crate::element::Element;
use crate::error::{Error, Result};

/// Elements per box row: one 128-byte swizzle span of 2-byte elements.
pub(crate) const BOX_K: u32 = 64;

/// A tensor map, passed to a kernel by value as a `const __grid_constant__ CUtensorMap`.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub(crate) struct TensorMap(sys::CUtensorMap);

// SAFETY: CUtensorMap is a plain 128-byte block of integers (#[repr(C)], 64- or 128-byte
// aligned), which the driver copies into the kernel's parameter space as the kernels declare it.
unsafe impl DeviceRepr for TensorMap {}

impl TensorMap {
    /// A zeroed map, for a kernel parameter the kernel does not read (the Hopper sweep variants
    /// that store Y directly still take Y's map).
    pub(crate) fn unused() -> Self {
        // SAFETY: CUtensorMap is plain integers, for which all-zero bytes are a valid value.
        Self(unsafe { std::mem::zeroed() })
    }
}

/// Whether a row-major `[rows, cols]` matrix at device address `ptr` can be described by a
/// tensor map.
pub(crate) fn operand_fits(ptr: u64, rows: usize, cols: usize) -> bool {
    ptr % 16 == 0
        && cols > 0
        && cols % 8 == 0
        && rows > 0
        && (cols as u64) <= i32::MAX as u64
        && (rows as u64) <= i32::MAX as u64
}

/// The map of a row-major `[rows, cols]` f16/bf16 matrix at `ptr`, in boxes of 64 x `box_rows`.
pub(crate) fn row_major<T: Element>(
    ptr: u64,
    rows: usize,
    cols: usize,
    box_rows: u32,
) -> Result<TensorMap> {
    let data_type = match T::NAME {
        "f16" => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        "bf16" => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        other => {
            return Err(Error::Cuda(format!(
                "tensor maps are built for f16 and bf16 operands, not {other}"
            )))
        }
    };
    if !operand_fits(ptr, rows, cols) {
        return Err(Error::Cuda(format!(
            "a [{rows}, {cols}] matrix at {ptr:#x} does not fit a TMA tensor map (needs a \
             16-byte aligned base, cols a positive multiple of 8, rows and cols below 2^31)"
        )));
    }
    let global_dim: [u64; 2] = [cols as u64, rows as u64];
    // The stride of dimension 1 in bytes (dimension 0 is contiguous and has none).
    let global_strides: [u64; 1] = [(cols * std::mem::size_of::<T>()) as u64];
    let box_dim: [u32; 2] = [BOX_K, box_rows];
    let element_strides: [u32; 2] = [1, 1];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every pointer refers to a live local array of the length the rank (2) implies, and
    // `map` to writable storage of CUtensorMap's size and alignment. The global address is only
    // recorded in the map, not dereferenced here.
    let status = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            data_type,
            2,
            ptr as *mut std::ffi::c_void,
            global_dim.as_ptr(),
            global_strides.as_ptr(),
            box_dim.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if status != sys::CUresult::CUDA_SUCCESS {
        return Err(Error::Cuda(format!(
            "cuTensorMapEncodeTiled([{rows}, {cols}] {} at {ptr:#x}, box 64 x {box_rows}): \
             {status:?}",
            T::NAME
        )));
    }
    // SAFETY: cuTensorMapEncodeTiled returned success, so it wrote the whole map (which was
    // zeroed beforehand in any case).
    Ok(TensorMap(unsafe { map.assume_init() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operands_that_tma_cannot_take_are_refused() {
        assert!(operand_fits(0x1000, 64, 64));
        assert!(!operand_fits(0x1008, 64, 64), "base not 16-byte aligned");
        assert!(
            !operand_fits(0x1000, 64, 60),
            "row stride not a multiple of 16 bytes"
        );
        assert!(!operand_fits(0x1000, 64, 0), "empty reduction");
        assert!(!operand_fits(0x1000, 0, 64), "no rows");
        assert!(
            !operand_fits(0x1000, 1 << 31, 64),
            "rows beyond the int32 coordinates"
        );
    }
}
