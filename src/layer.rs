//! The description of one layer call: shape, activation, dropout seed and shard geometry.
//! Every backend (CPU reference, CUDA kernels) takes these same types.

/// The problem size: X is `[m, k]`, W is `[n, k]` (the `nn.Linear` layout), b is `[n]`, Y is
/// `[m, n]`, all row-major and contiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows of X and Y (tokens, batch).
    pub m: usize,
    /// Output features: rows of W, columns of Y.
    pub n: usize,
    /// Input features: columns of X and W.
    pub k: usize,
}

impl LinearShape {
    /// A shape from its three sizes.
    pub const fn new(m: usize, n: usize, k: usize) -> Self {
        Self { m, n, k }
    }
}

/// The activation between the matrix product and dropout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nonlinearity {
    /// `z` where `z > 0`, else 0; NaN stays NaN (not `max(z, 0)`, which would make it 0;
    /// docs/mask-contract.md, "Non-finite values").
    Relu,
    /// No activation (the final layer of a network).
    Identity,
}

/// Where this call's output sits in a larger logical output, for sharded layers.
///
/// The mask of element (r, c) of this call's output is decided by the linear index
/// `(row_offset + r) * n_global + (col_offset + c)`, so column or row shards of a layer
/// reproduce the unsharded layer's mask bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Geometry {
    /// The first row of this block in the logical output.
    pub row_offset: u64,
    /// The first column of this block in the logical output.
    pub col_offset: u64,
    /// Columns of the logical output; `None` means this call's own `n` (unsharded).
    pub n_global: Option<u64>,
}

impl Geometry {
    /// The unsharded layer: offsets 0, global width = the call's own width.
    pub const UNSHARDED: Geometry = Geometry {
        row_offset: 0,
        col_offset: 0,
        n_global: None,
    };

    /// The logical output width for a call whose own output has `n` columns.
    pub fn n_global_for(&self, n: usize) -> u64 {
        self.n_global.unwrap_or(n as u64)
    }

    /// The linear index that decides element (r, c) of a call whose own output has `n` columns.
    /// The caller has validated the geometry, so this cannot overflow.
    pub fn linear_index(&self, n: usize, r: usize, c: usize) -> u64 {
        (self.row_offset + r as u64) * self.n_global_for(n) + (self.col_offset + c as u64)
    }
}

/// The dropout of one call: the probability `p` of dropping an element and the (seed, subsequence)
/// pair whose Philox words decide which.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutSpec {
    /// Probability of dropping, in `[0, 1]`. 0 disables dropout.
    pub p: f32,
    /// The Philox key.
    pub seed: u64,
    /// The Philox subsequence (counter words 2-3): one value per call.
    pub subsequence: u64,
}

impl DropoutSpec {
    /// No dropout: every element kept, scale 1.
    pub const NONE: DropoutSpec = DropoutSpec {
        p: 0.0,
        seed: 0,
        subsequence: 0,
    };

    /// An explicit (seed, subsequence) pair, for recomputing a mask that was used before.
    pub const fn new(p: f32, seed: u64, subsequence: u64) -> Self {
        Self {
            p,
            seed,
            subsequence,
        }
    }
}

/// Hands out a fresh Philox subsequence for every call, so that no two calls share a mask by
/// accident.
///
/// ```
/// let mut gen = fusedrop::DropoutGenerator::new(1234);
/// let first = gen.next(0.1);
/// let second = gen.next(0.1);
/// assert_eq!(first.seed, second.seed);
/// assert_ne!(first.subsequence, second.subsequence);
/// ```
#[derive(Debug, Clone)]
pub struct DropoutGenerator {
    seed: u64,
    next_subsequence: u64,
}

impl DropoutGenerator {
    /// A generator whose first call gets subsequence 0.
    pub const fn new(seed: u64) -> Self {
        Self {
            seed,
            next_subsequence: 0,
        }
    }

    /// A generator that continues from `subsequence` (for resuming training from a checkpoint).
    pub const fn with_subsequence(seed: u64, subsequence: u64) -> Self {
        Self {
            seed,
            next_subsequence: subsequence,
        }
    }

    /// The seed all of this generator's calls share.
    pub const fn seed(&self) -> u64 {
        self.seed
    }

    /// The subsequence the next call will get.
    pub const fn peek_subsequence(&self) -> u64 {
        self.next_subsequence
    }

    /// The dropout of the next call, advancing the subsequence by one.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self, p: f32) -> DropoutSpec {
        let subsequence = self.next_subsequence;
        self.next_subsequence = self.next_subsequence.wrapping_add(1);
        DropoutSpec {
            p,
            seed: self.seed,
            subsequence,
        }
    }
}

/// Everything that describes one call of the layer apart from the buffers: the same value is
/// handed to the CPU reference and to the CUDA kernels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerSpec {
    /// Sizes of X, W, b and Y.
    pub shape: LinearShape,
    /// ReLU or identity.
    pub nonlinearity: Nonlinearity,
    /// Dropout probability and (seed, subsequence).
    pub dropout: DropoutSpec,
    /// Where the output sits in a sharded layer's logical output.
    pub geometry: Geometry,
}

impl LayerSpec {
    /// An unsharded layer.
    pub const fn new(shape: LinearShape, nonlinearity: Nonlinearity, dropout: DropoutSpec) -> Self {
        Self {
            shape,
            nonlinearity,
            dropout,
            geometry: Geometry::UNSHARDED,
        }
    }

    /// The same layer as a shard at `geometry`.
    pub const fn with_geometry(mut self, geometry: Geometry) -> Self {
        self.geometry = geometry;
        self
    }
}
