//! Classification metrics from predicted and true labels.

use std::collections::BTreeMap;

/// Accuracy, precision, recall, F1 and the confusion matrix of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

impl Scores {
    /// Counts `predicted` against `truth` over `labels` classes.
    pub fn new(truth: &[i64], predicted: &[i64], labels: usize) -> Scores {
        let mut confusion = vec![vec![0u64; labels]; labels];
        for (&t, &p) in truth.iter().zip(predicted) {
            confusion[t as usize][p as usize] += 1;
        }
        Scores { confusion }
    }

    /// Correct predictions over all.
    pub fn accuracy(&self) -> f64 {
        let total: u64 = self.confusion.iter().flatten().sum();
        let correct: u64 = (0..self.confusion.len()).map(|i| self.confusion[i][i]).sum();
        ratio(correct, total)
    }

    /// Precision, recall and F1 of class `class`.
    pub fn class(&self, class: usize) -> (f64, f64, f64) {
        let tp = self.confusion[class][class];
        let predicted: u64 = self.confusion.iter().map(|row| row[class]).sum();
        let actual: u64 = self.confusion[class].iter().sum();
        let precision = ratio(tp, predicted);
        let recall = ratio(tp, actual);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        (precision, recall, f1)
    }

    /// Named metrics with `prefix`: accuracy, macro precision/recall/F1 and,
    /// with two classes, the binary ones for class 1 (`precision`, `recall`, `f1`).
    pub fn metrics(&self, prefix: &str) -> BTreeMap<String, f64> {
        let n = self.confusion.len();
        let per_class: Vec<(f64, f64, f64)> = (0..n).map(|c| self.class(c)).collect();
        let mean = |f: fn(&(f64, f64, f64)) -> f64| per_class.iter().map(f).sum::<f64>() / n.max(1) as f64;
        let mut out = BTreeMap::new();
        out.insert(format!("{prefix}accuracy"), self.accuracy());
        out.insert(format!("{prefix}precision_macro"), mean(|c| c.0));
        out.insert(format!("{prefix}recall_macro"), mean(|c| c.1));
        out.insert(format!("{prefix}f1_macro"), mean(|c| c.2));
        if n == 2 {
            let (p, r, f) = per_class[1];
            out.insert(format!("{prefix}precision"), p);
            out.insert(format!("{prefix}recall"), r);
            out.insert(format!("{prefix}f1"), f);
        }
        out
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_scores_match_hand_counts() {
        // tp=2 fp=1 fn=1 tn=2
        let s = Scores::new(&[1, 1, 1, 0, 0, 0], &[1, 1, 0, 1, 0, 0], 2);
        assert_eq!(s.confusion, vec![vec![2, 1], vec![1, 2]]);
        let m = s.metrics("eval_");
        assert!((m["eval_accuracy"] - 4.0 / 6.0).abs() < 1e-12);
        assert!((m["eval_precision"] - 2.0 / 3.0).abs() < 1e-12);
        assert!((m["eval_recall"] - 2.0 / 3.0).abs() < 1e-12);
        assert!((m["eval_f1"] - 2.0 / 3.0).abs() < 1e-12);
        assert!((m["eval_f1_macro"] - 2.0 / 3.0).abs() < 1e-12);
    }
}
