//! `fusedrop bench`: the performance table for the GPU it runs on (method in docs/PERF.md).
//!
//! Exit codes: 0 every figure measured; 1 the table was printed but some figure could not be
//! measured (listed as NOT MEASURED), or the CSV could not be written; 2 bad arguments; 3 no
//! usable GPU (no driver, no device, kernels not built into this binary, or no cuBLASLt).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use fusedrop::Error;
use fusedrop_tools::bench::{
    format_table, run_table, suite_shape, write_table_csv, DType, Effort, Passes, Row,
    TableOptions, P_VALUES, SUITE,
};

/// Exit code: the table is incomplete, or the CSV could not be written.
const EXIT_INCOMPLETE: i32 = 1;
/// Exit code: bad arguments.
const EXIT_USAGE: i32 = 2;
/// Exit code: nothing could be measured, for want of a GPU, driver, kernels or cuBLASLt.
const EXIT_NO_GPU: i32 = 3;

fn usage() -> String {
    let shapes: Vec<String> = SUITE
        .iter()
        .map(|s| {
            format!(
                "                         {:<6} {:>5} x {:>5} x {:>5}  {}",
                s.name, s.m, s.k, s.n, s.purpose
            )
        })
        .collect();
    format!(
        "fusedrop bench: time the fused layer against cuBLASLt on this GPU

USAGE:
    fusedrop bench [FLAGS]

FLAGS:
    --quick            a subset that runs in well under two minutes on an H100: bf16 on up, sq,
                       small, wide, odd and f32 on sq, p = 0.1, short measurements (later flags
                       still narrow or widen it)
    --shapes LIST      comma-separated suite shapes (default: all), M x K x N:
{shapes}
    --dtypes LIST      comma-separated from bf16,f16,f32 (default: all; f32 runs on sq, small,
                       odd only)
    --p LIST           comma-separated dropout probabilities (default: {p})
    --pass WHICH       forward, backward or both (default: both)
    --csv PATH         also write the table as CSV to PATH
    --device N         GPU ordinal (default: 0)
    -h, --help         this text

Every time is the median of several repetitions between CUDA events; the floors (copy
bandwidth, cuBLASLt GEMM rate) are measured at the start of the same run.

EXIT CODES:
    0 every figure measured, 1 some figure not measured (see NOT MEASURED) or CSV not written,
    2 bad arguments, 3 no usable GPU, driver, kernels or cuBLASLt",
        shapes = shapes.join("\n"),
        p = P_VALUES.map(|p| p.to_string()).join(","),
    )
}

/// What the command line asked for.
struct Request {
    options: TableOptions,
    csv: Option<String>,
}

fn list<T>(value: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    let items: Vec<T> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse)
        .collect::<Result<_, _>>()?;
    if items.is_empty() {
        return Err(format!("empty list '{value}'"));
    }
    Ok(items)
}

fn parse(args: &[String]) -> Result<Option<Request>, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut options = if quick {
        TableOptions::quick()
    } else {
        TableOptions::full()
    };
    let mut csv = None;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg, None),
        };
        let mut value = || -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            let v = args
                .get(i)
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))?;
            i += 1;
            Ok(v)
        };
        match name {
            "-h" | "--help" => return Ok(None),
            "--quick" => {}
            "--shapes" => {
                options.shapes = list(&value()?, |s| suite_shape(s).map_err(|e| e.to_string()))?
            }
            "--dtypes" => {
                options.dtypes = list(&value()?, |s| DType::parse(s).map_err(|e| e.to_string()))?
            }
            "--p" => {
                options.probabilities = list(&value()?, |s| {
                    s.parse::<f32>()
                        .ok()
                        .filter(|p| (0.0..=1.0).contains(p))
                        .ok_or_else(|| format!("--p value '{s}' is not a probability in [0, 1]"))
                })?
            }
            "--pass" => {
                options.passes = match value()?.as_str() {
                    "forward" => Passes::Forward,
                    "backward" => Passes::Backward,
                    "both" => Passes::Both,
                    other => {
                        return Err(format!(
                            "--pass '{other}' is unknown; expected forward, backward or both"
                        ))
                    }
                }
            }
            "--csv" => csv = Some(value()?),
            "--device" => {
                let v = value()?;
                options.device = v
                    .parse()
                    .map_err(|_| format!("--device '{v}' is not a GPU ordinal (0, 1, ...)"))?
            }
            other => {
                return Err(format!(
                    "unknown flag '{other}'; run `fusedrop bench --help` for the flags"
                ))
            }
        }
    }
    if quick {
        options.effort = Effort::QUICK;
    }
    let measured_dtype = options
        .shapes
        .iter()
        .any(|s| s.dtypes().iter().any(|d| options.dtypes.contains(d)));
    if !measured_dtype {
        return Err(
            "no shape of --shapes is measured in any dtype of --dtypes (f32 runs on sq, small, \
             odd only)"
                .into(),
        );
    }
    Ok(Some(Request { options, csv }))
}

fn progress_line(row: &Row) -> String {
    format!(
        "  {:<6} {:<5} p={:<4} {:<16} {:<10} {:>10.1} us",
        row.shape,
        row.dtype.name(),
        row.p.map_or("-".to_string(), |p| p.to_string()),
        row.pass,
        row.impl_name,
        row.time_us
    )
}

/// Runs `fusedrop bench` with `args` (the arguments after `bench`) and returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let request = match parse(args) {
        Ok(Some(r)) => r,
        Ok(None) => {
            println!("{}", usage());
            return 0;
        }
        Err(msg) => {
            eprintln!("fusedrop bench: {msg}");
            return EXIT_USAGE;
        }
    };
    // Refuse a CSV path whose folder does not exist before spending GPU time.
    if let Some(path) = &request.csv {
        let parent = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty());
        if parent.is_some_and(|dir| !dir.is_dir()) {
            eprintln!("fusedrop bench: the folder of the CSV file {path} does not exist");
            return EXIT_USAGE;
        }
    }
    let start = Instant::now();
    eprintln!("fusedrop bench: measuring (each row prints as it is measured)");
    let mut progress = |row: &Row| eprintln!("{}", progress_line(row));
    let table = match run_table(&request.options, &mut progress) {
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
    if let Some(path) = &request.csv {
        let written = File::create(path).and_then(|f| {
            let mut out = BufWriter::new(f);
            write_table_csv(&table, &mut out)?;
            out.flush()
        });
        match written {
            Ok(()) => println!("CSV written to {path}"),
            Err(e) => {
                eprintln!("fusedrop bench: could not write the CSV file {path}: {e}");
                code = EXIT_INCOMPLETE;
            }
        }
    }
    code
}
