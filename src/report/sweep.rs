//! `sweep-report.html`: every trial's loss curve on one chart, the metric
//! against each parameter, and the ranked table, in one self-contained page.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value as Json;

use super::svg::{Series, line_chart};
use super::{fmt, html_table, page_start};
use crate::tracking::Metric;

/// One trial in the ranked table.
#[derive(Debug, Clone)]
pub struct TrialRow {
    /// Its position in the sweep's expansion order.
    pub index: usize,
    /// `trial-<id>`.
    pub label: String,
    /// Its parameter values.
    pub params: Vec<Json>,
    /// `finished`, `cached`, `failed` or `interrupted`.
    pub status: &'static str,
    /// The sweep metric, when the trial reported a finite one.
    pub metric: Option<f64>,
    /// Seconds its own stages ran.
    pub seconds: f64,
    /// Every metric its stages reported.
    pub metrics: BTreeMap<String, f64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The contents of a sweep report.
pub struct SweepReport<'a> {
    /// The sweep's name.
    pub name: &'a str,
    /// The metric that ranks trials.
    pub metric: &'a str,
    /// The parameter paths.
    pub parameters: &'a [String],
    /// Trials, best first.
    pub rows: &'a [TrialRow],
}

impl SweepReport<'_> {
    /// The page; `histories[i]` holds the step metrics of `rows[i]`.
    pub fn html(&self, histories: &[Vec<Metric>]) -> String {
        let mut page = page_start(&format!("Sweep {}", self.name));
        page.push_str("<h2>Trials</h2>\n");
        let mut header: Vec<&str> = vec!["trial"];
        header.extend(self.parameters.iter().map(String::as_str));
        header.extend([self.metric, "status", "seconds"]);
        let rows = self.rows.iter().map(|r| {
            let mut cells = vec![r.label.clone()];
            cells.extend(r.params.iter().map(Json::to_string));
            cells.push(r.metric.map_or_else(|| "-".into(), fmt));
            cells.push(r.status.to_string());
            cells.push(format!("{:.1}", r.seconds));
            cells
        });
        page.push_str(&html_table(&header, rows));
        let losses: Vec<Series> = self
            .rows
            .iter()
            .zip(histories)
            .map(|(row, history)| Series {
                name: &row.label,
                points: history
                    .iter()
                    .filter(|m| m.key == "loss")
                    .map(|m| (m.step as f64, m.value))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if !losses.is_empty() {
            let _ = write!(
                page,
                "<h2>Training loss</h2>\n{}\n",
                line_chart("loss", "step", &losses)
            );
        }
        for (p, path) in self.parameters.iter().enumerate() {
            let (axis, points) = self.metric_against(p);
            if points.is_empty() {
                continue;
            }
            let series = [Series {
                name: self.metric,
                points,
            }];
            let _ = write!(
                page,
                "<h2>{} against {}</h2>\n{}\n",
                super::svg::escape(self.metric),
                super::svg::escape(path),
                line_chart(self.metric, &axis, &series)
            );
        }
        page.push_str("</body></html>\n");
        page
    }

    /// Points (parameter value, metric) sorted by value, and the x-axis label:
    /// numbers spanning two decades or more on a log10 axis, other values by
    /// their position among the distinct values.
    fn metric_against(&self, p: usize) -> (String, Vec<(f64, f64)>) {
        let rows: Vec<(&Json, f64)> = self
            .rows
            .iter()
            .filter_map(|r| r.metric.map(|m| (&r.params[p], m)))
            .collect();
        let numbers: Option<Vec<f64>> = rows.iter().map(|(v, _)| v.as_f64()).collect();
        let name = &self.parameters[p];
        let (axis, mut points): (String, Vec<(f64, f64)>) = match numbers {
            Some(xs) if !xs.is_empty() => {
                let (lo, hi) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
                if lo > 0.0 && hi / lo >= 100.0 {
                    (
                        format!("log10({name})"),
                        xs.iter().zip(&rows).map(|(x, (_, m))| (x.log10(), *m)).collect(),
                    )
                } else {
                    (name.clone(), xs.iter().zip(&rows).map(|(x, (_, m))| (*x, *m)).collect())
                }
            }
            _ => {
                let mut distinct: Vec<String> = rows.iter().map(|(v, _)| v.to_string()).collect();
                distinct.sort();
                distinct.dedup();
                let position = |v: &Json| {
                    let text = v.to_string();
                    distinct.iter().position(|d| *d == text).unwrap_or(0) as f64
                };
                (
                    format!("{name} ({})", distinct.join(" | ")),
                    rows.iter().map(|(v, m)| (position(v), *m)).collect(),
                )
            }
        };
        points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        (axis, points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, params: Vec<Json>, metric: f64) -> TrialRow {
        TrialRow {
            index: 0,
            label: label.into(),
            params,
            status: "finished",
            metric: Some(metric),
            seconds: 1.0,
            metrics: BTreeMap::new(),
            error: None,
        }
    }

    #[test]
    fn learning_rates_go_on_a_log_axis_and_nulls_on_categories() {
        let parameters = ["lr".to_string(), "clip".to_string()];
        let rows = [
            row("a", vec![Json::from(1e-2), Json::Null], 0.6),
            row("b", vec![Json::from(1e-4), Json::from(1.0)], 0.7),
        ];
        let report = SweepReport {
            name: "s",
            metric: "eval_accuracy",
            parameters: &parameters,
            rows: &rows,
        };
        let (axis, points) = report.metric_against(0);
        assert_eq!(axis, "log10(lr)");
        assert_eq!(points, vec![(-4.0, 0.7), (-2.0, 0.6)]);
        let (axis, points) = report.metric_against(1);
        assert_eq!(axis, "clip (1.0 | null)");
        assert_eq!(points, vec![(0.0, 0.7), (1.0, 0.6)]);
        let html = report.html(&[vec![], vec![]]);
        assert!(html.contains("<h2>eval_accuracy against lr</h2>") && !html.contains("src="));
    }
}
