//! The fusedrop command-line tool.
//!
//! - `fusedrop demo` (the default): dropout against overfitting on the digits data set.
//! - `fusedrop selftest`: the GPU kernels against the CPU reference.
//! - `fusedrop bench`: the kernels' timings against cuBLASLt and the unfused baseline.
//! - `fusedrop help`: the commands.

mod args;
mod backend;
mod bench;
mod data;
mod demo;
mod model;
mod plot;
mod progress;
mod selftest;

fn usage() -> String {
    "fusedrop: fused Linear + ReLU + dropout CUDA kernels, and what they are for

USAGE:
    fusedrop [COMMAND] [FLAGS]

COMMANDS:
    demo       train two MLPs on handwritten digits, with and without dropout, and plot their
               training and validation losses (the default when no command is given)
    selftest   check the GPU kernels against the CPU reference (exit 0 pass, 1 fail, 3 no GPU)
    bench      time the fused kernels against cuBLASLt and the unfused baseline (needs a GPU)
    help       this text

Run `fusedrop COMMAND --help` for a command's flags."
        .to_string()
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let code = match argv.first().map(String::as_str) {
        None => demo::run(&[]),
        Some(flag) if flag.starts_with("--") && flag != "--help" => demo::run(&argv),
        Some("demo") => demo::run(&argv[1..]),
        Some("selftest") => selftest::run(&argv[1..]),
        Some("bench") => bench::run(&argv[1..]),
        Some("help" | "--help" | "-h") => {
            println!("{}", usage());
            0
        }
        Some(other) => {
            eprintln!(
                "fusedrop: unknown command '{other}'; expected one of: demo, selftest, bench, help\n\
                 run `fusedrop help` for the commands"
            );
            args::USAGE_EXIT
        }
    };
    std::process::exit(code);
}
