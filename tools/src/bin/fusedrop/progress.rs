//! A progress bar on stderr. On a terminal it redraws one line in place; otherwise (a pipe, a
//! log file, a test) it prints a plain line at every tenth of the work, so logs stay readable.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// A bar counting `total` steps.
pub struct Progress {
    total: usize,
    start: Instant,
    terminal: bool,
    last_tenth: usize,
}

const WIDTH: usize = 30;

impl Progress {
    /// A bar for `total` steps, started now.
    pub fn new(total: usize) -> Self {
        Self {
            total: total.max(1),
            start: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            last_tenth: 0,
        }
    }

    /// Shows that `done` steps are finished, with a short status text after the bar.
    pub fn update(&mut self, done: usize, status: &str) {
        let done = done.min(self.total);
        let elapsed = self.start.elapsed().as_secs_f64();
        let filled = done * WIDTH / self.total;
        let bar: String = (0..WIDTH)
            .map(|i| {
                if i < filled {
                    '='
                } else if i == filled && done < self.total {
                    '>'
                } else {
                    ' '
                }
            })
            .collect();
        let line = format!(
            "[{bar}] {done:>width$}/{} epochs {elapsed:5.1}s  {status}",
            self.total,
            width = self.total.to_string().len()
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            // \x1b[K clears what a longer previous line left behind.
            let _ = write!(err, "\r{line}\x1b[K");
            if done == self.total {
                let _ = writeln!(err);
            }
        } else {
            let tenth = done * 10 / self.total;
            if tenth > self.last_tenth || done == self.total {
                self.last_tenth = tenth;
                let _ = writeln!(err, "{line}");
            }
        }
        let _ = err.flush();
    }
}
