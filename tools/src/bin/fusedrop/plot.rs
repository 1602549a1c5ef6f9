//! Hand-written SVG line plots: a figure of side-by-side panels, each with epochs on x and a
//! linear or logarithmic y axis. The demo puts the training losses on a log axis (they fall by
//! orders of magnitude) and the validation losses on a linear axis from zero (they move by tens
//! of percent, which is the whole point).
//!
//! Not plotters: plotters 0.3.7 moves every point outside the plotting area onto its edge
//! (`Rect::truncate`; plotters issues 429 and 689) instead of clipping the line as the
//! `clipPath` here does, which would flatten and bend the start of the validation curves, where
//! the linear axis cuts off the first epochs.

use std::fmt::Write;

/// One curve of a panel.
pub struct Series<'a> {
    /// The legend text.
    pub label: String,
    /// An SVG colour.
    pub color: &'static str,
    /// Dashed or solid.
    pub dashed: bool,
    /// Whether to mark the curve's minimum with a dot.
    pub mark_minimum: bool,
    /// One value per epoch, epoch 1 first.
    pub values: &'a [f64],
}

/// The y axis of a panel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Axis {
    /// Logarithmic, spanning whole decades around the positive values.
    Log,
    /// Linear from 0 to a round number above the values from `skip` epochs on (the first epochs,
    /// before anything is learned, may run off the top and are clipped).
    LinearFromZero {
        /// Epochs left out when choosing the top of the axis.
        skip: usize,
    },
}

/// One panel of a figure.
pub struct Panel<'a> {
    /// The panel's heading.
    pub title: String,
    /// The y axis label.
    pub y_label: String,
    /// The y axis kind.
    pub axis: Axis,
    /// The curves.
    pub series: Vec<Series<'a>>,
}

const PANEL_W: f64 = 470.0;
const PANEL_H: f64 = 420.0;
const HEADER: f64 = 56.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 44.0;

/// The SVG document of `panels` side by side under `title` and `subtitle`.
pub fn figure(title: &str, subtitle: &str, panels: &[Panel<'_>]) -> String {
    let width = PANEL_W * panels.len().max(1) as f64;
    let height = HEADER + PANEL_H;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="24" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="16" y="44" fill="#555">{}</text>"##,
        escape(subtitle)
    );
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut svg, i, PANEL_W * i as f64, HEADER, panel);
    }
    svg.push_str("</svg>\n");
    svg
}

