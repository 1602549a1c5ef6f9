//! The "done when" figures of the performance issues (10: the Hopper forward, 11: the backward,
//! 12: the mma.sync and f32 paths; the goals of the design notes' targets.md as the issues state
//! them), and the parts of targets.md the issues leave out (the forward at 1.00 x rather than
//! 1.05 x, the copy bandwidth of wide and small, the epilogue on wide, the f32 rows of the lines
//! the issues state for the 16-bit types), checked against the rows of one
//! run: the CSV of `fusedrop bench --csv` and, for the PyTorch comparisons, the CSV of
//! tools/benches/peers/torch_peer.py from the same GPU. `fusedrop goals` prints the result.
//! A goal stated for a GPU (Hopper for issues 10 and 11, the H200 for issue 12) is "not
//! measured" on a run of another one.
//!
//! Every goal is a ratio or a rate read from rows of the same run, never a time on its own.
//! "Faster" is beyond the noise: our median time under the other's fastest repetition (the CSVs
//! carry each figure's range, `fastest_us` and `slowest_us`). A goal is met only when every row
//! it names was measured and meets it; rows that the run did not measure (a `--quick` run has
//! bf16, and f32 on sq, small and odd, at p = 0.1 only) leave it "not measured", not met.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;

use fusedrop::{Error, Result};
use serde::Deserialize;

use crate::bench::{DType, SUITE};
use crate::invalid;

/// The rows' `source` for this crate's benchmark.
const OURS: &str = "fusedrop";
/// The rows' `source` for the PyTorch peer script.
const TORCH: &str = "torch";
/// The probability the goals are stated for, unless they say otherwise.
const P_GOAL: f32 = 0.1;
/// The compute-bound shapes of the suite.
const COMPUTE_BOUND: [&str; 3] = ["up", "down", "sq"];
/// The 16-bit dtypes (f32 is not part of the Hopper path: wgmma has no true-fp32 form).
const HALVES: [DType; 2] = [DType::Bf16, DType::F16];
/// Every dtype of the suite.
const ALL_DTYPES: [DType; 3] = [DType::Bf16, DType::F16, DType::F32];

/// One row of a benchmark CSV, as far as the goals read it (the other columns are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Measurement {
    /// `fusedrop` or `torch`.
    pub source: String,
    /// The GPU's name: every row of one check must come from the same GPU.
    pub gpu: String,
    /// The driver version: every row of one check must come from the same driver too (the
    /// bench and the peer are two processes; this is what the CSVs say of the machine).
    pub driver: String,
    /// Suite shape name.
    pub shape: String,
    /// `bf16`, `f16` or `f32`.
    pub dtype: String,
    /// Dropout probability; empty for the GEMM floors.
    pub p: Option<f32>,
    /// `forward`, `backward` or `forward+backward`.
    pub pass: String,
    /// `fused`, `gemm_floor`, `unfused`, a variant (`fused_mma_sync`, ...), or the peer's
    /// `eager` / `compile`.
    #[serde(rename = "impl")]
    pub impl_name: String,
    /// Median time per call, in microseconds.
    pub time_us: f64,
    /// The fastest repetition's time per call, in microseconds; absent from the CSVs written
    /// before the column was (2026-12-06), whose "faster" goals then compare medians.
    #[serde(default)]
    pub fastest_us: Option<f64>,
    /// Useful arithmetic per second.
    pub tflops: Option<f64>,
    /// The bytes that must move over the time, as a percentage of the measured copy bandwidth.
    pub pct_copy_bw: Option<f64>,
}

/// Reads the rows of one CSV written by `fusedrop bench --csv` or by the PyTorch peer.
pub fn read_csv(reader: impl io::Read) -> Result<Vec<Measurement>> {
    csv::Reader::from_reader(reader)
        .deserialize()
        .enumerate()
        .map(|(i, row)| {
            row.map_err(|e| {
                invalid!(
                    "row {} of the CSV: {e}; expected the columns of `fusedrop bench --csv`",
                    i + 1
                )
            })
        })
        .collect()
}

/// Whether a goal, or one row of it, is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every row it names was measured and meets it.
    Met,
    /// A measured row misses it.
    NotMet,
    /// No measured row misses it, but some row it names was not measured.
    NotMeasured,
}

impl Verdict {
    /// As printed.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::NotMet => "NOT MET",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// One row a goal names: a label and its figure, if the run measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Which shape, dtype, p (and comparison) it is.
    pub label: String,
    /// The ratio or rate; `None` when a row it needs is missing.
    pub value: Option<f64>,
}

/// Whether a goal's figure must stay under or reach its limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// The figure (a time ratio) must be at most this.
    AtMost(f64),
    /// The figure (a rate) must be at least this.
    AtLeast(f64),
}

impl Limit {
    fn holds(self, value: f64) -> bool {
        match self {
            Limit::AtMost(limit) => value <= limit,
            Limit::AtLeast(limit) => value >= limit,
        }
    }
}

