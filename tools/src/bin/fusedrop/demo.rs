//! `fusedrop demo`: dropout against overfitting on real data.
//!
//! Two identical MLPs (same widths, same initial weights, same batches) learn the digits data set
//! from a few hundred images; one applies dropout after each hidden layer, the other does not.
//! Every layer runs through the library (the fused CUDA kernels, or the CPU reference), and both
//! are evaluated on held-out images after every epoch. Without dropout the network memorises
//! the training images: its training loss keeps falling while its validation loss turns upward.
//! With dropout the validation loss keeps falling and ends lower.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use fusedrop::DropoutGenerator;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;

use crate::backend::{Backend, DeviceChoice};
use crate::cli::whole_number;
use crate::data::{self, CLASSES, PIXELS};
use crate::model::{Adam, Mlp, Score};
use crate::plot::{self, Axis, Panel, Series};
use crate::progress::Progress;

/// Exit code when `--device cuda` was asked for and no GPU is usable.
pub const NO_GPU_EXIT: i32 = 3;

/// The demonstration's flags (`fusedrop demo`, and `fusedrop` without a command); the defaults
/// are what `cargo run --release` runs. The numeric flags allow negative numbers so that a
/// value like `-3` reaches their parser, whose error gives the range, instead of being taken
/// for a flag.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Passes over the training images
    #[arg(long, value_name = "N", default_value_t = 100, allow_negative_numbers = true,
          value_parser = whole_number(1, 100_000))]
    pub epochs: usize,
    /// Width of both hidden layers
    #[arg(long, value_name = "H", default_value_t = 512, allow_negative_numbers = true,
          value_parser = whole_number(1, 16_384))]
    pub hidden: usize,
    /// Dropout probability of the dropout model, 0 <= P < 1
    #[arg(long, value_name = "P", default_value_t = 0.7, allow_negative_numbers = true,
          value_parser = dropout_probability)]
    pub p: f32,
    /// Seed of the split, the weights, the batches and the masks
    #[arg(
        long,
        value_name = "S",
        default_value_t = 1,
        allow_negative_numbers = true,
        value_parser = crate::cli::seed
    )]
    pub seed: u64,
    /// Where the layers run
    #[arg(long, value_name = "D", value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Where the plot and the per-epoch CSV go
    #[arg(long, value_name = "DIR", default_value = "out")]
    pub out: PathBuf,
    /// Also write the final table as JSON to PATH
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,
    /// Training images
    #[arg(long, value_name = "N", default_value_t = 200, allow_negative_numbers = true,
          value_parser = whole_number(10, 1500))]
    pub train: usize,
    /// Held-out images
    #[arg(long, value_name = "N", default_value_t = 600, allow_negative_numbers = true,
          value_parser = whole_number(10, 1787))]
    pub val: usize,
    /// Images per optimiser step [default: all training images]
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = whole_number(1, 4096))]
    pub batch: Option<usize>,
    /// Adam learning rate, 0 < LR <= 1
    #[arg(long, value_name = "LR", default_value_t = 3e-3, allow_negative_numbers = true,
          value_parser = learning_rate)]
    pub lr: f32,
}

impl Options {
    /// The check no single flag can make: the training and held-out images together must fit
    /// in the data set's 1797.
    pub fn check(&self) -> Result<(), String> {
        if self.train + self.val > 1797 {
            return Err(format!(
                "--train {} + --val {} = {} images, but the data set has 1797; expected at most \
                 1797 together",
                self.train,
                self.val,
                self.train + self.val
            ));
        }
        Ok(())
    }
}

fn dropout_probability(text: &str) -> Result<f32, String> {
    match text.trim().parse::<f32>() {
        Ok(p) if (0.0..1.0).contains(&p) => Ok(p),
        _ => Err(
            "expected a number with 0 <= p < 1 (p = 1 would drop every activation and \
             nothing could be learned)"
                .into(),
        ),
    }
}