/// The value range of the y axis and the tick values, for `axis` and the curves' values.
fn y_range(axis: Axis, series: &[Series<'_>]) -> (f64, f64, Vec<f64>) {
    let values = |skip: usize| {
        series
            .iter()
            .flat_map(move |s| s.values.iter().skip(skip).copied())
            .filter(|v| v.is_finite())
    };
    match axis {
        Axis::Log => {
            let lo = values(0).filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
            let hi = values(0).fold(0.0, f64::max);
            let (lo, hi) = if lo.is_finite() && hi > 0.0 {
                let lo = lo.log10().floor();
                (lo, hi.log10().ceil().max(lo + 1.0))
            } else {
                (-1.0, 1.0)
            };
            let mut ticks = Vec::new();
            for decade in lo as i32..hi as i32 {
                for mantissa in [1.0, 2.0, 5.0] {
                    ticks.push(mantissa * 10f64.powi(decade));
                }
            }
            ticks.push(10f64.powf(hi));
            (10f64.powf(lo), 10f64.powf(hi), ticks)
        }
        Axis::LinearFromZero { skip } => {
            let longest = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
            let hi = values(skip.min(longest.saturating_sub(1))).fold(0.0, f64::max);
            let hi = if hi > 0.0 { hi * 1.15 } else { 1.0 };
            let step = nice_step(hi / 5.0);
            let top = (hi / step).ceil() * step;
            let ticks = (0..=(top / step).round() as usize)
                .map(|i| i as f64 * step)
                .collect();
            (0.0, top, ticks)
        }
    }
}

fn draw_panel(svg: &mut String, index: usize, x0: f64, y0: f64, panel: &Panel<'_>) {
    let epochs = panel
        .series
        .iter()
        .map(|s| s.values.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let (lo, hi, ticks) = y_range(panel.axis, &panel.series);
    let left = x0 + LEFT;
    let top = y0 + TOP;
    let plot_w = PANEL_W - LEFT - RIGHT;
    let plot_h = PANEL_H - TOP - BOTTOM;
    let x_of = |epoch: f64| left + (epoch - 1.0) / (epochs as f64 - 1.0) * plot_w;
    let y_of = |v: f64| match panel.axis {
        Axis::Log => top + (hi.log10() - v.log10()) / (hi.log10() - lo.log10()) * plot_h,
        Axis::LinearFromZero { .. } => top + (hi - v) / (hi - lo) * plot_h,
    };
    let clip = format!("plot-area-{index}");
    let _ = writeln!(
        svg,
        r#"<clipPath id="{clip}"><rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/></clipPath>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        left + plot_w / 2.0,
        top - 10.0,
        escape(&panel.title)
    );

    for (i, &v) in ticks.iter().enumerate() {
        let y = y_of(v);
        let major = panel.axis != Axis::Log || i % 3 == 0;
        let stroke = if major { "#c8c8c8" } else { "#ececec" };
        let _ = writeln!(
            svg,
            r#"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}"/>"#,
            left + plot_w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y + 4.0,
            tick_label(v)
        );
    }
    let step = nice_step(epochs as f64 / 6.0).max(1.0);
    let mut epoch = step;
    while epoch <= epochs as f64 + 1e-9 {
        let x = x_of(epoch);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#f0f0f0"/>"##,
            top + plot_h
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{epoch}</text>"#,
            top + plot_h + 16.0
        );
        epoch += step;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">epoch</text>"#,
        left + plot_w / 2.0,
        top + plot_h + 34.0
    );
    let label_x = x0 + 16.0;
    let label_y = top + plot_h / 2.0;
    let _ = writeln!(
        svg,
        r#"<text x="{label_x:.1}" y="{label_y:.1}" text-anchor="middle" transform="rotate(-90 {label_x:.1} {label_y:.1})">{}</text>"#,
        escape(&panel.y_label)
    );

    for s in &panel.series {
        let usable = |v: f64| v.is_finite() && (panel.axis != Axis::Log || v > 0.0);
        let points: Vec<String> = s
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| usable(**v))
            .map(|(i, &v)| format!("{:.1},{:.1}", x_of(i as f64 + 1.0), y_of(v)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<polyline clip-path="url(#{clip})" fill="none" stroke="{}" stroke-width="2"{dash} points="{}"><title>{}</title></polyline>"#,
            s.color,
            points.join(" "),
            escape(&s.label)
        );
        if s.mark_minimum {
            let best = s
                .values
                .iter()
                .enumerate()
                .filter(|(_, v)| usable(**v))
                .min_by(|a, b| a.1.total_cmp(b.1));
            if let Some((i, &v)) = best {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}"><title>lowest: {v:.4} at epoch {}</title></circle>"#,
                    x_of(i as f64 + 1.0),
                    y_of(v),
                    s.color,
                    i + 1
                );
            }
        }
    }

    let legend_w = 230.0;
    let legend_x = left + plot_w - legend_w - 8.0;
    let legend_y = top + 8.0;
    let marked = panel.series.iter().any(|s| s.mark_minimum);
    let rows = panel.series.len() + usize::from(marked);
    let _ = writeln!(
        svg,
        r##"<rect x="{legend_x:.1}" y="{legend_y:.1}" width="{legend_w}" height="{:.1}" fill="white" fill-opacity="0.9" stroke="#999"/>"##,
        8.0 + 18.0 * rows as f64
    );
    for (i, s) in panel.series.iter().enumerate() {
        let y = legend_y + 16.0 + 18.0 * i as f64;
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"{dash}/>"#,
            legend_x + 8.0,
            legend_x + 36.0,
            s.color
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            legend_x + 44.0,
            y + 4.0,
            escape(&s.label)
        );
    }
    if marked {
        let y = legend_y + 16.0 + 18.0 * panel.series.len() as f64;
        let _ = writeln!(
            svg,
            r##"<circle cx="{:.1}" cy="{y:.1}" r="4" fill="#666"/><text x="{:.1}" y="{:.1}">lowest value</text>"##,
            legend_x + 22.0,
            legend_x + 44.0,
            y + 4.0
        );
    }
}

/// The smallest of 1, 2 or 5 times a power of ten that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * power)
}

/// A tick label without trailing zeros: 0.00002, 0.05, 0.1, 0.25, 1, 20.
fn tick_label(v: f64) -> String {
    let text = format!("{v:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" {
        "0".into()
    } else {
        text.into()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps_are_one_two_five_times_a_power_of_ten() {
        assert_eq!(nice_step(0.07), 0.1);
        assert_eq!(nice_step(0.1), 0.1);
        assert_eq!(nice_step(0.13), 0.2);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(26.0), 50.0);
    }

    #[test]
    fn tick_labels_drop_trailing_zeros() {
        assert_eq!(tick_label(0.00002), "0.00002");
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(20.0), "20");
        assert_eq!(tick_label(0.0), "0");
    }

    #[test]
    fn figure_escapes_text_and_draws_every_curve() {
        let a = [2.0, 1.0, 0.5];
        let b = [2.0, 0.1, 0.01];
        let panel = |axis| Panel {
            title: "t<1>".into(),
            y_label: "loss".into(),
            axis,
            series: vec![
                Series {
                    label: "a & b".into(),
                    color: "red",
                    dashed: false,
                    mark_minimum: true,
                    values: &a,
                },
                Series {
                    label: "c".into(),
                    color: "blue",
                    dashed: true,
                    mark_minimum: false,
                    values: &b,
                },
            ],
        };
        let svg = figure(
            "x",
            "y",
            &[panel(Axis::Log), panel(Axis::LinearFromZero { skip: 1 })],
        );
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("a &amp; b") && svg.contains("t&lt;1&gt;"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
