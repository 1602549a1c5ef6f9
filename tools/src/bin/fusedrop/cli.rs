//! The command line, declared with clap's derive: [`Cli`] with one subcommand per command, each
//! command's flags in its own module (`demo::Options`, `selftest::Options`, `bench::Options`,
//! `fusedrop_tools::sweep::Options`).
//! Defaults live on the flags, so `--help` shows them, and ranges in their value parsers, so a
//! bad value is refused with what was expected; the checks that span several flags run in
//! [`try_parse_from`].

use std::ffi::OsString;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::{bench, demo, goals, selftest};

/// fused Linear + ReLU + dropout CUDA kernels, and what they are for
#[derive(Debug, Parser)]
#[command(
    name = "fusedrop",
    args_conflicts_with_subcommands = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The command; `None` runs the demo with the flags in [`Cli::demo`].
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The demo's flags, so that `fusedrop --epochs 5` (and `cargo run --release -- --epochs 5`)
    /// runs the demo without naming it.
    #[command(flatten, next_help_heading = "Demo options (when no command is given)")]
    pub demo: demo::Options,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train two MLPs on handwritten digits, with and without dropout, and plot their training
    /// and validation losses (the default when no command is given)
    ///
    /// Trains two identical MLPs (64 -> H -> H -> 10, ReLU) on a few hundred 8x8 digit images,
    /// one with dropout after each hidden layer and one without, through fusedrop's fused layer
    /// (CUDA kernels on a GPU, the CPU reference otherwise). Prints a table of training and
    /// validation loss and accuracy and writes a plot of the four loss curves.
    #[command(
        after_help = "The same seed gives the same numbers on the same backend.
EXIT CODES: 0 done, 1 a run failed, 2 bad flags, 3 --device cuda but no usable GPU."
    )]
    Demo(demo::Options),
    /// Check the GPU kernels against the CPU reference (exit 0 pass, 1 fail, 3 no GPU)
    ///
    /// Runs the standalone dropout kernel, the fused forward kernel (every tile configuration)
    /// and the backward kernel in f32, f16 and bf16 on a spread of shapes (mostly not multiples
    /// of a tile), dropout probabilities (0, 0.1, 0.5, 1), ReLU and identity, with and without bias,
    /// unsharded and as a shard, and compares each with the CPU reference: masks exactly, values
    /// by relative L2 error (f32 < 1e-5, f16 < 2e-3, bf16 < 1e-2). Prints a pass/fail table.
    #[command(
        after_help = "EXIT CODES: 0 every check passed, 1 a check failed, 2 bad flags,
            3 no usable GPU, CUDA driver or compiled kernels, or every check skipped (nothing
            was checked). A check skips only where the GPU is too old for its dtype (f16 and
            bf16 below compute capability 8.0); any other refusal to run fails it."
    )]
    Selftest(selftest::Options),
    /// Time the fused kernels against cuBLASLt and the unfused baseline (needs a GPU)
    Bench(bench::Options),
    /// Time the forward's tuning variants against its production kernels (needs a GPU)
    ///
    /// Times every variant of kernels/forward_tc_sweep.cu (tile 128x128 or 128x256, k slice 32 or
    /// 64, one or two sets of warp fragments) and the mma.sync configuration the library picks,
    /// and on Hopper every variant of kernels/forward_sm90_sweep.cu (stages, TMA-store epilogue,
    /// W multicast over clusters of 2, ping-pong consumers) after the production config of its
    /// column tile, on the suite shapes sq, up and wide in bf16 and f16 (ReLU, bias, p = 0.1),
    /// and every variant of kernels/forward_f32_sweep.cu against the SIMT production config on
    /// sq in f32 (`--family` runs a part), and checks that each variant's output is bit-identical
    /// to its production kernel's (the stream-K variants, which add a tile's partial sums in
    /// another order: each element within one unit in the last place).
    /// Prints TFLOP/s and the ratio to production.
    #[command(
        after_help = "EXIT CODES: 0 every variant bit-identical to production (stream-K: \
                            within one unit in the last place), 1 a variant differs or a \
                            launch failed, 2 bad flags (also --family or --shapes \
                            naming an item twice, or --family f32 without sq), 3 no usable GPU, \
                            driver or sweep kernels, or a family --family names cannot run here \
                            (nothing was measured). Without --family, the families that cannot \
                            run here are left out, each with a line saying why."
    )]
    Sweep(fusedrop_tools::sweep::Options),
    /// Check the performance goals of issues 10, 11 and 12, and the design targets they leave
    /// out, on the CSVs of one bench run
    ///
    /// Reads `fusedrop bench --csv` (and the PyTorch peer's CSV of the same GPU) and prints, for
    /// each goal (fused forward within 1.05 x the cuBLASLt GEMM floor on up/down/sq, faster
    /// than the unfused path and PyTorch on every bf16/f16 row, p = 0.1 within 2 % of p = 0, the
    /// backward within 1.10 x its two GEMMs, mma.sync at 450 TFLOP/s, f32 within 1.11 x SGEMM,
    /// ...; then the targets' lines: 1.00 x, the copy bandwidth of wide and small, ...), whether
    /// it is met, how many of its rows the run measured, its worst figure and the rows that miss
    /// it. A goal with a row the run did not measure, or measured on another GPU than the one it
    /// is stated for, is not met ("not measured"). "Faster" means our median under the other's
    /// fastest repetition (the CSVs' `fastest_us`), so that noise does not count.
    #[command(
        after_help = "EXIT CODES: 0 every goal met, 1 some goal not met or not measured, 2 bad \
                            arguments or a CSV that cannot be read (or rows from two GPUs or drivers, or a row twice)."
    )]
    Goals(goals::Options),
}

