//! The element-wise check of a reduction's result, shared by the test crates that check the
//! kernels (tests/kernels_on_cpu/ on the CPU harness; tests/gpu_forward.rs, gpu_backward.rs and
//! gpu_graph.rs on a GPU).

use fusedrop::{reference, Element};

/// Unit roundoff of the element type (half the distance from 1 to the next value) and its
/// smallest subnormal (the rounding step of results near zero).
fn rounding_of<T: Element>() -> (f64, f64) {
    match T::NAME {
        "f32" => (f64::powi(2.0, -24), f64::powi(2.0, -149)),
        "f16" => (f64::powi(2.0, -11), f64::powi(2.0, -24)),
        _ => (f64::powi(2.0, -8), f64::powi(2.0, -133)),
    }
}

/// Checks every finite element of a reduction's result on its own, which a relative L2 error
/// over a large matrix cannot (one element off by 10 % among a million passes it). `abs_sum`
/// holds, per element, the sum of the absolute values of the terms it reduces (plus the
/// absolute starting value when accumulating, or the bias), `terms` the number of terms. The
/// operands are exact in T: the forward multiplies X and W as given, and every backward kernel
/// multiplies dY (or 0) and applies the dropout scale to its f32 sums. So the bound covers f32
/// accumulation in any order and the rounding of the result (a relative step u_T, or the
/// smallest subnormal η_T near zero), with a factor of 4 to spare:
///   |got - want| <= 4 (u_T |want| + terms u_f32 abs_sum + η_T).
/// The result is row-major with `cols` columns; the failure message says where the elements
/// outside their bound lie (`reference::describe_differences`).
pub fn check_elementwise<T: Element>(
    what: &str,
    cols: usize,
    got: &[T],
    want: &[f64],
    abs_sum: &[f64],
    terms: usize,
) {
    assert!(
        got.len() == want.len() && abs_sum.len() == want.len(),
        "{what}: {} elements computed, {} expected, {} bounds",
        got.len(),
        want.len(),
        abs_sum.len()
    );
    let (u, subnormal) = rounding_of::<T>();
    let u32 = f64::powi(2.0, -24);
    let got: Vec<f64> = got.iter().map(|g| g.to_f64()).collect();
    // Each element's error against its bound (NaN for an error that is NaN).
    let excess = |i: usize| {
        let (w, a) = (want[i], abs_sum[i]);
        if !w.is_finite() || !a.is_finite() {
            return 0.0;
        }
        let bound = 4.0 * (u * w.abs() + terms as f64 * u32 * a + subnormal);
        (got[i] - w).abs() / bound
    };
    let outside = |i: usize| {
        let excess = excess(i);
        excess.is_nan() || excess > 1.0
    };
    if let Some(worst) = (0..got.len())
        .filter(|&i| outside(i))
        .max_by(|&a, &b| excess(a).total_cmp(&excess(b)))
    {
        panic!(
            "{what}: elements outside their rounding bound; worst: element {worst} is {} where \
             the reference has {} ({:.3e} x its bound); {}",
            got[worst],
            want[worst],
            excess(worst),
            reference::describe_differences(got.len() / cols, cols, &got, want, outside)
        );
    }
}
