//! Nothing to run: this crate exists for its dependency graph (see Cargo.toml).