fn learning_rate(text: &str) -> Result<f32, String> {
    match text.trim().parse::<f32>() {
        Ok(lr) if lr > 0.0 && lr <= 1.0 => Ok(lr),
        _ => Err("expected a number in (0, 1]".into()),
    }
}

/// Runs `fusedrop demo` with `options`; returns the exit code.
pub fn run(options: &Options) -> i32 {
    let (backend, note) = match Backend::open(options.device) {
        Ok(opened) => opened,
        Err(e) => {
            eprintln!("fusedrop demo: --device cuda was asked for, but no GPU is usable: {e}");
            return NO_GPU_EXIT;
        }
    };
    if let Some(note) = note {
        eprintln!("fusedrop demo: {note}");
    }
    match demo(options, &backend) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fusedrop demo: {e}");
            1
        }
    }
}

/// One of the two models being trained, with its history.
struct Run {
    name: &'static str,
    p: f32,
    model: Mlp,
    adam: Adam,
    masks: DropoutGenerator,
    history: Vec<(Score, Score)>,
}

impl Run {
    fn label(&self) -> String {
        format!("{} (p = {})", self.name, self.p)
    }

    /// One pass over the training images in `order`, then evaluation with dropout off.
    fn epoch(
        &mut self,
        backend: &Backend,
        split: &data::Split,
        order: &[usize],
        batch: usize,
    ) -> fusedrop::Result<(Score, Score)> {
        for chunk in order.chunks(batch) {
            let images = split.train.select(chunk);
            self.model.train_step(
                backend,
                &mut self.adam,
                &images.x,
                &images.labels,
                &mut self.masks,
                self.p,
            )?;
        }
        let scores = (
            self.model.evaluate(backend, &split.train)?,
            self.model.evaluate(backend, &split.val)?,
        );
        self.history.push(scores);
        Ok(scores)
    }

    /// The lowest validation loss and its epoch (1-based).
    fn best_val(&self) -> (f64, usize) {
        self.history
            .iter()
            .enumerate()
            .map(|(i, (_, val))| (val.loss, i + 1))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((f64::NAN, 0))
    }
}

