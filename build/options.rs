//! Build options read from the environment, kept apart from build.rs so that a test can check
//! how each value is read (tests/build_options.rs includes this file too).

/// The environment variable that overrides how long a Hopper kernel's mbarrier wait may last.
pub const MBARRIER_WAIT_LIMIT_VAR: &str = "FUSEDROP_MBARRIER_WAIT_LIMIT_NS";

/// The nvcc flag for `FUSEDROP_MBARRIER_WAIT_LIMIT_NS`, or `None` where it is unset (the
/// kernels then keep the 20 s of kernels/ptx.cuh). The value is a whole number of nanoseconds;
/// `0` means no limit (a wait of 2^64 - 1 ns, 584 years), for a debugger that holds some warps
/// at a breakpoint while others wait on them. Anything else is an error that says what was
/// expected.
pub fn mbarrier_wait_limit_flag(value: Option<&str>) -> Result<Option<String>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let nanoseconds: u64 = value.trim().parse().map_err(|_| {
        format!(
            "{MBARRIER_WAIT_LIMIT_VAR}={value:?} is not a whole number of nanoseconds from 0 to \
             {} (0 means no limit; unset it for the default of 20 s)",
            u64::MAX
        )
    })?;
    let limit = if nanoseconds == 0 {
        u64::MAX
    } else {
        nanoseconds
    };
    Ok(Some(format!("-D{MBARRIER_WAIT_LIMIT_VAR}={limit}ull")))
}
