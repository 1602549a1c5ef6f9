//! The fusedrop command-line tool.
//!
//! - `fusedrop demo` (the default): dropout against overfitting on the digits data set.
//! - `fusedrop selftest`: the GPU kernels against the CPU reference.
//! - `fusedrop bench`: the kernels' timings against cuBLASLt and the unfused baseline.
//! - `fusedrop sweep`: the forward's tuning variants (mma.sync, Hopper, f32) against the
//!   production kernels.
//! - `fusedrop goals`: the performance issues' goals, and the design targets they leave out,
//!   checked on a bench run's CSVs.
//! - `fusedrop help`: the commands.
//!
//! The command line is parsed by clap ([`cli`]); a usage error prints clap's message (what was
//! wrong, what was expected) and exits with code 2.

mod backend;
mod bench;
mod cli;
mod data;
mod demo;
mod goals;
mod model;
mod plot;
mod progress;
mod selftest;

use cli::Command;

fn main() {
    let cli = cli::parse();
    let code = match cli.command {
        None => demo::run(&cli.demo),
        Some(Command::Demo(options)) => demo::run(&options),
        Some(Command::Selftest(options)) => selftest::run(&options),
        Some(Command::Bench(options)) => bench::run(&options),
        Some(Command::Sweep(options)) => fusedrop_tools::sweep::run(&options),
        Some(Command::Goals(options)) => goals::run(&options),
    };
    std::process::exit(code);
}