/// The parser, with the help texts that are computed (the bench's shape list and default
/// probabilities come from the suite's constants).
fn command() -> clap::Command {
    Cli::command().mut_subcommand("bench", |bench| {
        bench
            .after_help(bench::after_help())
            .mut_arg("p", |p| p.help(bench::p_help()))
    })
}

/// Parses `args` (the program's name first) and runs the checks that span several flags.
/// `--help` and `help` come back as errors too, of kind [`ErrorKind::DisplayHelp`].
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cmd = command();
    let cli = Cli::from_arg_matches(&cmd.try_get_matches_from_mut(args)?)?;
    // The subcommand's name, so that the error shows that command's usage line.
    let (name, checked) = match &cli.command {
        None => (None, cli.demo.check()),
        Some(Command::Demo(options)) => (Some("demo"), options.check()),
        Some(Command::Bench(options)) => (Some("bench"), options.check()),
        Some(Command::Sweep(options)) => (
            Some("sweep"),
            options.check().map_err(fusedrop_tools::flag_message),
        ),
        Some(Command::Selftest(_) | Command::Goals(_)) => (None, Ok(())),
    };
    if let Err(msg) = checked {
        return Err(match name.and_then(|name| cmd.find_subcommand_mut(name)) {
            Some(sub) => sub.error(ErrorKind::ValueValidation, msg),
            None => cmd.error(ErrorKind::ValueValidation, msg),
        });
    }
    Ok(cli)
}

/// A parser of a whole number from `min` to `max`, whose error says so whatever was wrong
/// (not a number, negative, out of range).
pub fn whole_number(
    min: usize,
    max: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |text| {
        text.trim()
            .parse()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| format!("expected a whole number from {min} to {max}"))
    }
}

/// `--seed`'s parser: any 64-bit seed, whose error says so (a negative value reaches it: the
/// flags allow negative numbers).
pub fn seed(text: &str) -> Result<u64, String> {
    text.trim()
        .parse()
        .map_err(|_| "expected a whole number from 0 to 2^64 - 1".to_string())
}