fn demo(o: &Options, backend: &Backend) -> Result<(), String> {
    let start = Instant::now();
    let all = data::load()?;
    let split = data::split(&all, o.train, o.val, o.seed)?;
    let sizes = [PIXELS, o.hidden, o.hidden, CLASSES];
    let initial = Mlp::new(&sizes, o.seed);
    let new_run = |name, p| Run {
        name,
        p,
        adam: Adam::new(&initial, o.lr),
        model: initial.clone(),
        // Both models draw masks from the same (seed, subsequence) sequence; only p differs.
        masks: DropoutGenerator::new(o.seed),
        history: Vec::with_capacity(o.epochs),
    };
    let mut runs = [new_run("plain", 0.0), new_run("dropout", o.p)];
    let batch = o.batch.unwrap_or(split.train.len()).min(split.train.len());
    let batch_text = if batch == split.train.len() {
        format!("full batch ({batch} images)")
    } else {
        format!("batch {batch}")
    };

    println!("fusedrop demo: dropout against overfitting on handwritten digits");
    println!("  backend  {}", backend.describe());
    println!(
        "  data     UCI digits (8x8): {} training and {} held-out images, split by seed {}",
        split.train.len(),
        split.val.len(),
        o.seed
    );
    println!(
        "  model    64 -> {h} -> {h} -> 10 MLP, ReLU; dropout p = {} after each hidden layer in \
         the dropout model, none in the plain one; same initial weights",
        o.p,
        h = o.hidden
    );
    println!(
        "  training Adam lr {}, {batch_text}, {} epochs, softmax cross-entropy; evaluation with \
         p = 0",
        o.lr, o.epochs
    );

    let mut progress = Progress::new(o.epochs);
    progress.update(0, "");
    let mut batches = StdRng::seed_from_u64(o.seed ^ 0x0BA7_C4E5);
    let mut order: Vec<usize> = (0..split.train.len()).collect();
    for epoch in 1..=o.epochs {
        order.shuffle(&mut batches);
        let results: Vec<fusedrop::Result<(Score, Score)>> = if backend.parallel() {
            let (split, order) = (&split, &order);
            std::thread::scope(|scope| {
                let handles: Vec<_> = runs
                    .iter_mut()
                    .map(|run| scope.spawn(move || run.epoch(backend, split, order, batch)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a training thread panicked"))
                    .collect()
            })
        } else {
            runs.iter_mut()
                .map(|run| run.epoch(backend, &split, &order, batch))
                .collect()
        };
        let mut status = String::from("val loss");
        for (run, result) in runs.iter().zip(results) {
            let (_, val) = result.map_err(|e| format!("training {} failed: {e}", run.name))?;
            status.push_str(&format!("  {} {:.4}", run.name, val.loss));
        }
        progress.update(epoch, &status);
    }
    let elapsed = start.elapsed().as_secs_f64();

    println!();
    print!("{}", table(&runs));
    println!();
    for run in &runs {
        println!("  {}", verdict(run));
    }

    std::fs::create_dir_all(&o.out)
        .map_err(|e| format!("cannot create the output folder {}: {e}", o.out.display()))?;
    let plot_path = o.out.join("demo-loss.svg");
    let title = format!(
        "Dropout against overfitting: 64-{h}-{h}-10 MLP on UCI handwritten digits",
        h = o.hidden
    );
    let subtitle = format!(
        "{} training / {} held-out images, {} epochs, Adam lr {}, {batch_text}, seed {}, {} \
         backend",
        split.train.len(),
        split.val.len(),
        o.epochs,
        o.lr,
        o.seed,
        backend.short_name()
    );
    write_file(&plot_path, svg(&runs, &title, &subtitle))?;
    let csv_path = o.out.join("demo-history.csv");
    write_file(&csv_path, history_csv(&runs)?)?;
    println!();
    println!("plot:    {}", plot_path.display());
    println!("history: {}", csv_path.display());
    if let Some(path) = &o.summary_json {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create the folder {}: {e}", parent.display()))?;
        }
        write_file(path, summary_json(&runs, backend)?)?;
        println!("summary: {}", path.display());
    }
    println!(
        "time:    {elapsed:.1} s on the {} backend",
        backend.short_name()
    );
    Ok(())
}

fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn table(runs: &[Run]) -> String {
    let mut out = format!(
        "{:<20} {:>10} {:>9} {:>9} {:>8} {:>15}\n",
        "model", "train loss", "train acc", "val loss", "val acc", "best val (ep.)"
    );
    for run in runs {
        let (train, val) = run.history.last().copied().unwrap_or((
            Score {
                loss: f64::NAN,
                accuracy: f64::NAN,
            },
            Score {
                loss: f64::NAN,
                accuracy: f64::NAN,
            },
        ));
        let (best, epoch) = run.best_val();
        out.push_str(&format!(
            "{:<20} {:>10} {:>8.1}% {:>9.4} {:>7.1}% {:>9.4} ({:>3})\n",
            run.label(),
            loss_text(train.loss),
            100.0 * train.accuracy,
            val.loss,
            100.0 * val.accuracy,
            best,
            epoch
        ));
    }
    out
}

/// One sentence on how the run's validation loss moved.
fn verdict(run: &Run) -> String {
    let (best, epoch) = run.best_val();
    let Some((train, val)) = run.history.last() else {
        return format!("{}: no epochs", run.name);
    };
    let rise = 100.0 * (val.loss / best - 1.0);
    format!(
        "{}: validation loss lowest {best:.4} at epoch {epoch}, final {:.4} ({rise:+.0}% from \
         its lowest); training loss final {}",
        run.label(),
        val.loss,
        loss_text(train.loss)
    )
}

/// A loss for the table: four decimals, or two significant digits once it is below 0.001.
fn loss_text(loss: f64) -> String {
    if loss < 1e-3 {
        format!("{loss:.1e}")
    } else {
        format!("{loss:.4}")
    }
}

fn svg(runs: &[Run], title: &str, subtitle: &str) -> String {
    let colors = ["#d62728", "#1f77b4"];
    let curves: Vec<(String, Vec<f64>, Vec<f64>, &'static str)> = runs
        .iter()
        .zip(colors)
        .map(|(run, color)| {
            (
                run.label(),
                run.history.iter().map(|(t, _)| t.loss).collect(),
                run.history.iter().map(|(_, v)| v.loss).collect(),
                color,
            )
        })
        .collect();
    let epochs = runs.iter().map(|r| r.history.len()).max().unwrap_or(0);
    let train = Panel {
        title: "Training loss (log scale)".into(),
        y_label: "cross-entropy on the training images".into(),
        axis: Axis::Log,
        series: curves
            .iter()
            .map(|(label, train, _, color)| Series {
                label: format!("{label}: training"),
                color,
                dashed: true,
                mark_minimum: false,
                values: train,
            })
            .collect(),
    };
    let val = Panel {
        title: "Validation loss".into(),
        y_label: "cross-entropy on the held-out images".into(),
        axis: Axis::LinearFromZero { skip: epochs / 4 },
        series: curves
            .iter()
            .map(|(label, _, val, color)| Series {
                label: format!("{label}: validation"),
                color,
                dashed: false,
                mark_minimum: true,
                values: val,
            })
            .collect(),
    };
    plot::figure(title, subtitle, &[train, val])
}

/// One line of the per-epoch history CSV (the field names are its header).
#[derive(Serialize)]
struct HistoryRecord {
    model: &'static str,
    p: f32,
    epoch: usize,
    train_loss: f64,
    train_acc: f64,
    val_loss: f64,
    val_acc: f64,
}

fn history_csv(runs: &[Run]) -> Result<Vec<u8>, String> {
    let mut csv = csv::Writer::from_writer(Vec::new());
    for run in runs {
        for (i, (train, val)) in run.history.iter().enumerate() {
            csv.serialize(HistoryRecord {
                model: run.name,
                p: run.p,
                epoch: i + 1,
                train_loss: train.loss,
                train_acc: train.accuracy,
                val_loss: val.loss,
                val_acc: val.accuracy,
            })
            .map_err(|e| format!("cannot format the history CSV: {e}"))?;
        }
    }
    csv.into_inner()
        .map_err(|e| format!("cannot format the history CSV: {e}"))
}

/// One model's line of the `--summary-json` list. serde_json writes a NaN or infinite loss as
/// `null`, which JSON can express.
#[derive(Serialize)]
struct SummaryRecord {
    model: &'static str,
    p: f32,
    backend: &'static str,
    epochs: usize,
    train_loss: f64,
    train_acc: f64,
    val_loss: f64,
    val_acc: f64,
    best_val_loss: f64,
    best_val_epoch: usize,
}

fn summary_json(runs: &[Run], backend: &Backend) -> Result<String, String> {
    let rows: Vec<SummaryRecord> = runs
        .iter()
        .filter_map(|run| {
            let (train, val) = run.history.last()?;
            let (best, epoch) = run.best_val();
            Some(SummaryRecord {
                model: run.name,
                p: run.p,
                backend: backend.short_name(),
                epochs: run.history.len(),
                train_loss: train.loss,
                train_acc: train.accuracy,
                val_loss: val.loss,
                val_acc: val.accuracy,
                best_val_loss: best,
                best_val_epoch: epoch,
            })
        })
        .collect();
    serde_json::to_string_pretty(&rows)
        .map(|json| json + "\n")
        .map_err(|e| format!("cannot format the summary JSON: {e}"))
}
