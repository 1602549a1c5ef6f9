//! `fusedrop bench`: the performance table for the GPU it runs on (method in docs/PERF.md).
//!
//! Exit codes: 0 every figure measured; 1 the table was printed but some figure could not be
//! measured (listed as NOT MEASURED), or the CSV could not be written; 2 bad arguments; 3 no
//! usable GPU (no driver, no device, kernels not built into this binary, or no cuBLASLt).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use fusedrop::cuda::LoadOptions;
use fusedrop::Error;
use fusedrop_tools::bench::{
    format_table, run_table, suite_shape, write_table_csv, DType, Passes, Row, SuiteShape,
    TableOptions, P_VALUES, SUITE,
};
use fusedrop_tools::first_repeated;

/// Exit code: the table is incomplete, or the CSV could not be written.
const EXIT_INCOMPLETE: i32 = 1;
/// Exit code: nothing could be measured, for want of a GPU, driver, kernels or cuBLASLt.
const EXIT_NO_GPU: i32 = 3;
/// Exit code: an argument that cannot be used (as for flags the parser refuses).
const EXIT_BAD_ARGUMENTS: i32 = 2;

/// The text after the flags in `fusedrop bench --help`: the suite's shapes (from [`SUITE`]),
/// the method and the exit codes.
pub fn after_help() -> String {
    let shapes: Vec<String> = SUITE
        .iter()
        .map(|s| {
            format!(
                "  {:<6} {:>5} x {:>5} x {:>5}  {}",
                s.name, s.m, s.k, s.n, s.purpose
            )
        })
        .collect();
    format!(
        "Shapes of the suite, M x K x N:
{}

Every time is the median of several repetitions between CUDA events, the figures of one pass
timed in the same rounds; the CSV also carries the fastest and slowest repetition (fastest_us,
slowest_us). The floors (copy bandwidth, cuBLASLt GEMM rate) are measured at the start of the
same run.

EXIT CODES:
    0 every figure measured, 1 some figure not measured (see NOT MEASURED) or CSV not written,
    2 bad arguments, 3 no usable GPU, driver, kernels or cuBLASLt",
        shapes.join("\n")
    )
}

/// The benchmark's flags. Each list flag replaces that part of the full suite, or of the
/// `--quick` subset when `--quick` is given.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// A subset that runs in well under two minutes on an H100: bf16 on up, sq, small, wide,
    /// odd and f32 on sq, small, odd, p = 0.1, short measurements (the other flags still narrow
    /// or widen it)
    #[arg(long)]
    quick: bool,
    /// Comma-separated suite shapes (listed below) [default: all; with --quick up, sq, small,
    /// wide, odd]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = shape)]
    shapes: Option<Vec<SuiteShape>>,
    /// Comma-separated from bf16,f16,f32 [default: all; with --quick bf16, f32; f32 runs on sq,
    /// small, odd only]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = dtype)]
    dtypes: Option<Vec<DType>>,
    // The help text lists P_VALUES, so it is set at run time (cli::command).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = probability,
          allow_negative_numbers = true)]
    p: Option<Vec<f32>>,
    /// Which passes to measure
    #[arg(long, value_name = "WHICH", default_value = "both", value_parser = passes())]
    pass: Passes,
    /// Also write the table as CSV to PATH
    #[arg(long, value_name = "PATH")]
    csv: Option<PathBuf>,
    /// GPU ordinal
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true,
        value_parser = fusedrop_tools::gpu_ordinal
    )]
    device: usize,
    /// Load no Hopper (sm_90a) kernels: on an H100 / H200 the `fused` rows are then the
    /// mma.sync and SIMT kernels other GPUs run, and no Hopper rows are measured
    #[arg(long)]
    no_hopper: bool,
}

/// The help text of `--p`.
pub fn p_help() -> String {
    format!(
        "Comma-separated dropout probabilities [default: {}; with --quick 0.1]",
        P_VALUES.map(|p| p.to_string()).join(",")
    )
}

fn shape(name: &str) -> Result<SuiteShape, String> {
    suite_shape(name.trim()).map_err(fusedrop_tools::flag_message)
}

fn dtype(name: &str) -> Result<DType, String> {
    DType::parse(name.trim()).map_err(fusedrop_tools::flag_message)
}

fn probability(text: &str) -> Result<f32, String> {
    text.trim()
        .parse::<f32>()
        .ok()
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| "expected a probability in [0, 1]".into())
}

fn passes() -> impl TypedValueParser<Value = Passes> {
    PossibleValuesParser::new(["forward", "backward", "both"]).map(|pass| match pass.as_str() {
        "forward" => Passes::Forward,
        "backward" => Passes::Backward,
        _ => Passes::Both,
    })
}