/// Where a goal comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A performance issue's "done when".
    Issue(u32),
    /// The design notes' targets.md, beyond what the issues ask.
    Targets,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Issue(n) => write!(f, "issue {n}"),
            Origin::Targets => f.write_str("targets"),
        }
    }
}

/// The GPU a goal is stated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gpu {
    /// Any GPU of compute capability 9.0: an H100, H200, H800 or H20 (by the name the CSVs
    /// carry).
    Hopper,
    /// The H200.
    H200,
}

impl Gpu {
    /// Whether the GPU the rows name is one of these.
    pub fn named_by(self, gpu: &str) -> bool {
        match self {
            Gpu::Hopper => ["H100", "H200", "H800", "H20"]
                .iter()
                .any(|h| gpu.contains(h)),
            Gpu::H200 => gpu.contains("H200"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Gpu::Hopper => "a Hopper GPU (H100, H200, H800, H20)",
            Gpu::H200 => "an H200",
        }
    }
}

/// One goal of an issue and the rows it was checked on.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    /// The issue (or targets.md) it comes from.
    pub origin: Origin,
    /// What it asks, in words.
    pub text: &'static str,
    /// The limit on every instance's figure.
    pub limit: Limit,
    /// The rows it names.
    pub instances: Vec<Instance>,
    /// The GPU it is stated for, when the run's is another one (the goal is then "not
    /// measured", whatever its figures): the GPU asked for and the run's.
    pub wrong_gpu: Option<(Gpu, String)>,
}

impl Goal {
    /// Not measured on a GPU it is not stated for; else met when every instance was measured
    /// and holds, not met when a measured one does not.
    pub fn verdict(&self) -> Verdict {
        if self.wrong_gpu.is_some() {
            Verdict::NotMeasured
        } else if self.failing().next().is_some() {
            Verdict::NotMet
        } else if self.instances.iter().all(|i| i.value.is_some()) {
            Verdict::Met
        } else {
            Verdict::NotMeasured
        }
    }

    /// The measured instances that miss the limit.
    pub fn failing(&self) -> impl Iterator<Item = &Instance> {
        self.instances
            .iter()
            .filter(|i| i.value.is_some_and(|v| !self.limit.holds(v)))
    }
}

/// What identifies a row: (source, shape, dtype, p, pass, impl).
type RowRef<'s> = (&'s str, &'s str, DType, Option<f32>, &'s str, &'s str);
/// The same, as the rows' map keys it: the dtype's name and p's bits.
type RowKey<'s> = (&'s str, &'s str, &'s str, Option<u32>, &'s str, &'s str);

/// The one place a row's key is built, for the rows read and for the rows looked up.
fn row_key<'s>(
    source: &'s str,
    shape: &'s str,
    dtype_name: &'s str,
    p: Option<f32>,
    pass: &'s str,
    impl_name: &'s str,
) -> RowKey<'s> {
    (
        source,
        shape,
        dtype_name,
        p.map(f32::to_bits),
        pass,
        impl_name,
    )
}

/// The rows of a run, looked up by what identifies them.
struct Rows<'a> {
    by_key: HashMap<RowKey<'a>, &'a Measurement>,
    /// The GPU every row names (`None` for no rows).
    gpu: Option<&'a str>,
}

impl<'a> Rows<'a> {
    fn new(rows: &'a [Measurement]) -> Result<Self> {
        // One run: one GPU, one driver.
        for (what, value) in [
            (
                "GPUs",
                (|r: &Measurement| r.gpu.as_str()) as fn(&Measurement) -> &str,
            ),
            ("drivers", |r| r.driver.as_str()),
        ] {
            let mut values: Vec<&str> = rows.iter().map(value).collect();
            values.sort_unstable();
            values.dedup();
            if values.len() > 1 {
                return Err(invalid!(
                    "the rows come from {} {what} ({}); expected one run on one GPU and driver",
                    values.len(),
                    values.join(", ")
                ));
            }
        }
        let mut by_key = HashMap::new();
        for r in rows {
            let key = row_key(&r.source, &r.shape, &r.dtype, r.p, &r.pass, &r.impl_name);
            // Two CSVs of the same source (a bench run with and one without the Hopper kernels,
            // say) would otherwise silently replace one path's figures by the other's.
            if by_key.insert(key, r).is_some() {
                return Err(invalid!(
                    "two rows for {} {} {} p={} {} {}; expected each row once (the CSVs of one \
                     run: one bench, one peer)",
                    r.source,
                    r.shape,
                    r.dtype,
                    r.p.map_or("-".to_string(), |p| p.to_string()),
                    r.pass,
                    r.impl_name
                ));
            }
        }
        Ok(Self {
            by_key,
            gpu: rows.first().map(|r| r.gpu.as_str()),
        })
    }

