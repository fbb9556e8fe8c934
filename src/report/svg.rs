//! Small self-contained SVG charts (no scripts, no external assets): lines
//! over steps, markers against a parameter, parallel coordinates and
//! confusion matrices. Axes are linear, log10 or categorical; ticks are
//! "nice" numbers (1, 2, 2.5 or 5 times a power of ten, or the powers of ten
//! on a log axis) whose labels are never repeated. Charts scale to the width
//! of the page.

use std::fmt::Write;

/// Line colours, in series order.
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

const WIDTH: f64 = 960.0;
const PLOT_HEIGHT: f64 = 320.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 32.0;
const BOTTOM: f64 = 48.0;
/// Height of one legend row under the chart.
const LEGEND_ROW: f64 = 16.0;

/// One named line of `(x, y)` points; non-finite points are skipped.
pub struct Series<'a> {
    /// Legend label.
    pub name: &'a str,
    /// The points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// How values map to a chart's extent.
#[derive(Debug, Clone, PartialEq)]
pub enum Axis {
    /// Numbers on a linear scale from `lo` to `hi`.
    Linear {
        /// The low end.
        lo: f64,
        /// The high end.
        hi: f64,
    },
    /// Positive numbers on a log10 scale from `lo` to `hi`.
    Log {
        /// The low end (positive).
        lo: f64,
        /// The high end.
        hi: f64,
    },
    /// Named values, evenly spaced in this order; a value is its index.
    Categories(Vec<String>),
}

impl Axis {
    /// A linear axis over `values` (finite ones), a little wider than they
    /// are; never empty, even for a single value.
    pub fn linear(values: impl IntoIterator<Item = f64>) -> Axis {
        let (lo, hi) = bounds(values);
        if !lo.is_finite() {
            return Axis::Linear { lo: 0.0, hi: 1.0 };
        }
        if hi - lo <= lo.abs().max(hi.abs()) * 1e-12 {
            let pad = if lo.abs() > 1e-12 { lo.abs() * 0.1 } else { 1.0 };
            return Axis::Linear {
                lo: lo - pad,
                hi: hi + pad,
            };
        }
        let pad = (hi - lo) * 0.05;
        Axis::Linear {
            lo: lo - pad,
            hi: hi + pad,
        }
    }

    /// A log10 axis over positive `values`, from the decade below the least
    /// to the decade above the greatest when they span less than one.
    pub fn log(values: impl IntoIterator<Item = f64>) -> Axis {
        let (lo, hi) = bounds(values.into_iter().filter(|v| *v > 0.0));
        if !lo.is_finite() {
            return Axis::Log { lo: 1.0, hi: 10.0 };
        }
        let (mut a, mut b) = (lo.log10(), hi.log10());
        let pad = ((b - a) * 0.05).max(0.05);
        a -= pad;
        b += pad;
        Axis::Log {
            lo: 10f64.powf(a),
            hi: 10f64.powf(b),
        }
    }

    /// Where `value` falls, from 0 (low end) to 1.
    pub fn fraction(&self, value: f64) -> f64 {
        match self {
            Axis::Linear { lo, hi } => (value - lo) / (hi - lo),
            Axis::Log { lo, hi } => (value.log10() - lo.log10()) / (hi.log10() - lo.log10()),
            Axis::Categories(names) => (value + 0.5) / names.len().max(1) as f64,
        }
    }

    /// Tick values and their labels.
    pub fn ticks(&self) -> Vec<(f64, String)> {
        match self {
            Axis::Linear { lo, hi } => labelled(nice_ticks(*lo, *hi)),
            Axis::Log { lo, hi } => labelled(log_ticks(*lo, *hi)),
            Axis::Categories(names) => names.iter().enumerate().map(|(i, n)| (i as f64, n.clone())).collect(),
        }
    }
}

/// `(min, max)` of the finite values; `(inf, -inf)` when there are none.
fn bounds(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// Four to seven ticks at multiples of 1, 2, 2.5 or 5 times a power of ten.
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 6.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Powers of ten between `lo` and `hi`, with 2x and 5x between them when
/// fewer than three decades fit.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let decades = hi.log10() - lo.log10();
    let multiples: &[f64] = if decades < 3.0 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    let mut ticks = Vec::new();
    for exponent in a..=b {
        for m in multiples {
            let v = m * 10f64.powi(exponent);
            if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                ticks.push(v);
            }
        }
    }
    ticks
}

/// Labels for tick values: as few digits as keep every label distinct.
fn labelled(ticks: Vec<f64>) -> Vec<(f64, String)> {
    for digits in 0..12 {
        let labels: Vec<String> = ticks.iter().map(|&v| number(v, digits)).collect();
        let mut sorted = labels.clone();
        sorted.dedup();
        if sorted.len() == labels.len() {
            return ticks.into_iter().zip(labels).collect();
        }
    }
    ticks.into_iter().map(|v| (v, format!("{v:e}"))).collect()
}