impl Options {
    /// What to measure: the full suite or the `--quick` subset, narrowed or widened by the
    /// other flags.
    pub fn table_options(&self) -> TableOptions {
        let mut options = if self.quick {
            TableOptions::quick()
        } else {
            TableOptions::full()
        };
        if let Some(shapes) = &self.shapes {
            options.shapes.clone_from(shapes);
        }
        if let Some(dtypes) = &self.dtypes {
            options.dtypes.clone_from(dtypes);
        }
        if let Some(p) = &self.p {
            options.probabilities.clone_from(p);
        }
        options.passes = self.pass;
        options.device = self.device;
        options.load = LoadOptions {
            hopper: !self.no_hopper,
        };
        options
    }

    /// The checks no single flag can make, done before any GPU time is spent: some shape is
    /// measured in some dtype, no list names an item twice (its rows would be measured twice,
    /// and `fusedrop goals` refuses a CSV with two rows for one figure), and the CSV path is a
    /// file in a folder that exists.
    pub fn check(&self) -> Result<(), String> {
        if let Some(shape) = self.shapes.as_deref().and_then(first_repeated) {
            return Err(format!("--shapes names {} twice", shape.name));
        }
        if let Some(dtype) = self.dtypes.as_deref().and_then(first_repeated) {
            return Err(format!("--dtypes names {} twice", dtype.name()));
        }
        if let Some(p) = self.p.as_deref().and_then(first_repeated) {
            return Err(format!("--p names {p} twice"));
        }
        let options = self.table_options();
        let measured_dtype = options
            .shapes
            .iter()
            .any(|s| s.dtypes().iter().any(|d| options.dtypes.contains(d)));
        if !measured_dtype {
            return Err(
                "no shape of --shapes is measured in any dtype of --dtypes (f32 runs on sq, \
                 small, odd only)"
                    .into(),
            );
        }
        if let Some(path) = &self.csv {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            if parent.is_some_and(|dir| !dir.is_dir()) {
                return Err(format!(
                    "the folder of the CSV file {} does not exist",
                    path.display()
                ));
            }
            if path.is_dir() {
                return Err(format!(
                    "the CSV file {} is a folder; expected a file name",
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

/// Whether `path` can be written, found before any GPU time is spent rather than after the run:
/// opened for appending (an existing file keeps its contents until the table replaces them), and
/// removed again if it did not exist.
fn check_writable(path: &Path) -> std::io::Result<()> {
    let existed = path.exists();
    OpenOptions::new().append(true).create(true).open(path)?;
    if !existed {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

fn progress_line(row: &Row) -> String {
    format!(
        "  {:<6} {:<5} p={:<4} {:<16} {:<15} {:>10.1} us",
        row.shape,
        row.dtype.name(),
        row.p.map_or("-".to_string(), |p| p.to_string()),
        row.pass,
        row.impl_name,
        row.time_us
    )
}

/// Runs `fusedrop bench` with `options` (already checked by [`Options::check`]); returns the
/// exit code.
pub fn run(options: &Options) -> i32 {
    let start = Instant::now();
    if let Some(path) = &options.csv {
        if let Err(e) = check_writable(path) {
            eprintln!(
                "fusedrop bench: cannot write the CSV file {}: {e}",
                path.display()
            );
            return EXIT_BAD_ARGUMENTS;
        }
    }
    eprintln!(
        "fusedrop bench: measuring (each row prints as it is measured){}",
        if options.no_hopper {
            "; no Hopper kernels loaded (--no-hopper)"
        } else {
            ""
        }
    );
    let mut progress = |row: &Row| eprintln!("{}", progress_line(row));
    let table = match run_table(&options.table_options(), &mut progress) {
        Ok(t) => t,
        Err(
            e
            @ (Error::DriverUnavailable(_) | Error::KernelsNotBuilt | Error::UnsupportedDevice(_)),
        ) => {
            eprintln!("fusedrop bench: no GPU figures can be measured here: {e}");
            return EXIT_NO_GPU;
        }
        Err(e) => {
            eprintln!("fusedrop bench: failed before the first row: {e}");
            return EXIT_INCOMPLETE;
        }
    };
    println!("{}", format_table(&table));
    println!(
        "({} rows in {:.0} s)",
        table.rows.len(),
        start.elapsed().as_secs_f64()
    );
    let mut code = if table.failures.is_empty() {
        0
    } else {
        EXIT_INCOMPLETE
    };
    if let Some(path) = &options.csv {
        let written = File::create(path).and_then(|f| write_table_csv(&table, f));
        match written {
            Ok(()) => println!("CSV written to {}", path.display()),
            Err(e) => {
                eprintln!(
                    "fusedrop bench: could not write the CSV file {}: {e}",
                    path.display()
                );
                code = EXIT_INCOMPLETE;
            }
        }
    }
    code
}
