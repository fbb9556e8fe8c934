//! Progress output: live bars with rate and ETA on a terminal, plain log
//! lines otherwise. Everything goes to stderr; stdout is for results.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::dag::{GraphNode, NodeState, Reporter};
use crate::stage::Progress;

/// How often plain output repeats a stage's progress.
const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

/// Shows what the executor does.
pub struct Console {
    bars: Option<MultiProgress>,
    quiet: bool,
    /// On a terminal, a sweep's live table: one line per trial, by trial label.
    rows: Mutex<Vec<(String, ProgressBar)>>,
    /// Whether the trials have live lines (set by [`Console::with_trials`]).
    table: bool,
}

impl Console {
    /// Bars when stderr is a terminal, plain lines otherwise, nothing when `quiet`.
    pub fn new(quiet: bool) -> Self {
        let bars = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Console {
            bars,
            quiet,
            rows: Mutex::new(Vec::new()),
            table: false,
        }
    }

    /// On a terminal, shows one live line per trial (`label`, its parameters,
    /// then its current stage, step, rate and loss, or how it ended) in place
    /// of one bar per stage; elsewhere nothing changes.
    /// An adaptive sweep's trials join as they are asked for ([`Console::add_trial`]).
    pub fn with_trials(mut self, trials: &[(String, String)]) -> Self {
        self.table = self.bars.is_some();
        let width = trials.iter().map(|(_, p)| p.chars().count()).max().unwrap_or(0);
        for (label, params) in trials {
            self.add_row(label, &format!("{params:<width$}"));
        }
        self
    }

    /// A trial asked for while the sweep runs: a live line on a terminal
    /// (after [`Console::with_trials`]), else a log line.
    pub fn add_trial(&self, label: &str, params: &str) {
        if self.table {
            self.add_row(label, params);
        } else {
            self.line(&format!("  {label}  {params}"));
        }
    }

    fn add_row(&self, label: &str, params: &str) {
        if let Some(bars) = &self.bars {
            let bar = bars.add(ProgressBar::new(0));
            bar.set_style(ProgressStyle::with_template("{prefix} {msg}").expect("valid template"));
            bar.set_prefix(format!("{label}  {params}"));
            bar.set_message("pending");
            self.rows.lock().expect("console lock").push((label.to_string(), bar));
        }
    }

    /// True when trials have live lines.
    pub fn has_table(&self) -> bool {
        self.table
    }

    /// The live line of the trial `label`.
    fn trial_row(&self, label: &str) -> Option<ProgressBar> {
        let rows = self.rows.lock().expect("console lock");
        rows.iter().find(|(l, _)| l == label).map(|(_, bar)| bar.clone())
    }

    /// The live line of the trial a node belongs to (its label is `trial/stage`).
    fn row<'a>(&self, node: &'a GraphNode) -> Option<(ProgressBar, &'a str)> {
        let (trial, stage) = node.label.split_once('/')?;
        self.trial_row(trial).map(|bar| (bar, stage))
    }

    /// Shows what a trial is doing outside this process (its Slurm task
    /// queued or running): on its live line on a terminal, else as a line.
    pub fn trial_state(&self, label: &str, text: &str) {
        match self.trial_row(label) {
            Some(bar) => bar.set_message(text.to_string()),
            None => self.line(&format!("  {label}: {text}")),
        }
    }

    /// Prints a line above any bars.
    pub fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(text);
            }
            // One write a line (`eprintln!` makes two on unbuffered stderr).
            None => {
                let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{text}\n").as_bytes());
            }
        }
    }
}

/// The first 12 digits of the node's key, or "pending" before the stages it needs have entries.
fn key_prefix(node: &GraphNode) -> &str {
    node.key().map_or("pending", |key| &key[..12])
}

impl Reporter for Console {
    fn cached(&self, node: &GraphNode) {
        match self.row(node) {
            Some((bar, stage)) => bar.set_message(format!("{stage}: cached")),
            None => self.line(&format!("  cached   {} ({})", node.label, key_prefix(node))),
        }
    }

    fn damaged(&self, node: &GraphNode, why: &str) {
        self.line(&format!(
            "  damaged  {}: the cache entry {} is damaged ({why}); recomputing",
            node.label,
            key_prefix(node)
        ));
    }