/// `v` with `digits` significant decimals past its leading one when written
/// in scientific form (below 1e-3 or from 1e5), else plain with up to
/// enough decimals; trailing zeros trimmed.
fn number(v: f64, digits: usize) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e5).contains(&a) {
        let text = format!("{v:.digits$e}");
        let (mantissa, exponent) = text.split_once('e').expect("scientific form has an exponent");
        let mantissa = if mantissa.contains('.') {
            mantissa.trim_end_matches('0').trim_end_matches('.')
        } else {
            mantissa
        };
        return format!("{mantissa}e{exponent}");
    }
    let decimals = digits + (-a.log10().floor()).max(0.0) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// The frame of one chart: plot area, axes, ticks and labels.
struct Frame {
    svg: String,
    x: Axis,
    y: Axis,
}

impl Frame {
    fn new(title: &str, x: Axis, x_label: &str, y: Axis, y_label: &str, legend_rows: usize) -> Frame {
        let mut svg = open_svg(title, PLOT_HEIGHT + LEGEND_ROW * legend_rows as f64);
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            WIDTH - LEFT - RIGHT,
            PLOT_HEIGHT - TOP - BOTTOM
        );
        let mut frame = Frame { svg, x, y };
        let mut svg = String::new();
        for (value, label) in frame.x.ticks() {
            let sx = frame.sx(value);
            let _ = write!(
                svg,
                r##"<line x1="{sx:.1}" x2="{sx:.1}" y1="{TOP}" y2="{:.1}" stroke="#eee"/><text x="{sx:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}</text>"##,
                PLOT_HEIGHT - BOTTOM,
                PLOT_HEIGHT - BOTTOM + 16.0,
                escape(&label)
            );
        }
        for (value, label) in frame.y.ticks() {
            let sy = frame.sy(value);
            let _ = write!(
                svg,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{sy:.1}" y2="{sy:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                sy + 4.0,
                escape(&label)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (LEFT + WIDTH - RIGHT) / 2.0,
            PLOT_HEIGHT - 10.0,
            escape(x_label)
        );
        let mid = (TOP + PLOT_HEIGHT - BOTTOM) / 2.0;
        let _ = write!(
            svg,
            r#"<text x="16" y="{mid}" text-anchor="middle" transform="rotate(-90 16 {mid})">{}</text>"#,
            escape(y_label)
        );
        frame.svg.push_str(&svg);
        frame
    }

    fn sx(&self, x: f64) -> f64 {
        LEFT + self.x.fraction(x) * (WIDTH - LEFT - RIGHT)
    }

    fn sy(&self, y: f64) -> f64 {
        PLOT_HEIGHT - BOTTOM - self.y.fraction(y) * (PLOT_HEIGHT - TOP - BOTTOM)
    }

    /// A legend row under the plot.
    fn legend(&mut self, row: usize, colour: &str, marker: bool, name: &str) {
        let y = PLOT_HEIGHT + LEGEND_ROW * row as f64 - 4.0;
        if marker {
            let _ = write!(
                self.svg,
                r#"<circle cx="{}" cy="{}" r="4" fill="{colour}"/>"#,
                LEFT + 5.0,
                y - 4.0
            );
        } else {
            let _ = write!(
                self.svg,
                r#"<rect x="{LEFT}" y="{}" width="12" height="3" fill="{colour}"/>"#,
                y - 6.0
            );
        }
        let _ = write!(self.svg, r#"<text x="{}" y="{y}">{}</text>"#, LEFT + 18.0, escape(name));
    }

    fn finish(mut self) -> String {
        self.svg.push_str("</svg>");
        self.svg
    }
}

/// The opening of a chart as wide as the page, `height` tall, with its title.
fn open_svg(title: &str, height: f64) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="100%" font-family="sans-serif" font-size="12"><text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    )
}

fn no_data(title: &str) -> String {
    format!(
        r#"{}<text x="{}" y="56" text-anchor="middle">no data</text></svg>"#,
        open_svg(title, 80.0),
        WIDTH / 2.0
    )
}