    fn get(&self, row: RowRef<'_>) -> Option<&'a Measurement> {
        let (source, shape, dtype, p, pass, impl_name) = row;
        let key = row_key(source, shape, dtype.name(), p, pass, impl_name);
        self.by_key.get(&key).copied()
    }

    fn time(&self, row: RowRef<'_>) -> Option<f64> {
        self.get(row).map(|r| r.time_us)
    }

    /// Our row's time over another row's time.
    fn ratio(&self, ours: RowRef<'_>, other: RowRef<'_>) -> Option<f64> {
        Some(self.time(ours)? / self.time(other)?)
    }

    /// Our row's time over the other row's fastest repetition (its median in a CSV that does
    /// not carry the repetitions' range): under 1 only when ours is faster than every
    /// repetition of the other, so that "faster" is more than the noise between repetitions.
    fn ratio_to_fastest(&self, ours: RowRef<'_>, other: RowRef<'_>) -> Option<f64> {
        let other = self.get(other)?;
        Some(self.time(ours)? / other.fastest_us.unwrap_or(other.time_us))
    }
}

fn label(shape: &str, dtype: DType, p: f32) -> String {
    format!("{shape} {} p={p}", dtype.name())
}

/// The shapes of the suite that run in `dtype`.
fn shapes_in(dtype: DType) -> impl Iterator<Item = &'static str> {
    SUITE
        .into_iter()
        .filter(move |s| s.dtypes().contains(&dtype))
        .map(|s| s.name)
}

/// Fused time over the GEMM floor's, for each of `shapes` x `dtypes` at p = 0.1.
fn versus_floor(
    rows: &Rows<'_>,
    pass: &str,
    shapes: &[&'static str],
    dtypes: &[DType],
) -> Vec<Instance> {
    let mut out = Vec::new();
    for &shape in shapes {
        for &dtype in dtypes {
            out.push(Instance {
                label: label(shape, dtype, P_GOAL),
                value: rows.ratio(
                    (OURS, shape, dtype, Some(P_GOAL), pass, "fused"),
                    (OURS, shape, dtype, None, pass, "gemm_floor"),
                ),
            });
        }
    }
    out
}

/// Fused time over each of `others`' (source, impl) fastest repetition
/// ([`Rows::ratio_to_fastest`]), for every row of the suite in `dtypes` (every shape that runs
/// in it and every p of [`crate::bench::P_VALUES`]).
fn faster_than(
    rows: &Rows<'_>,
    pass: &str,
    others: &[(&str, &str)],
    dtypes: &[DType],
) -> Vec<Instance> {
    let mut out = Vec::new();
    for &dtype in dtypes {
        for shape in shapes_in(dtype) {
            for p in crate::bench::P_VALUES {
                for &(source, impl_name) in others {
                    out.push(Instance {
                        label: format!("{} vs {source} {impl_name}", label(shape, dtype, p)),
                        value: rows.ratio_to_fastest(
                            (OURS, shape, dtype, Some(p), pass, "fused"),
                            (source, shape, dtype, Some(p), pass, impl_name),
                        ),
                    });
                }
            }
        }
    }
    out
}

/// A goal before the run's GPU is compared with the one it is stated for.
fn goal(
    origin: Origin,
    gpu: Option<Gpu>,
    text: &'static str,
    limit: Limit,
    instances: Vec<Instance>,
) -> (Goal, Option<Gpu>) {
    let goal = Goal {
        origin,
        text,
        limit,
        instances,
        wrong_gpu: None,
    };
    (goal, gpu)
}

/// Fused time at p = 0.1 over the same kernel's at p = 0, for each of `shapes` x `dtypes`.
fn epilogue_cost(rows: &Rows<'_>, shapes: &[&'static str], dtypes: &[DType]) -> Vec<Instance> {
    let mut out = Vec::new();
    for &shape in shapes {
        for &dtype in dtypes {
            out.push(Instance {
                label: format!("{} vs p=0", label(shape, dtype, P_GOAL)),
                value: rows.ratio(
                    (OURS, shape, dtype, Some(P_GOAL), "forward", "fused"),
                    (OURS, shape, dtype, Some(0.0), "forward", "fused"),
                ),
            });
        }
    }
    out
}