    fn started<'a>(&'a self, node: &'a GraphNode) -> Box<dyn Progress + 'a> {
        if let Some((bar, stage)) = self.row(node) {
            bar.set_style(ProgressStyle::with_template("{prefix} {msg} {elapsed}").expect("valid template"));
            bar.set_message(format!("{stage}: running"));
            return Box::new(RowProgress { bar, stage });
        }
        match &self.bars {
            Some(bars) => {
                let bar = bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} {msg} {elapsed}").expect("valid template"),
                );
                bar.set_prefix(node.label.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                Box::new(BarProgress { bar })
            }
            None => {
                self.line(&format!("  running  {} ({})", node.label, key_prefix(node)));
                Box::new(PlainProgress {
                    label: &node.label,
                    quiet: self.quiet,
                    state: Mutex::new(PlainState {
                        total: 0,
                        done: 0,
                        unit: String::new(),
                        started: Instant::now(),
                        last_print: Instant::now(),
                    }),
                })
            }
        }
    }

    fn waiting(&self, node: &GraphNode) {
        self.line(&format!(
            "  waiting  {}: another process is computing {}",
            node.label,
            key_prefix(node)
        ));
    }

    fn finished(&self, node: &GraphNode, state: &NodeState, seconds: f64) {
        if let Some((bar, stage)) = self.row(node) {
            bar.set_style(ProgressStyle::with_template("{prefix} {msg}").expect("valid template"));
            bar.set_message(match state {
                NodeState::Failed(_) => format!("{stage}: FAILED"),
                other => format!("{stage}: {} in {seconds:.1}s", other.word()),
            });
            if !matches!(state, NodeState::Failed(_)) {
                return;
            }
        }
        let text = match state {
            NodeState::Failed(error) => format!("  FAILED   {}: {error}", node.label),
            NodeState::Skipped => format!("  skipped  {}: a stage it needs did not succeed", node.label),
            NodeState::Pruned(step) => format!("  pruned   {} at step {step} in {seconds:.2}s", node.label),
            other => format!("  {:<8} {} in {seconds:.2}s", other.word(), node.label),
        };
        self.line(&text);
    }
}

/// A stage's bar on a terminal.
struct BarProgress {
    bar: ProgressBar,
}

impl Progress for BarProgress {
    fn set_total(&self, total: u64, unit: &str) {
        let template = format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}");
        self.bar.set_style(
            ProgressStyle::with_template(&template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        self.bar.set_length(total);
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }

    fn message(&self, text: &str) {
        self.bar.set_message(text.to_string());
    }
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// A trial's stage progress on its live line.
struct RowProgress<'a> {
    bar: ProgressBar,
    stage: &'a str,
}

impl Progress for RowProgress<'_> {
    fn set_total(&self, total: u64, unit: &str) {
        let template = format!(
            "{{prefix}} {} [{{bar:20}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}",
            self.stage
        );
        self.bar.set_style(
            ProgressStyle::with_template(&template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        self.bar.set_message("");
        self.bar.set_position(0);
        self.bar.set_length(total);
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }

    fn message(&self, text: &str) {
        self.bar.set_message(text.to_string());
    }
}

/// A stage's progress as occasional log lines.
struct PlainProgress<'a> {
    label: &'a str,
    quiet: bool,
    state: Mutex<PlainState>,
}

struct PlainState {
    total: u64,
    done: u64,
    unit: String,
    started: Instant,
    last_print: Instant,
}

impl Progress for PlainProgress<'_> {
    fn set_total(&self, total: u64, unit: &str) {
        let mut state = self.state.lock().expect("progress lock");
        state.total = total;
        state.unit = unit.to_string();
    }

    fn advance(&self, n: u64) {
        let mut state = self.state.lock().expect("progress lock");
        state.done += n;
        if self.quiet || state.last_print.elapsed() < PLAIN_INTERVAL {
            return;
        }
        state.last_print = Instant::now();
        let rate = state.done as f64 / state.started.elapsed().as_secs_f64().max(1e-9);
        let eta = state.total.saturating_sub(state.done) as f64 / rate.max(1e-9);
        eprintln!(
            "  progress {}: {}/{} {} ({rate:.1}/s, ETA {eta:.0}s)",
            self.label, state.done, state.total, state.unit
        );
    }

    fn message(&self, text: &str) {
        let mut state = self.state.lock().expect("progress lock");
        if self.quiet || state.last_print.elapsed() < PLAIN_INTERVAL {
            return;
        }
        state.last_print = Instant::now();
        eprintln!("  progress {}: {text}", self.label);
    }
}