/// Lines over a linear x axis (steps), one per series, legend underneath.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let points: Vec<&(f64, f64)> = series.iter().flat_map(|s| s.points.iter()).filter(finite).collect();
    if points.is_empty() {
        return no_data(title);
    }
    let x = Axis::linear(points.iter().map(|p| p.0));
    let y = Axis::linear(points.iter().map(|p| p.1));
    let mut frame = Frame::new(title, x, x_label, y, y_label, series.len());
    for (index, s) in series.iter().enumerate() {
        let colour = PALETTE[index % PALETTE.len()];
        let screen: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(finite)
            .map(|&(x, y)| (frame.sx(x), frame.sy(y)))
            .collect();
        if let [(cx, cy)] = screen.as_slice() {
            let _ = write!(
                frame.svg,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3" fill="{colour}"/>"#
            );
        } else if !screen.is_empty() {
            let path: Vec<String> = screen.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = write!(
                frame.svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                path.join(" ")
            );
        }
        frame.legend(index + 1, colour, false, s.name);
    }
    frame.finish()
}

/// One marker per point (never joined), `best` ringed and named in the legend.
pub fn scatter(
    title: &str,
    x: Axis,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
    best: Option<usize>,
) -> String {
    let shown: Vec<(usize, (f64, f64))> = points
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, (x, y))| x.is_finite() && y.is_finite())
        .collect();
    if shown.is_empty() {
        return no_data(title);
    }
    let y = Axis::linear(shown.iter().map(|(_, p)| p.1));
    let mut frame = Frame::new(title, x, x_label, y, y_label, 2);
    for &(i, (x, y)) in &shown {
        let (cx, cy) = (frame.sx(x), frame.sy(y));
        let _ = write!(
            frame.svg,
            r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="4" fill="{}" fill-opacity="0.8"/>"##,
            PALETTE[0]
        );
        if Some(i) == best {
            let _ = write!(
                frame.svg,
                r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="8" fill="none" stroke="#d62728" stroke-width="2"/>"##
            );
        }
    }
    frame.legend(1, PALETTE[0], true, "a trial");
    if best.is_some() {
        frame.legend(2, "#d62728", true, "the best trial (ringed)");
    }
    frame.finish()
}

/// Parallel coordinates: one vertical axis per column, one line per row
/// across them, coloured from the last column (the metric: dark is high);
/// `best` drawn on top, thick and red.
pub fn parallel_coordinates(title: &str, columns: &[(String, Axis)], rows: &[Vec<f64>], best: Option<usize>) -> String {
    if columns.len() < 2 || rows.is_empty() {
        return no_data(title);
    }
    let height = PLOT_HEIGHT + 40.0;
    let mut svg = open_svg(title, height);
    let (top, bottom) = (TOP + 24.0, height - BOTTOM);
    let span = (WIDTH - 2.0 * LEFT) / (columns.len() - 1) as f64;
    let ax = |c: usize| LEFT + span * c as f64;
    let ay = |axis: &Axis, v: f64| bottom - axis.fraction(v).clamp(0.0, 1.0) * (bottom - top);
    let metric = columns.last().map(|(_, a)| a.clone()).expect("two columns or more");
    let line = |row: &[f64], colour: &str, width: f64, opacity: f64| {
        let points: Vec<String> = row
            .iter()
            .zip(columns)
            .enumerate()
            .filter(|(_, (v, _))| v.is_finite())
            .map(|(c, (v, (_, axis)))| format!("{:.1},{:.1}", ax(c), ay(axis, *v)))
            .collect();
        format!(
            r#"<polyline fill="none" stroke="{colour}" stroke-width="{width}" stroke-opacity="{opacity}" points="{}"/>"#,
            points.join(" ")
        )
    };
    for (i, row) in rows.iter().enumerate() {
        if Some(i) == best {
            continue;
        }
        let shade = row.last().map_or(0.5, |&m| metric.fraction(m).clamp(0.0, 1.0));
        let colour = format!(
            "rgb({},{},{})",
            (200.0 - 170.0 * shade) as u8,
            (210.0 - 120.0 * shade) as u8,
            240
        );
        svg.push_str(&line(row, &colour, 1.5, 0.8));
    }
    if let Some(row) = best.and_then(|b| rows.get(b)) {
        svg.push_str(&line(row, "#d62728", 3.0, 1.0));
    }
    for (c, (name, axis)) in columns.iter().enumerate() {
        let x = ax(c);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{bottom}" stroke="#333"/><text x="{x:.1}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"##,
            top - 10.0,
            escape(name)
        );
        for (value, label) in axis.ticks() {
            let y = ay(axis, value);
            let _ = write!(
                svg,
                r##"<line x1="{:.1}" x2="{x:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
                x - 4.0,
                x - 6.0,
                y + 4.0,
                escape(&label)
            );
        }
    }
    let _ = write!(
        svg,
        r##"<text x="{LEFT}" y="{}">one line per trial, darker for a higher {}; the best trial in red</text></svg>"##,
        height - 12.0,
        escape(&columns.last().expect("two columns or more").0)
    );
    svg
}

