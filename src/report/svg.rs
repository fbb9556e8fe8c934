//! Small self-contained SVG charts (no scripts, no external assets).

use std::fmt::Write;

/// Line colours, in series order.
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 32.0;
const BOTTOM: f64 = 44.0;

/// One named line of `(x, y)` points; non-finite points are skipped.
pub struct Series<'a> {
    /// Legend label.
    pub name: &'a str,
    /// The points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// A line chart titled `title` with `x_label` under the x axis.
pub fn line_chart(title: &str, x_label: &str, series: &[Series]) -> String {
    let finite = |&&(x, y): &&(f64, f64)| x.is_finite() && y.is_finite();
    let points: Vec<&(f64, f64)> = series.iter().flat_map(|s| s.points.iter()).filter(finite).collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="13">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    if points.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">no data</text></svg>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        return svg;
    }
    let (x0, x1) = bounds(points.iter().map(|p| p.0));
    let (y0, y1) = bounds(points.iter().map(|p| p.1));
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT);
    let sy = |y: f64| HEIGHT - BOTTOM - (y - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM);
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        WIDTH - LEFT - RIGHT,
        HEIGHT - TOP - BOTTOM
    );
    for i in 0..=4 {
        let fx = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let fy = y0 + (y1 - y0) * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}</text>"##,
            sx(fx),
            HEIGHT - BOTTOM + 14.0,
            number(fx)
        );
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
            WIDTH - RIGHT,
            sy(fy),
            sy(fy),
            LEFT - 4.0,
            sy(fy) + 4.0,
            number(fy)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 8.0,
        escape(x_label)
    );
    for (index, s) in series.iter().enumerate() {
        let colour = PALETTE[index % PALETTE.len()];
        let screen: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| (sx(x), sy(y)))
            .collect();
        if let [(cx, cy)] = screen.as_slice() {
            let _ = write!(svg, r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3" fill="{colour}"/>"#);
        } else {
            let path: Vec<String> = screen.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                path.join(" ")
            );
        }
        let ly = TOP + 14.0 + 14.0 * index as f64;
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="10" height="3" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
            WIDTH - RIGHT - 150.0,
            ly - 4.0,
            WIDTH - RIGHT - 136.0,
            ly,
            escape(s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A table-like heat map of a confusion matrix, rows true labels, columns predictions.
pub fn confusion(labels: &[String], matrix: &[Vec<u64>]) -> String {
    let n = labels.len().max(1);
    let cell = 56.0;
    let margin = 90.0;
    let size = margin + cell * n as f64 + 8.0;
    let max = matrix.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" width="{size}" height="{size}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="14" text-anchor="middle">predicted</text>"#,
        margin + cell * n as f64 / 2.0
    );
    for (i, label) in labels.iter().enumerate() {
        let offset = margin + cell * i as f64 + cell / 2.0;
        let _ = write!(
            svg,
            r#"<text x="{offset}" y="{}" text-anchor="middle">{}</text>"#,
            margin - 8.0,
            escape(label)
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            margin - 8.0,
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

/// `(min, max)` widened so that the range is never empty.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi - lo < 1e-12 {
        let pad = if lo.abs() > 1e-12 { lo.abs() * 0.1 } else { 1.0 };
        (lo - pad, hi + pad)
    } else {
        (lo, hi)
    }
}

/// A short label for an axis value.
fn number(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
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

    #[test]
    fn charts_are_self_contained_svg() {
        let chart = line_chart(
            "loss <train>",
            "step",
            &[Series {
                name: "loss",
                points: vec![(1.0, 0.7), (2.0, f64::NAN), (3.0, 0.5)],
            }],
        );
        assert!(chart.starts_with("<svg") && chart.ends_with("</svg>"));
        assert!(chart.contains("loss &lt;train&gt;"));
        assert!(chart.contains("<polyline"));
        assert!(!chart.contains("NaN") && !chart.contains("href"));
        let matrix = confusion(&["neg".into(), "pos".into()], &[vec![5, 1], vec![2, 4]]);
        assert!(matrix.contains(">5</text>") && matrix.contains(">pos</text>"));
    }
}
