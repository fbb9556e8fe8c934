//! `report`: `report.html` (self-contained, charts inline) and `report.md`
//! (with the charts as SVG files beside it) for a `train` stage and, when
//! needed too, an `evaluate` stage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::evaluate::METRICS_FILE;
use super::train::TrainInfo;
use crate::report::{RunReport, SplitScores};
use crate::stage::{Output, Stage, StageContext, StageOutcome};
use crate::train::history::History;

/// The `report` stage kind.
pub struct Report;

/// `kind: report`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// The page title (default: `<pipeline>: <train stage> (<model type>)`).
    #[serde(default)]
    pub title: Option<String>,
}

impl Stage for Report {
    type Config = ReportConfig;
    const KIND: &'static str = "report";
    const VERSION: u32 = 1;
    const ARTIFACTS: &'static [&'static str] = &["report.html", "report.md", "*.svg"];
    const HEADLINE_FILES: &'static [(&'static str, &'static str)] = &[("report", "report.html")];

    fn uses_pipeline_name(&self, config: &ReportConfig) -> bool {
        config.title.is_none()
    }

    fn run(&self, config: &ReportConfig, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let trained = ctx.providing(Output::Model)?;
        let info = TrainInfo::read(&trained.dir)?;
        let history = History::read_csv(&trained.dir.join("history.csv"))?;
        let splits: BTreeMap<String, SplitScores> = match ctx.optional(Output::Evaluation)? {
            Some(evaluated) => serde_json::from_slice(&std::fs::read(evaluated.dir.join(METRICS_FILE))?)?,
            None => BTreeMap::new(),
        };
        let mut summary = BTreeMap::new();
        summary.insert("steps".to_string(), info.steps as f64);
        if let Some((step, value)) = info.best {
            summary.insert("best_step".to_string(), step as f64);
            summary.insert(format!("best_{}", info.config.metric), value);
        }
        if let Some(&(_, loss)) = history.series("loss").last() {
            summary.insert("final_train_loss".to_string(), loss);
        }
        let mut config_json = serde_json::to_value(&info.config)?;
        config_json["model"] = info.config.model.applicable();
        let config_yaml = serde_yaml::to_string(&config_json)?;
        let title = config.title.clone().unwrap_or_else(|| {
            let model = info.config.model.applicable();
            let kind = model["type"].as_str().unwrap_or("model");
            format!("{}: {} ({kind})", ctx.pipeline, trained.name)
        });
        let report = RunReport {
            title: &title,
            config_yaml: &config_yaml,
            summary: &summary,
            splits: &splits,
            labels: &info.labels,
            history: &history,
        };
        for chart in report.charts() {
            std::fs::write(ctx.out_dir.join(chart.file), &chart.svg)?;
        }
        std::fs::write(ctx.out_dir.join("report.html"), report.html())?;
        std::fs::write(ctx.out_dir.join("report.md"), report.markdown())?;
        Ok(StageOutcome::default())
    }
}