/// A heat map of a confusion matrix: rows are the true labels, columns the predictions.
pub fn confusion(labels: &[String], matrix: &[Vec<u64>]) -> String {
    let n = labels.len().max(1);
    let cell = 64.0;
    let margin = 120.0;
    let size = margin + cell * n as f64 + 8.0;
    let max = matrix.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" width="{size}" height="{size}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="16" text-anchor="middle" font-weight="bold">predicted label</text>"#,
        margin + cell * n as f64 / 2.0
    );
    let mid = margin + cell * n as f64 / 2.0;
    let _ = write!(
        svg,
        r#"<text x="16" y="{mid}" text-anchor="middle" font-weight="bold" transform="rotate(-90 16 {mid})">true label</text>"#
    );
    for (i, label) in labels.iter().enumerate() {
        let offset = margin + cell * i as f64 + cell / 2.0;
        let _ = write!(
            svg,
            r#"<text x="{offset}" y="{}" text-anchor="middle">{}</text>"#,
            margin - 10.0,
            escape(label)
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            margin - 10.0,
            offset + 4.0,
            escape(label)
        );
    }
    for (i, row) in matrix.iter().enumerate() {
        for (j, &count) in row.iter().enumerate() {
            let shade = (count as f64 / max * 200.0) as u8;
            let (x, y) = (margin + cell * j as f64, margin + cell * i as f64);
            let text = if shade > 120 { "#fff" } else { "#000" };
            let _ = write!(
                svg,
                r##"<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="rgb({},{},{})" stroke="#fff"/><text x="{}" y="{}" text-anchor="middle" fill="{text}">{count}</text>"##,
                235 - shade,
                240 - shade / 2,
                255 - shade / 4,
                x + cell / 2.0,
                y + cell / 2.0 + 4.0
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Escapes text for XML and HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(axis: &Axis) -> Vec<String> {
        axis.ticks().into_iter().map(|(_, l)| l).collect()
    }

    #[test]
    fn ticks_are_nice_numbers_and_never_repeat() {
        // The learning rates of a sweep, which once gave "0.002, 0.002".
        let lr = Axis::linear([3.0e-4, 1.0e-3, 3.0e-3]);
        let shown = labels(&lr);
        assert_eq!(
            shown,
            ["5e-4", "0.001", "0.0015", "0.002", "0.0025", "0.003"],
            "{shown:?}"
        );
        // A constant gets a range around it, with distinct labels.
        let constant = labels(&Axis::linear([1.0e-3, 1.0e-3]));
        let mut distinct = constant.clone();
        distinct.dedup();
        assert_eq!(distinct, constant);
        assert!(constant.len() >= 3, "{constant:?}");
        assert_eq!(
            labels(&Axis::linear([0.0, 1.0])),
            ["0", "0.2", "0.4", "0.6", "0.8", "1"]
        );
        assert_eq!(
            labels(&Axis::linear([0.0, 2500.0])),
            ["0", "500", "1000", "1500", "2000", "2500"]
        );
        // Powers of ten (and 2x, 5x within a few decades) on a log axis.
        assert_eq!(
            labels(&Axis::log([1.0e-5, 1.0e-1])),
            ["1e-5", "1e-4", "0.001", "0.01", "0.1"]
        );
        assert_eq!(
            labels(&Axis::log([3.0e-4, 1.0e-2])),
            ["5e-4", "0.001", "0.002", "0.005", "0.01"]
        );
    }

    #[test]
    fn charts_are_self_contained_svg() {
        let chart = line_chart(
            "loss <train>",
            "step",
            "loss",
            &[Series {
                name: "loss",
                points: vec![(1.0, 0.7), (2.0, f64::NAN), (3.0, 0.5)],
            }],
        );
        assert!(chart.starts_with("<svg") && chart.ends_with("</svg>"));
        assert!(chart.contains("loss &lt;train&gt;") && chart.contains(r#"width="100%""#));
        assert!(chart.contains("<polyline"));
        assert!(!chart.contains("NaN") && !chart.contains("href"));
        let points = scatter(
            "m",
            Axis::Categories(vec!["null".into(), "1.0".into()]),
            "clip",
            "m",
            &[(0.0, 0.5), (1.0, 0.7)],
            Some(1),
        );
        assert!(!points.contains("<polyline"), "trials are never joined");
        assert_eq!(points.matches(r#"r="8""#).count(), 1, "the best is ringed");
        assert!(points.contains(">null</text>"));
        let matrix = confusion(&["neg".into(), "pos".into()], &[vec![5, 1], vec![2, 4]]);
        assert!(matrix.contains(">5</text>") && matrix.contains(">pos</text>"));
        assert!(matrix.contains("true label") && matrix.contains("predicted label"));
    }
}
