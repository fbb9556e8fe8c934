//! The step history of a training run (loss, learning rate, gradient norm,
//! evaluation metrics), saved as `history.csv`: one row per logging or
//! evaluation step, one column per metric, empty where a row has no value.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

/// The file a stage writes its step history to; every column becomes a step metric.
pub const HISTORY_FILE: &str = "history.csv";

/// One row: the step, the epoch reached (fractional) and named values.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Optimizer steps done.
    pub step: usize,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Metric values.
    pub values: BTreeMap<String, f64>,
}

/// All rows of a run, in step order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The rows.
    pub rows: Vec<Row>,
}

impl History {
    /// Adds `values` at `step`, merged into the last row when it has the same step.
    pub fn push<'a>(&mut self, step: usize, epoch: f64, values: impl IntoIterator<Item = (&'a str, f64)>) {
        if self.rows.last().is_none_or(|r| r.step != step) {
            self.rows.push(Row {
                step,
                epoch,
                values: BTreeMap::new(),
            });
        }
        let row = self.rows.last_mut().expect("a row");
        row.values.extend(values.into_iter().map(|(k, v)| (k.to_string(), v)));
    }

    /// Every metric name, sorted.
    pub fn columns(&self) -> Vec<String> {
        let mut names: Vec<String> = self.rows.iter().flat_map(|r| r.values.keys().cloned()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// `(step, value)` points of one metric.
    pub fn series(&self, name: &str) -> Vec<(f64, f64)> {
        self.rows
            .iter()
            .filter_map(|r| r.values.get(name).map(|&v| (r.step as f64, v)))
            .collect()
    }

    /// The evaluation row at `step`, or the last evaluation when `step` is `None`.
    pub fn last_evaluation(&self, step: Option<usize>) -> Option<&Row> {
        self.rows
            .iter()
            .rev()
            .filter(|r| r.values.contains_key("eval_loss"))
            .find(|r| step.is_none_or(|s| r.step == s))
    }

    /// Writes `step,epoch,<metrics...>` CSV.
    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        let columns = self.columns();
        let mut out = String::from("step,epoch");
        for c in &columns {
            out.push(',');
            out.push_str(c);
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&format!("{},{}", row.step, row.epoch));
            for c in &columns {
                out.push(',');
                if let Some(v) = row.values.get(c) {
                    out.push_str(&v.to_string());
                }
            }
            out.push('\n');
        }
        std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads a file written by [`History::write_csv`].
    pub fn read_csv(path: &Path) -> anyhow::Result<History> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        anyhow::ensure!(
            header.len() >= 2 && header[0] == "step" && header[1] == "epoch",
            "{}: expected a header starting `step,epoch`",
            path.display()
        );
        let mut rows = Vec::new();
        for (number, line) in lines.enumerate() {
            let fields: Vec<&str> = line.split(',').collect();
            let bad = || format!("{}:{}: expected numbers", path.display(), number + 2);
            let mut values = BTreeMap::new();
            for (name, field) in header.iter().zip(&fields).skip(2) {
                if !field.is_empty() {
                    values.insert(name.to_string(), field.parse().with_context(bad)?);
                }
            }
            rows.push(Row {
                step: fields[0].parse().with_context(bad)?,
                epoch: fields.get(1).unwrap_or(&"").parse().with_context(bad)?,
                values,
            });
        }
        Ok(History { rows })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip_keeps_gaps() {
        let mut h = History::default();
        h.push(10, 0.5, [("loss", 0.7), ("learning_rate", 1e-3)]);
        h.push(20, 1.0, [("loss", 0.6)]);
        h.push(20, 1.0, [("eval_loss", f64::NAN)]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.csv");
        h.write_csv(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "step,epoch,eval_loss,learning_rate,loss\n10,0.5,,0.001,0.7\n20,1,NaN,,0.6\n"
        );
        let back = History::read_csv(&path).unwrap();
        assert_eq!(back.rows.len(), 2);
        assert_eq!(back.series("loss"), vec![(10.0, 0.7), (20.0, 0.6)]);
        assert!(back.rows[1].values["eval_loss"].is_nan());
    }
}
