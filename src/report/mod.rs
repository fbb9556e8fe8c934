//! Run reports: one self-contained HTML page (charts as inline SVG) and a
//! Markdown version with the charts as SVG files beside it.

pub mod svg;
pub mod sweep;

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};
use svg::{Series, escape};

use crate::train::history::History;

/// Scores of one evaluated split, as in the `evaluate` stage's `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitScores {
    /// `loss`, `accuracy`, `f1`, ... without a split prefix.
    pub metrics: BTreeMap<String, f64>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// Everything a run report shows.
pub struct RunReport<'a> {
    /// The page title.
    pub title: &'a str,
    /// The train stage's resolved config, as YAML.
    pub config_yaml: &'a str,
    /// Headline numbers (train steps, best metric, ...).
    pub summary: &'a BTreeMap<String, f64>,
    /// Per evaluated split: metrics and confusion matrix.
    pub splits: &'a BTreeMap<String, SplitScores>,
    /// Label names.
    pub labels: &'a [String],
    /// The training history.
    pub history: &'a History,
}

/// A chart file and its SVG text.
pub struct Chart {
    /// File name, e.g. `loss.svg`.
    pub file: &'static str,
    /// Section title.
    pub title: &'static str,
    /// The SVG document.
    pub svg: String,
}

impl RunReport<'_> {
    /// The loss, learning-rate and gradient-norm charts, plus a confusion matrix per split.
    pub fn charts(&self) -> Vec<Chart> {
        let line = |names: &[&'static str]| -> Vec<Series<'static>> {
            names
                .iter()
                .map(|&name| Series {
                    name,
                    points: self.history.series(name),
                })
                .collect()
        };
        let mut charts = vec![
            Chart {
                file: "loss.svg",
                title: "Loss",
                svg: svg::line_chart(
                    "training and evaluation loss",
                    "step",
                    "loss",
                    &line(&["loss", "eval_loss"]),
                ),
            },
            Chart {
                file: "learning_rate.svg",
                title: "Learning rate",
                svg: svg::line_chart("learning rate", "step", "learning rate", &line(&["learning_rate"])),
            },
            Chart {
                file: "grad_norm.svg",
                title: "Gradient norm (before clipping)",
                svg: svg::line_chart("global gradient norm", "step", "L2 norm", &line(&["grad_norm"])),
            },
        ];
        let accuracy = line(&["eval_accuracy"]);
        if accuracy.iter().any(|s| !s.points.is_empty()) {
            charts.push(Chart {
                file: "eval_accuracy.svg",
                title: "Evaluation accuracy",
                svg: svg::line_chart("evaluation accuracy", "step", "accuracy", &accuracy),
            });
        }
        charts
    }

    /// The HTML page.
    pub fn html(&self) -> String {
        let mut page = page_start(self.title);
        page.push_str("<h2>Summary</h2>\n");
        page.push_str(&html_table(
            &["metric", "value"],
            self.summary.iter().map(|(k, v)| vec![k.clone(), fmt(*v)]),
        ));
        if !self.splits.is_empty() {
            page.push_str("<h2>Evaluation</h2>\n");
            let (header, rows) = self.metrics_table();
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            page.push_str(&html_table(&header, rows.into_iter()));
        }
        for chart in self.charts() {
            let _ = write!(page, "<h2>{}</h2>\n{}\n", chart.title, chart.svg);
        }
        for (split, SplitScores { confusion, .. }) in self.splits {
            let _ = write!(
                page,
                "<h2>Confusion matrix: {}</h2>\n{}\n",
                escape(split),
                svg::confusion(self.labels, confusion)
            );
        }
        let _ = write!(
            page,
            "<h2>Configuration</h2>\n<pre>{}</pre>\n</body></html>\n",
            escape(self.config_yaml)
        );
        page
    }

    /// The Markdown page; charts are referenced as the files of [`RunReport::charts`].
    pub fn markdown(&self) -> String {
        let mut md = format!("# {}\n\n## Summary\n\n", self.title);
        md.push_str(&md_table(
            &["metric", "value"],
            self.summary.iter().map(|(k, v)| vec![k.clone(), fmt(*v)]),
        ));
        if !self.splits.is_empty() {
            md.push_str("\n## Evaluation\n\n");
            let (header, rows) = self.metrics_table();
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            md.push_str(&md_table(&header, rows.into_iter()));
        }
        for chart in self.charts() {
            let _ = write!(md, "\n## {}\n\n![{}]({})\n", chart.title, chart.title, chart.file);
        }
        for (split, SplitScores { confusion, .. }) in self.splits {
            let _ = write!(
                md,
                "\n## Confusion matrix: {split}\n\nrows: true label, columns: predicted\n\n"
            );
            let mut header = vec![""];
            header.extend(self.labels.iter().map(String::as_str));
            let rows = confusion.iter().zip(self.labels).map(|(row, label)| {
                let mut cells = vec![label.clone()];
                cells.extend(row.iter().map(u64::to_string));
                cells
            });
            md.push_str(&md_table(&header, rows));
        }
        let _ = write!(md, "\n## Configuration\n\n```yaml\n{}```\n", self.config_yaml);
        md
    }

    /// Header and rows: one row per split, one column per metric.
    fn metrics_table(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut names: Vec<&String> = self.splits.values().flat_map(|s| s.metrics.keys()).collect();
        names.sort();
        names.dedup();
        let mut header = vec!["split".to_string()];
        header.extend(names.iter().map(|n| n.to_string()));
        let rows = self
            .splits
            .iter()
            .map(|(split, SplitScores { metrics, .. })| {
                let mut row = vec![split.clone()];
                row.extend(names.iter().map(|n| metrics.get(*n).map_or(String::new(), |v| fmt(*v))));
                row
            })
            .collect();
        (header, rows)
    }
}

/// The start of a self-contained HTML page, up to its `<h1>`.
pub fn page_start(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{0}</title><style>\
         body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f4f4f4}}pre{{background:#f7f7f7;padding:1em;overflow:auto}}</style></head>\
         <body><h1>{0}</h1>\n",
        escape(title)
    )
}

/// A number with four decimals, or as an integer when it is one.
pub fn fmt(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// An HTML table.
pub fn html_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut out = String::from("<table><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// A Markdown table.
pub fn md_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut out = format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len()));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}
