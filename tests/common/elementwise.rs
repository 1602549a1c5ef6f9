//! The element-wise check of a reduction's result, shared by the test crates that check the
//! backward kernels (tests/kernels_on_cpu.rs on the CPU harness, tests/gpu_backward.rs on a GPU).

use fusedrop::Element;

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
/// absolute starting value when accumulating), `terms` the number of terms. The bound covers
/// the operand rounded to T (dZ), f32 accumulation in any order, and the rounding of the result,
/// (a relative step u_T, or the smallest subnormal η_T near zero), with a factor of 4 to spare:
///   |got - want| <= 4 (u_T (|want| + abs_sum) + terms u_f32 abs_sum + η_T).
pub fn check_elementwise<T: Element>(
    what: &str,
    got: &[T],
    want: &[f64],
    abs_sum: &[f64],
    terms: usize,
) {
    let (u, subnormal) = rounding_of::<T>();
    let u32 = f64::powi(2.0, -24);
    let mut worst: Option<(usize, f64, f64)> = None;
    let mut wrong = 0;
    for (i, ((g, w), a)) in got.iter().zip(want).zip(abs_sum).enumerate() {
        let g = g.to_f64();
        if !w.is_finite() || !a.is_finite() {
            continue;
        }
        let bound = 4.0 * (u * (w.abs() + a) + terms as f64 * u32 * a + subnormal);
        let error = (g - w).abs();
        if error.is_nan() || error > bound {
            wrong += 1;
            if worst.is_none_or(|(_, e, b)| error / bound > e / b) {
                worst = Some((i, error, bound));
            }
        }
    }
    if let Some((i, error, bound)) = worst {
        panic!(
            "{what}: {wrong} elements outside their rounding bound; worst: element {i} is {} \
             where the reference has {} (error {error:e}, bound {bound:e})",
            got[i].to_f64(),
            want[i]
        );
    }
}
