//! `sweep-report.html`: every trial's loss curve on one chart, the metric
//! against each parameter, and the ranked table, in one self-contained page.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value as Json;

use super::svg::{Axis, Series, escape, line_chart, parallel_coordinates, scatter};
use super::{fmt, html_table, page_start};
use crate::search::Domain;
use crate::session::Ending;
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
    /// How it ended (the table's status is its word; a failure has its error).
    pub ending: Ending,
    /// The sweep metric, when the trial reported a finite one.
    pub metric: Option<f64>,
    /// Seconds its own stages ran.
    pub seconds: f64,
    /// Every metric its stages reported.
    pub metrics: BTreeMap<String, f64>,
}

/// The contents of a sweep report.
pub struct SweepReport<'a> {
    /// The sweep's name.
    pub name: &'a str,
    /// The metric that ranks trials.
    pub metric: &'a str,
    /// The parameter paths.
    pub parameters: &'a [String],
    /// How each parameter varies (it picks the axis).
    pub domains: &'a [Domain],
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
        let best = self.best();
        let rows = self.rows.iter().enumerate().map(|(i, r)| {
            let mut label = r.label.clone();
            if Some(i) == best {
                label.push_str(" (best)");
            }
            let mut cells = vec![label];
            cells.extend(r.params.iter().map(Json::to_string));
            cells.push(r.metric.map_or_else(|| "-".into(), fmt));
            cells.push(r.ending.status());
            cells.push(format!("{:.1}", r.seconds));
            cells
        });
        page.push_str(&html_table(&header, rows));
        if let Some(chart) = self.parallel_coordinates() {
            let _ = write!(page, "<h2>Parameters and {}</h2>\n{chart}\n", escape(self.metric));
        }
        let names: Vec<String> = self
            .rows
            .iter()
            .map(|r| format!("{}: {}", r.label, self.describe(r)))
            .collect();
        let losses: Vec<Series> = self
            .rows
            .iter()
            .zip(histories)
            .zip(&names)
            .map(|((_, history), name)| Series {
                name,
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
                line_chart("training loss of every trial", "step", "loss", &losses)
            );
        }
        for (p, path) in self.parameters.iter().enumerate() {
            let (axis, points) = self.metric_against(p);
            if points.iter().all(|(_, m)| !m.is_finite()) {
                continue;
            }
            let _ = write!(
                page,
                "<h2>{} against {}</h2>\n{}\n",
                escape(self.metric),
                escape(path),
                scatter(
                    &format!("{} against {path}", self.metric),
                    axis,
                    path,
                    self.metric,
                    &points,
                    best
                )
            );
        }
        page.push_str("</body></html>\n");
        page
    }

    /// The row of the best trial: the first, when it has the metric.
    fn best(&self) -> Option<usize> {
        self.rows.first().and_then(|r| r.metric).map(|_| 0)
    }

    /// `lr=0.001 clip_grad_norm=null`: the last path segment of each parameter and its value.
    fn describe(&self, row: &TrialRow) -> String {
        self.parameters
            .iter()
            .zip(&row.params)
            .map(|(p, v)| format!("{}={v}", p.rsplit('.').next().unwrap_or(p)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The axis of parameter `p` and, per row, where its value falls on it.
    /// Numbers drawn from `log_uniform`, or listed or drawn across a decade
    /// or more (two for uniform draws), go on a log axis; other listed
    /// values, and anything not a number (`null`, strings), are categories
    /// in sorted order; other draws are linear.
    fn axis(&self, p: usize) -> (Axis, Vec<f64>) {
        let values: Vec<&Json> = self.rows.iter().map(|r| &r.params[p]).collect();
        let numbers: Option<Vec<f64>> = values.iter().map(|v| v.as_f64()).collect();
        let listed = !matches!(
            self.domains.get(p),
            Some(Domain::LogUniform(..) | Domain::Uniform(..) | Domain::IntUniform(..))
        );
        if let Some(xs) = numbers.filter(|xs| !xs.is_empty()) {
            let (lo, hi) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            let decades = if lo > 0.0 { (hi / lo).log10() } else { 0.0 };
            let log = lo > 0.0
                && match self.domains.get(p) {
                    Some(Domain::LogUniform(..)) => true,
                    Some(Domain::Uniform(..) | Domain::IntUniform(..)) => decades >= 2.0,
                    Some(Domain::Values(_)) | None => decades >= 1.0,
                };
            if log {
                return (Axis::log(xs.iter().copied()), xs);
            }
            if !listed {
                return (Axis::linear(xs.iter().copied()), xs);
            }
        }
        let mut distinct: Vec<&Json> = values.clone();
        distinct.sort_by(|a, b| match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Greater,
            (None, Some(_)) => std::cmp::Ordering::Less,
            (None, None) => a.to_string().cmp(&b.to_string()),
        });
        distinct.dedup();
        let position = |v: &Json| distinct.iter().position(|d| *d == v).unwrap_or(0) as f64;
        let positions = values.iter().map(|v| position(v)).collect();
        (
            Axis::Categories(distinct.iter().map(|v| v.to_string()).collect()),
            positions,
        )
    }

    /// The axis of parameter `p` and (value on it, metric) per row, NaN
    /// where a trial has no metric.
    fn metric_against(&self, p: usize) -> (Axis, Vec<(f64, f64)>) {
        let (axis, positions) = self.axis(p);
        let points = positions
            .into_iter()
            .zip(self.rows)
            .map(|(x, r)| (x, r.metric.unwrap_or(f64::NAN)))
            .collect();
        (axis, points)
    }

    /// Every parameter and the metric as parallel axes, a line per trial
    /// with the metric; none without trials that have it.
    fn parallel_coordinates(&self) -> Option<String> {
        let scored: Vec<usize> = (0..self.rows.len())
            .filter(|&i| self.rows[i].metric.is_some())
            .collect();
        if scored.is_empty() {
            return None;
        }
        let mut columns = Vec::new();
        let mut lines: Vec<Vec<f64>> = vec![Vec::new(); self.rows.len()];
        for (p, path) in self.parameters.iter().enumerate() {
            let (axis, positions) = self.axis(p);
            columns.push((path.rsplit('.').next().unwrap_or(path).to_string(), axis));
            for (line, x) in lines.iter_mut().zip(positions) {
                line.push(x);
            }
        }
        let metrics: Vec<f64> = scored.iter().map(|&i| self.rows[i].metric.expect("scored")).collect();
        columns.push((self.metric.to_string(), Axis::linear(metrics)));
        for (line, row) in lines.iter_mut().zip(self.rows) {
            line.push(row.metric.unwrap_or(f64::NAN));
        }
        Some(parallel_coordinates(
            &format!("{} over every parameter", self.metric),
            &columns,
            &lines,
            self.best(),
        ))
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
            ending: Ending::Succeeded,
            metric: Some(metric),
            seconds: 1.0,
            metrics: BTreeMap::new(),
        }
    }

    #[test]
    fn parameters_get_log_linear_or_categorical_axes_and_the_best_is_marked() {
        let parameters = ["lr".to_string(), "clip".to_string(), "dropout".to_string()];
        let domains = [
            Domain::Values(vec![Json::from(1e-2), Json::from(1e-4)]),
            Domain::Values(vec![Json::Null, Json::from(1.0)]),
            Domain::Uniform(0.0, 0.5),
        ];
        let rows = [
            row("a", vec![Json::from(1e-2), Json::Null, Json::from(0.1)], 0.7),
            row("b", vec![Json::from(1e-4), Json::from(1.0), Json::from(0.3)], 0.6),
        ];
        let report = SweepReport {
            name: "s",
            metric: "eval_accuracy",
            parameters: &parameters,
            domains: &domains,
            rows: &rows,
        };
        let (axis, points) = report.metric_against(0);
        assert!(matches!(axis, Axis::Log { .. }), "{axis:?}");
        assert_eq!(points, vec![(1e-2, 0.7), (1e-4, 0.6)]);
        let (axis, points) = report.metric_against(1);
        assert_eq!(axis, Axis::Categories(vec!["null".into(), "1.0".into()]));
        assert_eq!(points, vec![(0.0, 0.7), (1.0, 0.6)]);
        assert!(matches!(report.metric_against(2).0, Axis::Linear { .. }));
        let html = report.html(&[vec![], vec![]]);
        assert!(html.contains("<h2>eval_accuracy against lr</h2>") && !html.contains("src="));
        assert!(
            html.contains("a (best)") && html.contains("over every parameter"),
            "{html}"
        );
    }
}
