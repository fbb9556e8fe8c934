//! Stage kinds implemented in test code, to exercise the executor before
//! (and independently of) the real stages.

use std::io::Write as _;

use pipeline::stage::{InputFile, Invalid, Registry, Stage, StageContext, StageOutcome};
use serde::{Deserialize, Serialize};

/// Appends a line to `$TESTKIT_LOG`, so tests can count what ran across processes.
fn log_run(line: &str) {
    if let Ok(path) = std::env::var("TESTKIT_LOG") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
}

fn now_ms() -> u128 {
    std::time::UNIX_EPOCH.elapsed().unwrap().as_millis()
}

/// A configurable step: writes `text` (plus optional seed, env value, file
/// content and every input's output) to `out.txt`.
pub struct StepStage;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub sleep_ms: u64,
    #[serde(default)]
    pub fail: Option<String>,
    #[serde(default)]
    pub seeded: bool,
    /// Name of an environment variable whose value goes into the output (not the key).
    #[serde(default)]
    pub env: Option<String>,
    /// A file (relative to the pipeline) whose content goes into the output and the key.
    #[serde(default)]
    pub file: Option<String>,
    /// Size of an extra output file `data.bin`, to test work proportional to output size.
    #[serde(default)]
    pub bytes: usize,
    /// Runs on the pipeline's device (its kind is part of the key); the
    /// output ends with ` on DEVICE FROM..TO` (milliseconds since 1970).
    #[serde(default)]
    pub on_device: bool,
}

impl Stage for StepStage {
    type Config = StepConfig;
    const KIND: &'static str = "step";
    const VERSION: u32 = 1;

    fn uses_seed(&self, config: &StepConfig) -> bool {
        config.seeded
    }

    fn uses_device(&self, config: &StepConfig) -> bool {
        config.on_device
    }

    fn input_files(&self, config: &StepConfig) -> Vec<InputFile> {
        config.file.iter().map(|f| InputFile::new("file", f.clone())).collect()
    }

    fn run(&self, config: &StepConfig, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let started = now_ms();
        log_run(&format!("start {}", config.text));
        let mut waited = 0;
        ctx.progress.set_total(config.sleep_ms, "ms");
        while waited < config.sleep_ms {
            ctx.check_cancelled()?;
            std::thread::sleep(std::time::Duration::from_millis(10));
            waited += 10;
            ctx.progress.advance(10);
        }
        if let Some(message) = &config.fail {
            anyhow::bail!("{message}");
        }
        let mut out = config.text.clone();
        if config.seeded {
            out.push_str(&format!(" seed={}", ctx.seed));
        }
        if let Some(var) = &config.env {
            out.push_str(&format!(" {var}={}", std::env::var(var).unwrap_or_default()));
        }
        if let Some(file) = &config.file {
            out.push_str(&std::fs::read_to_string(ctx.pipeline_dir.join(file))?);
        }
        for input in ctx.inputs {
            out.push_str(&format!(
                " <{}:{}>",
                input.name,
                std::fs::read_to_string(input.dir.join("out.txt"))?
            ));
        }
        if config.on_device {
            out.push_str(&format!(" on {} {started}..{}", ctx.device, now_ms()));
        }
        std::fs::write(ctx.out_dir.join("out.txt"), &out)?;
        if config.bytes > 0 {
            let data: Vec<u8> = (0..config.bytes).map(|i| (i % 251) as u8).collect();
            std::fs::write(ctx.out_dir.join("data.bin"), data)?;
        }
        log_run(&format!("done {}", config.text));
        let mut outcome = StageOutcome::default();
        outcome.metrics.insert("length".into(), out.len() as f64);
        Ok(outcome)
    }
}

/// A kind with a nested, typed config, for error messages.
pub struct FitStage;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitConfig {
    pub optimizer: Optimizer,
    #[serde(default = "default_epochs")]
    pub epochs: u32,
    #[serde(default)]
    pub layers: Vec<u32>,
    #[serde(default)]
    pub dropout: f64,
}

fn default_epochs() -> u32 {
    1
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Optimizer {
    pub name: OptimizerName,
    pub lr: f64,
    #[serde(default)]
    pub momentum: f64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    Sgd,
    Adam,
    Adamw,
}

impl Stage for FitStage {
    type Config = FitConfig;
    const KIND: &'static str = "fit";
    const VERSION: u32 = 1;

    fn validate(&self, config: &FitConfig) -> Result<(), Invalid> {
        if config.epochs == 0 {
            return Err(Invalid::at("epochs", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(Invalid::at("dropout", "must be in [0, 1)"));
        }
        Ok(())
    }

    fn uses_seed(&self, _config: &FitConfig) -> bool {
        true
    }

    fn run(&self, config: &FitConfig, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let text = format!("lr={} epochs={} seed={}", config.optimizer.lr, config.epochs, ctx.seed);
        log_run(&format!("start fit {text}"));
        std::fs::write(ctx.out_dir.join("model.txt"), text)?;
        Ok(StageOutcome::default())
    }
}

/// The test kinds.
pub fn registry() -> Registry {
    Registry::new().with(StepStage).with(FitStage)
}