/// The program's command line, parsed; on a mistake it prints clap's message and exits with
/// code 2, on `--help` it prints the help and exits with code 0.
pub fn parse() -> Cli {
    try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::error::ErrorKind;
    use fusedrop_tools::bench::{DType, Effort, Passes};

    use super::{try_parse_from, Cli, Command};
    use crate::backend::DeviceChoice;

    fn parse(args: &[&str]) -> Cli {
        try_parse_from(std::iter::once("fusedrop").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?} was refused: {e}"))
    }

    fn refuse(args: &[&str]) -> clap::Error {
        match try_parse_from(std::iter::once("fusedrop").chain(args.iter().copied())) {
            Ok(cli) => panic!("{args:?} was accepted: {cli:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn no_command_is_the_demo_with_its_defaults() {
        let cli = parse(&[]);
        assert!(cli.command.is_none());
        let o = cli.demo;
        assert_eq!((o.epochs, o.hidden, o.p, o.seed), (100, 512, 0.7, 1));
        assert_eq!(o.device, DeviceChoice::Auto);
        assert_eq!(o.out, Path::new("out"));
        assert_eq!(o.summary_json, None);
        assert_eq!((o.train, o.val, o.batch, o.lr), (200, 600, None, 3e-3));
        // The demo's flags work without naming the command, and with it.
        assert_eq!(parse(&["--epochs", "7"]).demo.epochs, 7);
        let Some(Command::Demo(o)) = parse(&["demo", "--epochs", "7"]).command else {
            panic!("`demo` is the demo");
        };
        assert_eq!(o.epochs, 7);
    }

    #[test]
    fn values_come_after_a_space_or_an_equals_sign() {
        let o = parse(&[
            "--epochs=5",
            "--p",
            "0.25",
            "--device=gpu",
            "--batch",
            "32",
            "--summary-json=s.json",
        ])
        .demo;
        assert_eq!((o.epochs, o.p, o.batch), (5, 0.25, Some(32)));
        assert_eq!(o.device, DeviceChoice::Cuda, "gpu is another name of cuda");
        assert_eq!(o.summary_json.as_deref(), Some(Path::new("s.json")));
    }

    #[test]
    fn bad_values_are_refused_with_what_was_expected() {
        for (args, expected) in [
            (
                &["--epochs", "0"][..],
                "expected a whole number from 1 to 100000",
            ),
            (
                &["--hidden", "-3"],
                "expected a whole number from 1 to 16384",
            ),
            (
                &["--train", "ten"],
                "expected a whole number from 10 to 1500",
            ),
            (&["--p", "1"], "0 <= p < 1"),
            (&["--p", "nan"], "0 <= p < 1"),
            (&["--lr", "0"], "(0, 1]"),
            (&["--device", "tpu"], "auto, cpu, cuda"),
            (
                &["--train", "1500", "--val", "1000"],
                "at most 1797 together",
            ),
            (&["selftest", "--seed", "x"], "'x' for '--seed"),
            (
                &["bench", "--shapes", "sq,huge"],
                "expected one of up, down, sq",
            ),
            (&["bench", "--p", "0.1,2"], "a probability in [0, 1]"),
            (&["bench", "--pass", "sideways"], "forward, backward, both"),
            (
                &["bench", "--shapes", "up", "--dtypes", "f32"],
                "f32 runs on sq",
            ),
            (
                &["bench", "--shapes", "sq,up,sq"],
                "--shapes names sq twice",
            ),
            (
                &["bench", "--dtypes", "bf16,bf16"],
                "--dtypes names bf16 twice",
            ),
            (&["bench", "--p", "0.1,0,0.1"], "--p names 0.1 twice"),
            (&["bench", "--csv", "."], "is a folder"),
            (
                &["sweep", "--family", "f32", "--shapes", "up"],
                "f32 runs on",
            ),
            (&["sweep", "--family", "hopper,hopper"], "hopper twice"),
            // Negative values reach the flags' parsers, which say what was expected.
            (&["bench", "--p", "-0.5"], "a probability in [0, 1]"),
            (&["bench", "--device", "-1"], "expected a GPU ordinal"),
            (&["sweep", "--device", "-1"], "expected a GPU ordinal"),
            (&["selftest", "--gpu", "-1"], "expected a GPU ordinal"),
            (&["selftest", "--seed", "-1"], "from 0 to 2^64 - 1"),
            (&["--seed", "-1"], "from 0 to 2^64 - 1"),
            // The library's message without its "invalid argument: " prefix, names joined.
            (
                &["sweep", "--shapes", "huge"],
                "'--shapes <LIST>': unknown sweep shape \"huge\"; expected one of sq, up, wide",
            ),
            (
                &["bench", "--shapes", "huge"],
                "'--shapes <LIST>': shape \"huge\" is unknown",
            ),
        ] {
            let e = refuse(args);
            assert_eq!(e.exit_code(), 2, "{args:?}");
            let message = e.to_string();
            assert!(message.contains(expected), "{args:?}: {message}");
        }
        for (args, kind) in [
            (&["--frobnicate"][..], ErrorKind::UnknownArgument),
            (&["stray"], ErrorKind::InvalidSubcommand),
            (&["demo", "stray"], ErrorKind::UnknownArgument),
            (&["--epochs"], ErrorKind::InvalidValue),
            (&["selftest", "--quick=1"], ErrorKind::TooManyValues),
            (&["--epochs", "5", "selftest"], ErrorKind::ArgumentConflict),
        ] {
            assert_eq!(refuse(args).kind(), kind, "{args:?}");
        }
    }

    #[test]
    fn help_is_not_an_error_and_lists_what_is_computed() {
        for args in [
            &["--help"][..],
            &["help"],
            &["demo", "--help"],
            &["help", "bench"],
        ] {
            let e = refuse(args);
            assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert_eq!(e.exit_code(), 0, "{args:?}");
        }
        let bench = refuse(&["bench", "--help"]).to_string();
        assert!(bench.contains("32768 x   256 x  1024"), "{bench}");
        assert!(
            bench.contains("[default: 0.1,0,0.5; with --quick 0.1]"),
            "{bench}"
        );
        assert!(bench.contains("3 no usable GPU"), "{bench}");
    }

    #[test]
    fn selftest_flags() {
        let Some(Command::Selftest(o)) = parse(&["selftest"]).command else {
            panic!("`selftest` is the selftest");
        };
        assert!(!o.quick && !o.sanitize && !o.verbose && !o.no_hopper);
        assert_eq!((o.seed, o.gpu), (7, 0));
        let Some(Command::Selftest(o)) = parse(&[
            "selftest",
            "--quick",
            "--verbose",
            "--seed",
            "9",
            "--gpu=1",
            "--no-hopper",
        ])
        .command
        else {
            panic!("`selftest` is the selftest");
        };
        assert!(o.quick && !o.sanitize && o.verbose && o.no_hopper);
        assert_eq!((o.seed, o.gpu), (9, 1));
    }

    #[test]
    fn bench_flags_narrow_the_full_suite_or_the_quick_subset() {
        let Some(Command::Bench(o)) = parse(&["bench"]).command else {
            panic!("`bench` is the bench");
        };
        let full = o.table_options();
        assert_eq!(full.shapes.len(), 6);
        assert_eq!(full.dtypes, DType::ALL);
        assert_eq!(
            (full.passes, full.effort, full.device),
            (Passes::Both, Effort::FULL, 0)
        );
        assert!(
            full.load.hopper,
            "the Hopper kernels load unless --no-hopper"
        );

        let Some(Command::Bench(o)) = parse(&[
            "bench",
            "--quick",
            "--shapes",
            "sq, odd",
            "--p",
            "0.5,0",
            "--pass",
            "forward",
            "--device",
            "1",
            "--no-hopper",
        ])
        .command
        else {
            panic!("`bench` is the bench");
        };
        let quick = o.table_options();
        let names: Vec<_> = quick.shapes.iter().map(|s| s.name).collect();
        assert_eq!(names, ["sq", "odd"]);
        assert_eq!(quick.dtypes, [DType::Bf16, DType::F32], "--quick's dtypes");
        assert_eq!(quick.probabilities, [0.5, 0.0]);
        assert_eq!(
            (quick.passes, quick.effort, quick.device),
            (Passes::Forward, Effort::QUICK, 1)
        );
        assert!(!quick.load.hopper, "--no-hopper");
    }
}
