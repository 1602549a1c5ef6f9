//! `fusedrop goals`: the performance issues' "done when" figures, and the design targets they
//! leave out, checked against the CSVs of one run (fusedrop_tools::goals).
//!
//! Exit codes: 0 every goal met; 1 some goal not met or not measured; 2 bad arguments or a CSV
//! that cannot be read.

use std::path::PathBuf;

use clap::Args;
use fusedrop_tools::goals::{check_files, format_goals, Origin, Verdict};

/// Exit code: a CSV could not be read, or its rows come from more than one GPU.
const EXIT_BAD_INPUT: i32 = 2;

/// The command's arguments.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// CSV files of one run on one GPU: `fusedrop bench --csv`'s and, for the PyTorch
    /// comparisons, the peer's (tools/benches/peers/torch_peer.py --csv)
    #[arg(value_name = "CSV", required = true)]
    csv: Vec<PathBuf>,
}

/// Runs `fusedrop goals`; returns the exit code.
pub fn run(options: &Options) -> i32 {
    let goals = match check_files(&options.csv) {
        Ok(goals) => goals,
        Err(e) => {
            eprintln!("fusedrop goals: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    print!("{}", format_goals(&goals));
    let met = |of_issues: bool| {
        let counted = goals
            .iter()
            .filter(|g| matches!(g.origin, Origin::Issue(_)) == of_issues);
        let (met, all) = counted.fold((0, 0), |(met, all), g| {
            (met + usize::from(g.verdict() == Verdict::Met), all + 1)
        });
        (met, all)
    };
    let (issues_met, issues) = met(true);
    let (targets_met, targets) = met(false);
    println!(
        "{} of {} goals met ({issues_met} of the issues' {issues}, {targets_met} of the other \
         targets' {targets})",
        issues_met + targets_met,
        issues + targets
    );
    i32::from(issues_met + targets_met < issues + targets)
}