/// One column of the fused forward's rows at p = 0.1, for each of `shapes` x the halves.
fn forward_column(
    rows: &Rows<'_>,
    shapes: &[&'static str],
    impl_name: &str,
    column: fn(&Measurement) -> Option<f64>,
) -> Vec<Instance> {
    let mut out = Vec::new();
    for &shape in shapes {
        for dtype in HALVES {
            out.push(Instance {
                label: label(shape, dtype, P_GOAL),
                value: rows
                    .get((OURS, shape, dtype, Some(P_GOAL), "forward", impl_name))
                    .and_then(column),
            });
        }
    }
    out
}

/// Every goal of issues 10, 11 and 12, then those of targets.md the issues leave out, checked on
/// `rows` (one run: ours and the peer's). Errors: rows from more than one GPU or driver.
pub fn check(rows: &[Measurement]) -> Result<Vec<Goal>> {
    let rows = Rows::new(rows)?;
    let rows = &rows;
    // Faster is our median under the other's fastest repetition (`faster_than`), strictly: a
    // ratio under 1; measured to two decimals of a microsecond, "at most 1" would count a tie as
    // faster.
    let faster = Limit::AtMost(1.0 - 1e-9);
    let peers = [(OURS, "unfused"), (TORCH, "eager"), (TORCH, "compile")];
    let hopper = Some(Gpu::Hopper);
    let goals = vec![
        goal(
            Origin::Issue(10),
            hopper,
            "forward, up/down/sq: fused <= 1.05 x the cuBLASLt GEMM floor",
            Limit::AtMost(1.05),
            versus_floor(rows, "forward", &COMPUTE_BOUND, &HALVES),
        ),
        goal(
            Origin::Issue(10),
            hopper,
            "forward, wide and small: fused <= 1.3 x the GEMM floor",
            Limit::AtMost(1.3),
            versus_floor(rows, "forward", &["wide", "small"], &HALVES),
        ),
        goal(
            Origin::Issue(10),
            hopper,
            "forward, every bf16/f16 row: fused faster than unfused, PyTorch eager and \
             torch.compile",
            faster,
            faster_than(rows, "forward", &peers, &HALVES),
        ),
        goal(
            Origin::Issue(10),
            hopper,
            "forward, up/down/sq: fused at p = 0.1 within 2 % of p = 0",
            Limit::AtMost(1.02),
            epilogue_cost(rows, &COMPUTE_BOUND, &HALVES),
        ),
        goal(
            Origin::Issue(11),
            hopper,
            "backward, up/down/sq: fused <= 1.10 x the two cuBLASLt GEMMs",
            Limit::AtMost(1.10),
            versus_floor(rows, "backward", &COMPUTE_BOUND, &HALVES),
        ),
        goal(
            Origin::Issue(11),
            hopper,
            "backward, every bf16/f16 row: fused faster than unfused",
            faster,
            faster_than(rows, "backward", &[(OURS, "unfused")], &HALVES),
        ),
        goal(
            Origin::Issue(11),
            hopper,
            "forward+backward, every bf16/f16 row: fused faster than PyTorch eager and \
             torch.compile",
            faster,
            faster_than(
                rows,
                "forward+backward",
                &[(TORCH, "eager"), (TORCH, "compile")],
                &HALVES,
            ),
        ),
        goal(
            Origin::Issue(11),
            hopper,
            "backward, f32 on sq: fused <= 1.25 x the two cuBLASLt SGEMMs",
            Limit::AtMost(1.25),
            versus_floor(rows, "backward", &["sq"], &[DType::F32]),
        ),
        goal(
            Origin::Issue(12),
            Some(Gpu::H200),
            "forward, fused_mma_sync on up and sq: >= 450 TFLOP/s",
            Limit::AtLeast(450.0),
            forward_column(rows, &["up", "sq"], "fused_mma_sync", |r| r.tflops),
        ),
        goal(
            Origin::Issue(12),
            Some(Gpu::H200),
            "forward, f32 on sq: fused <= 1.11 x cuBLASLt SGEMM",
            Limit::AtMost(1.11),
            versus_floor(rows, "forward", &["sq"], &[DType::F32]),
        ),
        goal(
            Origin::Targets,
            hopper,
            "forward, up/down/sq: fused <= 1.00 x the cuBLASLt GEMM floor",
            Limit::AtMost(1.0),
            versus_floor(rows, "forward", &COMPUTE_BOUND, &HALVES),
        ),
        goal(
            Origin::Targets,
            None,
            "forward, wide and small: fused >= 80 % of the copy bandwidth",
            Limit::AtLeast(80.0),
            forward_column(rows, &["wide", "small"], "fused", |r| r.pct_copy_bw),
        ),
        goal(
            Origin::Targets,
            None,
            "forward, wide: fused at p = 0.1 within 10 % of p = 0",
            Limit::AtMost(1.10),
            epilogue_cost(rows, &["wide"], &HALVES),
        ),
        goal(
            Origin::Targets,
            None,
            "forward, small f32: fused <= 1.3 x the cuBLASLt SGEMM floor",
            Limit::AtMost(1.3),
            versus_floor(rows, "forward", &["small"], &[DType::F32]),
        ),
        goal(
            Origin::Targets,
            None,
            "forward, sq f32: fused at p = 0.1 within 2 % of p = 0",
            Limit::AtMost(1.02),
            epilogue_cost(rows, &["sq"], &[DType::F32]),
        ),
        goal(
            Origin::Targets,
            None,
            "backward, sq f32: fused <= 1.10 x the two cuBLASLt SGEMMs",
            Limit::AtMost(1.10),
            versus_floor(rows, "backward", &["sq"], &[DType::F32]),
        ),
        goal(
            Origin::Targets,
            None,
            "forward, every f32 row: fused faster than unfused, PyTorch eager and torch.compile",
            faster,
            faster_than(rows, "forward", &peers, &[DType::F32]),
        ),
        goal(
            Origin::Targets,
            None,
            "backward, every f32 row: fused faster than unfused",
            faster,
            faster_than(rows, "backward", &[(OURS, "unfused")], &[DType::F32]),
        ),
        goal(
            Origin::Targets,
            None,
            "forward+backward, every row: fused faster than unfused; f32 also than PyTorch \
             eager and torch.compile",
            faster,
            faster_than(rows, "forward+backward", &[(OURS, "unfused")], &ALL_DTYPES)
                .into_iter()
                .chain(faster_than(
                    rows,
                    "forward+backward",
                    &[(TORCH, "eager"), (TORCH, "compile")],
                    &[DType::F32],
                ))
                .collect(),
        ),
    ];
    Ok(goals
        .into_iter()
        .map(|(mut goal, gpu)| {
            goal.wrong_gpu = gpu.zip(rows.gpu).and_then(|(wanted, run)| {
                (!wanted.named_by(run)).then(|| (wanted, run.to_string()))
            });
            goal
        })
        .collect())
}

/// How many of a goal's missing or unmeasured rows [`format_goals`] names (the rest are counted).
const LISTED: usize = 10;

/// `labels` joined, the first [`LISTED`] of them, then how many more there are.
fn listed(labels: impl ExactSizeIterator<Item = String>) -> String {
    let count = labels.len();
    let mut text: Vec<String> = labels.take(LISTED).collect();
    if count > LISTED {
        text.push(format!("and {} more", count - LISTED));
    }
    text.join(", ")
}

/// The goals as text: one line per goal (issue, verdict, how many of its rows were measured,
/// the worst figure), then the rows that miss it and those not measured (the first few of each).
pub fn format_goals(goals: &[Goal]) -> String {
    let mut s = String::new();
    for goal in goals {
        let measured: Vec<(&Instance, f64)> = goal
            .instances
            .iter()
            .filter_map(|i| Some((i, i.value?)))
            .collect();
        let worst = measured.iter().copied().max_by(|a, b| {
            let (x, y) = match goal.limit {
                Limit::AtMost(_) => (a.1, b.1),
                Limit::AtLeast(_) => (b.1, a.1),
            };
            x.total_cmp(&y)
        });
        let worst = worst.map_or(String::new(), |(i, v)| {
            format!("; worst {v:.3} ({})", i.label)
        });
        let _ = writeln!(
            s,
            "{:<8}  {:<12}  {}  [{} of {} rows measured{worst}]",
            goal.origin.to_string(),
            goal.verdict().name(),
            goal.text,
            measured.len(),
            goal.instances.len()
        );
        if let Some((wanted, run)) = &goal.wrong_gpu {
            let _ = writeln!(
                s,
                "    stated for {}; this run's GPU is {run}",
                wanted.name()
            );
        }
        let failing: Vec<String> = goal
            .failing()
            .map(|i| format!("{} {:.3}", i.label, i.value.unwrap_or(f64::NAN)))
            .collect();
        if !failing.is_empty() {
            let _ = writeln!(s, "    misses: {}", listed(failing.into_iter()));
        }
        let missing: Vec<String> = goal
            .instances
            .iter()
            .filter(|i| i.value.is_none())
            .map(|i| i.label.clone())
            .collect();
        if !missing.is_empty() && missing.len() < goal.instances.len() {
            let _ = writeln!(s, "    not measured: {}", listed(missing.into_iter()));
        }
    }
    s
}

/// Reads `paths` (CSV files of one run) and checks the goals.
pub fn check_files(paths: &[std::path::PathBuf]) -> Result<Vec<Goal>> {
    let mut rows = Vec::new();
    for path in paths {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::InvalidArgument(format!("cannot read {}: {e}", path.display())))?;
        rows.extend(read_csv(file).map_err(|e| match e {
            Error::InvalidArgument(why) => {
                Error::InvalidArgument(format!("{}: {why}", path.display()))
            }
            other => other,
        })?);
    }
    check(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "source,gpu,driver,shape,m,n,k,dtype,p,pass,impl,time_us,tflops,gbps,\
                          vs_gemm_floor,vs_unfused,pct_copy_bw,pct_matmul_rate,copy_gbps,\
                          rate_tflops,note\n";

    fn row(
        source: &str,
        shape: &str,
        dtype: &str,
        p: &str,
        pass: &str,
        imp: &str,
        t: f64,
    ) -> String {
        format!(
            "{source},NVIDIA H200,570.1,{shape},1,1,1,{dtype},{p},{pass},{imp},{t},100.0,1.0,,,,,,,\n"
        )
    }

    fn goal<'g>(goals: &'g [Goal], text_start: &str) -> &'g Goal {
        goals
            .iter()
            .find(|g| g.text.starts_with(text_start))
            .expect("the goal")
    }

    #[test]
    fn a_goal_is_met_only_when_every_row_it_names_is_measured_and_holds() {
        let mut csv = HEADER.to_string();
        for shape in COMPUTE_BOUND {
            for dtype in ["bf16", "f16"] {
                csv += &row(OURS, shape, dtype, "", "forward", "gemm_floor", 100.0);
                csv += &row(OURS, shape, dtype, "0.1", "forward", "fused", 104.0);
            }
        }
        let rows = read_csv(csv.as_bytes()).unwrap();
        let goals = check(&rows).unwrap();
        let floor = goal(&goals, "forward, up/down/sq: fused <= 1.05");
        assert_eq!(floor.verdict(), Verdict::Met);
        assert!(floor.instances.iter().all(|i| i.value == Some(1.04)));
        // One row past the limit: not met, and it is the one listed.
        let slow = csv.replace(
            &row(OURS, "down", "f16", "0.1", "forward", "fused", 104.0),
            &row(OURS, "down", "f16", "0.1", "forward", "fused", 106.0),
        );
        let goals = check(&read_csv(slow.as_bytes()).unwrap()).unwrap();
        let floor = goal(&goals, "forward, up/down/sq: fused <= 1.05");
        assert_eq!(floor.verdict(), Verdict::NotMet);
        let failing: Vec<_> = floor.failing().map(|i| i.label.as_str()).collect();
        assert_eq!(failing, ["down f16 p=0.1"]);
        assert!(format_goals(&goals).contains("misses: down f16 p=0.1 1.060"));
        // One row missing: not measured, not met.
        let partial = csv.replace(
            &row(OURS, "sq", "bf16", "", "forward", "gemm_floor", 100.0),
            "",
        );
        let goals = check(&read_csv(partial.as_bytes()).unwrap()).unwrap();
        let floor = goal(&goals, "forward, up/down/sq: fused <= 1.05");
        assert_eq!(floor.verdict(), Verdict::NotMeasured);
        assert!(format_goals(&goals).contains("not measured: sq bf16 p=0.1"));
        // Goals without any row of this run are not measured either.
        assert_eq!(
            goal(&goals, "backward, up/down/sq").verdict(),
            Verdict::NotMeasured
        );
    }

    #[test]
    fn comparisons_with_pytorch_read_the_peer_rows_of_the_same_shape_dtype_and_p() {
        let mut csv = HEADER.to_string();
        csv += &row(
            OURS,
            "sq",
            "bf16",
            "0.5",
            "forward+backward",
            "fused",
            300.0,
        );
        csv += &row(
            TORCH,
            "sq",
            "bf16",
            "0.5",
            "forward+backward",
            "eager",
            600.0,
        );
        csv += &row(
            TORCH,
            "sq",
            "bf16",
            "0.5",
            "forward+backward",
            "compile",
            300.0,
        );
        csv += &row(
            TORCH,
            "sq",
            "bf16",
            "0.1",
            "forward+backward",
            "compile",
            100.0,
        );
        let goals = check(&read_csv(csv.as_bytes()).unwrap()).unwrap();
        let torch = goal(&goals, "forward+backward, every bf16/f16 row");
        let value = |label: &str| {
            torch
                .instances
                .iter()
                .find(|i| i.label == label)
                .expect(label)
                .value
        };
        assert_eq!(value("sq bf16 p=0.5 vs torch eager"), Some(0.5));
        // A tie is not faster.
        assert_eq!(value("sq bf16 p=0.5 vs torch compile"), Some(1.0));
        assert_eq!(value("sq bf16 p=0.1 vs torch compile"), None);
        assert_eq!(torch.verdict(), Verdict::NotMet);
        // Every bf16 and f16 shape of the suite at every p, against both.
        let expected = HALVES.iter().map(|&d| shapes_in(d).count()).sum::<usize>()
            * crate::bench::P_VALUES.len()
            * 2;
        assert_eq!(torch.instances.len(), expected);
    }

    #[test]
    fn faster_means_under_the_others_fastest_repetition_when_the_csv_has_it() {
        // The columns of `fusedrop bench --csv` since the repetitions' range was added.
        let header = HEADER.replace("time_us,", "time_us,fastest_us,slowest_us,");
        let line = |source: &str, imp: &str, median: f64, fastest: f64| {
            format!(
                "{source},NVIDIA H200,570.1,sq,1,1,1,bf16,0.1,backward,{imp},{median},{fastest},\
                 {},100.0,1.0,,,,,,,\n",
                median + 2.0
            )
        };
        let verdict = |fused: f64, unfused: f64, unfused_fastest: f64| {
            let csv = header.clone()
                + &line(OURS, "fused", fused, fused - 1.0)
                + &line(OURS, "unfused", unfused, unfused_fastest);
            let goals = check(&read_csv(csv.as_bytes()).unwrap()).unwrap();
            let goal = goal(
                &goals,
                "backward, every bf16/f16 row: fused faster than unfused",
            );
            let instance = goal
                .instances
                .iter()
                .find(|i| i.label == "sq bf16 p=0.1 vs fusedrop unfused")
                .expect("the sq row");
            let holds = !goal.failing().any(|i| i.label == instance.label);
            (instance.value, holds)
        };
        // A 1 % lower median inside a 2 % spread is not faster; below the fastest repetition is.
        assert_eq!(verdict(99.0, 100.0, 98.0), (Some(99.0 / 98.0), false));
        assert_eq!(verdict(99.0, 100.0, 99.5), (Some(99.0 / 99.5), true));
        // Without the column (the CSVs before it), the medians.
        let old = HEADER.to_string()
            + &row(OURS, "sq", "bf16", "0.1", "backward", "fused", 99.0)
            + &row(OURS, "sq", "bf16", "0.1", "backward", "unfused", 100.0);
        let rows = read_csv(old.as_bytes()).unwrap();
        assert_eq!(rows[1].fastest_us, None);
        let goals = check(&rows).unwrap();
        let goal = goal(
            &goals,
            "backward, every bf16/f16 row: fused faster than unfused",
        );
        assert!(goal.instances.iter().any(|i| i.value == Some(0.99)));
    }

    #[test]
    fn the_mma_sync_rate_goal_reads_tflops_and_needs_at_least_450() {
        let mut csv = HEADER.to_string();
        for (shape, dtype, rate) in [
            ("up", "bf16", "455.0"),
            ("up", "f16", "460.0"),
            ("sq", "bf16", "451.0"),
            ("sq", "f16", "449.9"),
        ] {
            csv += &format!(
                "{OURS},NVIDIA H200,570.1,{shape},1,1,1,{dtype},0.1,forward,fused_mma_sync,10.0,\
                 {rate},1.0,,,,,,,\n"
            );
        }
        let goals = check(&read_csv(csv.as_bytes()).unwrap()).unwrap();
        let mma = goal(&goals, "forward, fused_mma_sync");
        assert_eq!(mma.verdict(), Verdict::NotMet);
        let failing: Vec<_> = mma.failing().map(|i| i.label.as_str()).collect();
        assert_eq!(failing, ["sq f16 p=0.1"]);
        assert!(format_goals(&goals).contains("worst 449.900 (sq f16 p=0.1)"));
    }

    #[test]
    fn a_goal_stated_for_another_gpu_is_not_measured_and_says_so() {
        let rates = |gpu: &str| {
            let mut csv = HEADER.to_string();
            for shape in ["up", "sq"] {
                for dtype in ["bf16", "f16"] {
                    csv += &format!(
                        "{OURS},{gpu},570.1,{shape},1,1,1,{dtype},0.1,forward,fused_mma_sync,10.0,\
                         500.0,1.0,,,,,,,\n"
                    );
                }
            }
            check(&read_csv(csv.as_bytes()).unwrap()).unwrap()
        };
        let on_h100 = rates("NVIDIA H100 80GB HBM3");
        let mma = goal(&on_h100, "forward, fused_mma_sync");
        assert_eq!(mma.verdict(), Verdict::NotMeasured);
        assert_eq!(
            mma.wrong_gpu,
            Some((Gpu::H200, "NVIDIA H100 80GB HBM3".to_string()))
        );
        assert!(format_goals(&on_h100)
            .contains("stated for an H200; this run's GPU is NVIDIA H100 80GB HBM3"));
        // The same figures on the GPU the goal is stated for meet it.
        let on_h200 = rates("NVIDIA H200");
        assert_eq!(
            goal(&on_h200, "forward, fused_mma_sync").verdict(),
            Verdict::Met
        );
        // Issues 10 and 11 are stated for any Hopper GPU, not for an A100.
        assert!(Gpu::Hopper.named_by("NVIDIA H100 80GB HBM3"));
        assert!(Gpu::Hopper.named_by("NVIDIA H200"));
        assert!(!Gpu::Hopper.named_by("NVIDIA A100-SXM4-80GB"));
        let mut csv = HEADER.to_string();
        for shape in COMPUTE_BOUND {
            for dtype in ["bf16", "f16"] {
                csv += &row(OURS, shape, dtype, "", "forward", "gemm_floor", 100.0);
                csv += &row(OURS, shape, dtype, "0.1", "forward", "fused", 99.0);
            }
        }
        let on_a100 = csv.replace("NVIDIA H200", "NVIDIA A100-SXM4-80GB");
        let goals = check(&read_csv(on_a100.as_bytes()).unwrap()).unwrap();
        let floor = goal(&goals, "forward, up/down/sq: fused <= 1.05");
        assert_eq!(floor.verdict(), Verdict::NotMeasured);
        assert!(floor.instances.iter().all(|i| i.value == Some(0.99)));
        let goals = check(&read_csv(csv.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            goal(&goals, "forward, up/down/sq: fused <= 1.05").verdict(),
            Verdict::Met
        );
    }

    #[test]
    fn the_targets_read_the_copy_bandwidth_and_every_dtype() {
        let mut csv = HEADER.to_string();
        for (shape, dtype, pct) in [
            ("wide", "bf16", "85.0"),
            ("wide", "f16", "79.5"),
            ("small", "bf16", "90.0"),
            ("small", "f16", "80.0"),
        ] {
            csv += &format!(
                "{OURS},NVIDIA H200,570.1,{shape},1,1,1,{dtype},0.1,forward,fused,10.0,1.0,1.0,,,\
                 {pct},,,,\n"
            );
        }
        let goals = check(&read_csv(csv.as_bytes()).unwrap()).unwrap();
        let copy = goal(&goals, "forward, wide and small: fused >= 80 %");
        assert_eq!(copy.origin, Origin::Targets);
        assert_eq!(copy.verdict(), Verdict::NotMet);
        let failing: Vec<_> = copy.failing().map(|i| i.label.as_str()).collect();
        assert_eq!(failing, ["wide f16 p=0.1"]);
        // The f32 rows the issues leave out: every f32 shape of the suite at every p.
        let f32_rows = goal(&goals, "forward, every f32 row");
        assert_eq!(
            f32_rows.instances.len(),
            shapes_in(DType::F32).count() * crate::bench::P_VALUES.len() * 3
        );
        assert!(format_goals(&goals).contains("targets   NOT MET       forward, wide and small"));
    }

    #[test]
    fn the_targets_hold_f32_to_the_lines_the_issues_state_for_the_halves() {
        let mut csv = HEADER.to_string();
        for (shape, p, pass, imp, t) in [
            ("small", "", "forward", "gemm_floor", 100.0),
            ("small", "0.1", "forward", "fused", 129.0),
            ("sq", "0", "forward", "fused", 100.0),
            ("sq", "0.1", "forward", "fused", 102.5),
            ("sq", "", "backward", "gemm_floor", 100.0),
            ("sq", "0.1", "backward", "fused", 111.0),
        ] {
            csv += &row(OURS, shape, "f32", p, pass, imp, t);
        }
        let goals = check(&read_csv(csv.as_bytes()).unwrap()).unwrap();
        for (text, verdict, value) in [
            ("forward, small f32: fused <= 1.3 x", Verdict::Met, 1.29),
            (
                "forward, sq f32: fused at p = 0.1 within 2 %",
                Verdict::NotMet,
                1.025,
            ),
            ("backward, sq f32: fused <= 1.10 x", Verdict::NotMet, 1.11),
        ] {
            let line = goal(&goals, text);
            assert_eq!(line.origin, Origin::Targets, "{text}");
            assert_eq!(line.wrong_gpu, None, "{text}: any GPU");
            assert_eq!(line.verdict(), verdict, "{text}");
            assert_eq!(line.instances.len(), 1, "{text}");
            let measured = line.instances[0].value.expect("measured");
            assert!((measured - value).abs() < 1e-9, "{text}: {measured}");
        }
    }

    #[test]
    fn rows_from_two_gpus_twice_the_same_row_or_malformed_rows_are_refused() {
        let mut csv = HEADER.to_string();
        csv += &row(OURS, "sq", "bf16", "", "forward", "gemm_floor", 100.0);
        csv += &row(TORCH, "sq", "bf16", "0.1", "forward", "eager", 100.0)
            .replace("NVIDIA H200", "NVIDIA H100 80GB HBM3");
        let e = check(&read_csv(csv.as_bytes()).unwrap()).unwrap_err();
        assert!(e.to_string().contains("2 GPUs"), "{e}");
        let mut csv = HEADER.to_string();
        csv += &row(OURS, "sq", "bf16", "", "forward", "gemm_floor", 100.0);
        csv +=
            &row(TORCH, "sq", "bf16", "0.1", "forward", "eager", 100.0).replace("570.1", "580.2");
        let e = check(&read_csv(csv.as_bytes()).unwrap()).unwrap_err();
        assert!(e.to_string().contains("2 drivers (570.1, 580.2)"), "{e}");
        let twice = format!(
            "{HEADER}{}{}",
            row(OURS, "sq", "bf16", "0.1", "forward", "fused", 1.0),
            row(OURS, "sq", "bf16", "0.1", "forward", "fused", 2.0)
        );
        let e = check(&read_csv(twice.as_bytes()).unwrap()).unwrap_err();
        assert!(
            e.to_string()
                .contains("two rows for fusedrop sq bf16 p=0.1 forward fused"),
            "{e}"
        );
        let bad = format!(
            "{HEADER}{}",
            row(OURS, "sq", "bf16", "x", "forward", "fused", 1.0)
        );
        let e = read_csv(bad.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("row 1 of the CSV"), "{e}");
    }
}
