//! The demo's progress on stderr. On a terminal, an indicatif bar redrawn in place. Elsewhere (a
//! pipe, a log file, a test) indicatif draws nothing, so a plain line is printed at every tenth
//! of the work instead: logs keep the course of the validation loss.

use std::io::Write;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `total` epochs.
pub struct Progress {
    bar: ProgressBar,
    total: usize,
    last_tenth: usize,
}

impl Progress {
    /// A bar for `total` epochs, started now.
    pub fn new(total: usize) -> Self {
        let total = total.max(1);
        let style =
            ProgressStyle::with_template("[{bar:30}] {pos:>3}/{len} epochs {elapsed:>4}  {msg}")
                .expect("the template is valid")
                .progress_chars("=> ");
        Self {
            bar: ProgressBar::new(total as u64).with_style(style),
            total,
            last_tenth: 0,
        }
    }

    /// Shows that `done` epochs are finished, with a short status text after the bar.
    pub fn update(&mut self, done: usize, status: &str) {
        let done = done.min(self.total);
        self.bar.set_position(done as u64);
        self.bar.set_message(status.to_string());
        if self.bar.is_hidden() {
            let tenth = done * 10 / self.total;
            if tenth > self.last_tenth || done == self.total {
                self.last_tenth = tenth;
                let mut err = std::io::stderr().lock();
                let _ = writeln!(
                    err,
                    "{done:>width$}/{} epochs {:5.1}s  {status}",
                    self.total,
                    self.bar.elapsed().as_secs_f64(),
                    width = self.total.to_string().len()
                );
            }
        }
        if done == self.total {
            self.bar.finish();
        }
    }
}
