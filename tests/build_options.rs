//! How build.rs reads its options from the environment (build/options.rs, included here as it
//! is there).

#[path = "../build/options.rs"]
mod options;

use options::mbarrier_wait_limit_flag;

#[test]
fn unset_wait_limit_keeps_the_kernels_default() {
    assert_eq!(mbarrier_wait_limit_flag(None), Ok(None));
}

#[test]
fn wait_limit_in_nanoseconds_becomes_a_define() {
    assert_eq!(
        mbarrier_wait_limit_flag(Some("5000000000")),
        Ok(Some(
            "-DFUSEDROP_MBARRIER_WAIT_LIMIT_NS=5000000000ull".to_string()
        ))
    );
    assert_eq!(
        mbarrier_wait_limit_flag(Some(" 1 ")),
        Ok(Some("-DFUSEDROP_MBARRIER_WAIT_LIMIT_NS=1ull".to_string()))
    );
}

#[test]
fn zero_wait_limit_means_no_limit() {
    assert_eq!(
        mbarrier_wait_limit_flag(Some("0")),
        Ok(Some(format!(
            "-DFUSEDROP_MBARRIER_WAIT_LIMIT_NS={}ull",
            u64::MAX
        )))
    );
}

#[test]
fn malformed_wait_limits_are_refused_with_what_was_expected() {
    for value in ["", "-1", "20s", "1e9", "18446744073709551616", "0x10"] {
        let message = mbarrier_wait_limit_flag(Some(value)).expect_err(value);
        assert!(
            message.contains("FUSEDROP_MBARRIER_WAIT_LIMIT_NS")
                && message.contains(&format!("{value:?}"))
                && message.contains("whole number of nanoseconds"),
            "{value:?}: {message}"
        );
    }
}
