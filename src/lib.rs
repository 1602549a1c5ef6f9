//! # fusedrop
//!
//! Hand-written CUDA kernels for `Y = dropout_p(relu(X·Wᵀ + b))`, forward and backward, in f32,
//! f16 and bf16, with dropout masks drawn from the counter-based Philox4x32-10 generator: never
//! stored, a pure function of (seed, subsequence, element index), identical bit for bit on the CPU
//! reference ([`reference`](mod@reference)) and on every GPU kernel ([`cuda`]).
//!
//! The mask contract is in `docs/mask-contract.md`; [`mask::keep`] is its definition in code.
#![warn(missing_docs)]

#[cfg(feature = "candle")]
pub mod candle;
pub mod cuda;
pub mod element;
pub mod error;
pub mod layer;
pub mod mask;
pub mod philox;
pub mod reference;
pub mod validate;

pub use element::Element;
pub use error::{Error, Result};
pub use layer::{DropoutGenerator, DropoutSpec, Geometry, LayerSpec, LinearShape, Nonlinearity};

// The README's Rust example is compiled (not run: it needs a GPU) as a doctest, so that it cannot
// fall behind the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
