//! The train, evaluate and report stages on real data through the real
//! `pipeline` binary: the sample pipeline end to end, reproducible weights,
//! recurrent models with every pooling, GloVe embeddings and NaN handling.

mod common;

use std::path::Path;

use common::project::Project;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn metric(result: &serde_json::Value, stage: &str, name: &str) -> f64 {
    let stages = result["stages"].as_array().unwrap();
    let stage = stages.iter().find(|s| s["name"] == stage).unwrap();
    stage["metrics"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no metric {name} in {stage}"))
}

/// The sample pipeline's data stages with `train` added.
fn sample(train: &str) -> String {
    let base =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/imdb-sample.yaml")).unwrap();
    let data = &base[..base.find("  train:").expect("the sample has a train stage")];
    format!(
        "{data}  train:\n{train}  evaluate:\n    needs: [train, vectorize]\n  report:\n    needs: [train, evaluate]\n"
    )
}

#[test]
fn sample_pipeline_trains_evaluates_and_reports() {
    let project = Project::new();
    let file = project.copy("imdb-sample.yaml");
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
    let train = project.out(&result, "train");
    for file in [
        "model.safetensors",
        "best.safetensors",
        "model.bpk",
        "train.json",
        "history.csv",
    ] {
        assert!(train.join(file).exists(), "{file}");
    }
    let history = std::fs::read_to_string(train.join("history.csv")).unwrap();
    let header = history.lines().next().unwrap();
    for column in [
        "step",
        "loss",
        "learning_rate",
        "grad_norm",
        "eval_loss",
        "eval_accuracy",
    ] {
        assert!(header.split(',').any(|c| c == column), "{column} in {header}");
    }
    // 1,800 reviews and 3 epochs give about 0.59 on the 1,000 balanced test
    // reviews; chance would stay within 0.5 +- 0.05 (3 standard deviations).
    let accuracy = metric(&result, "evaluate", "test_accuracy");
    assert!(accuracy > 0.55, "test accuracy {accuracy}");
    let evaluate = project.out(&result, "evaluate");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(evaluate.join("metrics.json")).unwrap()).unwrap();
    let confusion = metrics["test"]["confusion"].as_array().unwrap();
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 1000);
    assert!(evaluate.join("predictions-test.parquet").exists());
    let report = project.out(&result, "report");
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Confusion matrix: test"));
    assert!(!html.contains("src=") && !html.contains("<link") && !html.contains("<script"));
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("![Loss](loss.svg)") && report.join("loss.svg").exists());
    assert!(md.contains("| test |"), "{md}");
    // The run ends with its results; `metrics` prints them again from the store.
    let results = &result["results"];
    assert_eq!(results["scores"][0]["stage"], "evaluate");
    assert_eq!(results["scores"][0]["splits"]["test"]["accuracy"], accuracy);
    let files: Vec<&str> = results["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["what"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["model", "report"]);
    assert!(Path::new(results["files"][1]["path"].as_str().unwrap()).ends_with("report.html"));
    let again = project.run(&["run", &file]);
    let text = stderr(&again);
    assert!(
        text.contains("evaluate:") && text.contains("accuracy") && text.contains("report:") && text.contains("model:"),
        "{text}"
    );
    let md = project.run(&["metrics", &file, "--md"]);
    let md = String::from_utf8_lossy(&md.stdout).into_owned();
    assert!(
        md.starts_with("| split | accuracy |") && md.contains(&format!("| test | {accuracy} |")),
        "{md}"
    );
    let (code, diff) = project.run_json(&["metrics", &file, "--diff"], &[]);
    assert_eq!(code, 0, "{diff}");
    assert!(
        diff["diff"].as_array().unwrap().iter().all(|r| r["change"] == "+0"),
        "{diff}"
    );
    let (code, _) = project.run_json(&["metrics", &file, "--set", "stages.train.epochs=1"], &[]);
    assert_eq!(code, 1, "not in the store for that configuration");
}

#[test]
fn training_gives_the_same_outputs_in_fresh_stores_and_thread_counts() {
    let weights = |threads: &str| {
        let project = Project::with_full_data();
        let file = project.copy("imdb-cnn.yaml");
        let max_steps = "stages.train.max_steps=200";
        let threads = format!("stages.train.threads={threads}");
        let (code, result) = project.run_json(&["run", &file, "--set", max_steps, "--set", &threads], &[]);
        assert_eq!(code, 0, "{result}");
        let out = project.out(&result, "train");
        ["model.safetensors", "train.json", "history.csv"].map(|f| std::fs::read(out.join(f)).unwrap())
    };
    let first = weights("1");
    assert_eq!(first, weights("1"), "two fresh runs differ");
    assert_eq!(first, weights("2"), "one and two threads differ");
}

#[test]
fn recurrent_models_train_with_every_pooling() {
    for (kind, pooling, extra) in [
        ("rnn", "last", "bidirectional: true"),
        ("lstm", "mean", "num_layers: 2, dropout: 0.2"),
        ("gru", "max", "layer_norm: true, head: [16], recurrent_init: orthogonal"),
        ("rnn", "attention", "init: xavier_uniform"),
    ] {
        let project = Project::new();
        let train = format!(
            "    model: {{type: {kind}, hidden_size: 16, pooling: {pooling}, {extra}}}\n    max_steps: 20\n    eval_steps: 10\n    clip_grad_norm: 1.0\n"
        );
        let file = project.write("rec.yaml", &sample(&train));
        let (code, result) = project.run_json(&["run", &file], &[]);
        assert_eq!(code, 0, "{kind}/{pooling}: {result}");
        let loss = metric(&result, "evaluate", "test_loss");
        assert!(loss.is_finite() && loss > 0.0, "{kind}/{pooling}: {loss}");
    }
}

#[test]
fn a_diverging_loss_stops_with_a_hint_and_no_entry() {
    let project = Project::new();
    let train = "    model: {type: cnn}\n    optimizer: {type: sgd, lr: 1.0e+30}\n    max_steps: 50\n";
    let file = project.write("nan.yaml", &sample(train));
    let output = project.run(&["run", &file]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("the loss is") && err.contains("lower the learning rate"),
        "{err}"
    );
    assert!(!project.dir.path().join("store/train").exists(), "no train entry");
}

#[test]
fn glove_vectors_fill_the_embedding_and_stay_frozen() {
    let project = Project::with_full_data();
    let base =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/imdb-sample.yaml")).unwrap();
    let data = &base[..base.find("  tokenize:").unwrap()];
    let glove = "../../shared/data/glove/glove.6B.100d.first2604.txt.gz";
    let text = format!(
        "{data}  tokenize:\n    tokenizer: {{word: {{min_freq: 2}}}}\n    max_length: 64\n  vectorize:\n    batch_size: 16\n  \
         train:\n    model: {{type: rnn, embedding_dim: 100, glove: {glove}, freeze: true, hidden_size: 8, pooling: attention}}\n    \
         max_steps: 5\n    needs: [vectorize, tokenize]\n"
    );
    let file = project.write("glove.yaml", &text);
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
    let tokenizer = tokenizers::Tokenizer::from_file(project.out(&result, "tokenize").join("tokenizer.json")).unwrap();
    let the = tokenizer.token_to_id("the").expect("`the` is in the vocabulary") as usize;
    let bytes = std::fs::read(project.out(&result, "train").join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let embedding = file.tensor("embedding.weight").unwrap();
    assert_eq!(embedding.shape()[1], 100);
    let row: Vec<f32> = embedding.data()[the * 400..(the + 1) * 400]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // The first line of the GloVe file is `the` (frozen, so unchanged by training).
    let mut first = String::new();
    use std::io::BufRead;
    let gz = flate2::read::GzDecoder::new(
        std::fs::File::open(common::project::data_root().join("glove/glove.6B.100d.first2604.txt.gz")).unwrap(),
    );
    std::io::BufReader::new(gz).read_line(&mut first).unwrap();
    let expected: Vec<f32> = first.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    assert_eq!(row, expected);
    let pad = tokenizer.token_to_id("<pad>").unwrap() as usize;
    assert!(
        embedding.data()[pad * 400..(pad + 1) * 400].iter().all(|&b| b == 0),
        "the padding row is zero"
    );
}

/// The `loss` then the `eval_loss` values of a train stage's history.csv.
#[cfg(feature = "tch")]
fn losses(out: &Path) -> Vec<f64> {
    let history = pipeline::train::history::History::read_csv(&out.join("history.csv")).unwrap();
    ["loss", "eval_loss"]
        .iter()
        .flat_map(|name| history.series(name))
        .map(|(_, value)| value)
        .collect()
}

/// libtorch (the `tch` feature's backend; here on the CPU, as `cuda:N` runs
/// the same code on a GPU) trains every model kind to the losses flex gives,
/// within float rounding, and gives the same weights run after run.
#[cfg(feature = "tch")]
#[test]
fn libtorch_trains_every_model_like_flex_and_reproducibly() {
    for model in [
        "{type: cnn, embedding_dim: 16, num_filters: 8}",
        "{type: rnn, hidden_size: 16, bidirectional: true, pooling: last}",
        "{type: lstm, hidden_size: 16, num_layers: 2, dropout: 0.2, pooling: mean}",
        "{type: gru, hidden_size: 16, pooling: attention}",
    ] {
        let train = format!("    model: {model}\n    max_steps: 20\n    eval_steps: 10\n    logging_steps: 5\n");
        let run = |device: &str| {
            let project = Project::new();
            let file = project.write("m.yaml", &sample(&train));
            let (code, result) = project.run_json(&["run", &file, "--set", &format!("device={device}")], &[]);
            assert_eq!(code, 0, "{model} on {device}: {result}");
            let out = project.out(&result, "train");
            let weights = std::fs::read(out.join("model.safetensors")).unwrap();
            (losses(&out), metric(&result, "evaluate", "test_loss"), weights)
        };
        let flex = run("cpu");
        let torch = run("libtorch");
        assert_eq!(flex.0.len(), torch.0.len(), "{model}");
        for (a, b) in flex.0.iter().chain([&flex.1]).zip(torch.0.iter().chain([&torch.1])) {
            assert!(
                (a - b).abs() <= 1e-3 * a.abs().max(1.0),
                "{model}: flex {:?} libtorch {:?}",
                flex.0,
                torch.0
            );
        }
        assert!(torch == run("libtorch"), "{model}: two libtorch runs differ");
    }
}

#[test]
fn model_keys_are_checked_per_architecture_with_located_errors() {
    let project = Project::new();
    let cases = [
        // A key of another architecture set to something else than its default.
        (
            "    model: {type: cnn, dropout: 0.5}\n",
            "`model.dropout` of stage `train`: does not apply to `type: cnn`; remove it",
            "dropout: 0.5",
        ),
        // A misspelt key below the model keeps its suggestion.
        (
            "    model: {type: gru, hiden_size: 8}\n",
            "unknown key `hiden_size` in `model` of stage `train`",
            "did you mean `hidden_size`?",
        ),
        // A wrong type below the model is located at the value.
        (
            "    model: {type: rnn, num_layers: many}\n",
            "`model.num_layers` of stage `train` must be a non-negative integer",
            "num_layers: many",
        ),
        (
            "    model: {type: transformer}\n",
            "`model.type` of stage `train` cannot be `transformer`",
            "expected one of `cnn`, `rnn`, `lstm`, `gru`",
        ),
        // A model that cannot fit in memory is refused with the estimate, before anything runs.
        (
            "    model: {type: cnn, embedding_dim: 4000000000}\n",
            "`model` of stage `train` is too large to train: it needs about 2.0 TB (1.240e11 parameters",
            "model:",
        ),
    ];
    for (model, message, detail) in cases {
        let file = project.write("bad-model.yaml", &sample(model));
        let output = project.run(&["plan", &file]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{err}");
        assert!(err.contains(message) && err.contains(detail), "{err}");
        assert!(err.contains("pipelines/bad-model.yaml:"), "located: {err}");
    }
    // At its default, such a key is accepted and leaves the cache key as it was.
    let plain = project.write("plain.yaml", &sample("    model: {type: cnn}\n"));
    let defaulted = project.write(
        "defaulted.yaml",
        &sample("    model: {type: cnn, dropout: 0.0, hidden_size: 64}\n"),
    );
    let key = |file: &str| {
        let (code, plan) = project.run_json(&["plan", file], &[]);
        assert_eq!(code, 0, "{plan}");
        plan["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "train")
            .unwrap()["key"]
            .clone()
    };
    assert_eq!(key(&plain), key(&defaulted));
}

#[test]
fn a_kernel_wider_than_the_rows_is_an_error_and_short_batches_are_padded() {
    let project = Project::new();
    // 1000 wide over rows of at most 128 tokens: refused before training, no entry.
    let file = project.write(
        "wide.yaml",
        &sample("    model: {type: cnn, embedding_dim: 8, filter_size: 1000, padding: 0}\n    epochs: 1\n"),
    );
    let output = project.run(&["run", &file]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "`model.filter_size`: 1000 is wider than the longest row (128 tokens) plus the padding (0 on each side)"
        ),
        "{err}"
    );
    // Wider than some batches but not the rows: short batches are zero-padded (the kernel used to index past them).
    let file = project.write(
        "wide-default.yaml",
        &sample("    model: {type: cnn, embedding_dim: 8, filter_size: 200}\n    max_steps: 3\n"),
    );
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
    let file = project.write(
        "narrow-padding.yaml",
        &sample("    model: {type: cnn, embedding_dim: 8, filter_size: 100, padding: 0}\n    max_steps: 3\n"),
    );
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
}

#[test]
fn evaluate_scores_the_eval_split_exactly_as_training_did() {
    // Rows are padded to the longest of their batch, and a CNN pools over the
    // padding, an RNN's backward direction runs through it: the evaluation
    // batches must be the training's for the two scores to agree.
    for model in [
        "{type: cnn, embedding_dim: 16, num_filters: 8}",
        "{type: gru, embedding_dim: 16, hidden_size: 8, bidirectional: true}",
        // Kim's CNN: several kernel widths, dropout before the head.
        "{type: cnn, embedding_dim: 16, num_filters: 4, filter_sizes: [2, 3, 5], head_dropout: 0.5}",
        // TF-IDF's document frequencies travel with the weights to `evaluate`.
        "{type: bow, features: tfidf, ngrams: 2, l2: 1.0e-4}",
    ] {
        let project = Project::new();
        let train = format!(
            "    model: {model}\n    batch_size: 16\n    max_steps: 40\n    eval_steps: 20\n    load_best_at_end: true\n"
        );
        let file = project.write(
            "p.yaml",
            &sample(&train).replace("batch_size: 8", "batch_size: 8\n    bucket: 4"),
        );
        let (code, result) = project.run_json(&["run", &file], &[]);
        assert_eq!(code, 0, "{result}");
        assert_eq!(
            metric(&result, "train", "best_eval_loss"),
            metric(&result, "evaluate", "validation_loss"),
            "{model}"
        );
    }
}

#[test]
fn a_bag_of_words_baseline_learns_the_sample() {
    // TF-IDF over tokens and hashed bigrams, logistic regression with an L2
    // penalty: 0.76 on the 1,000 test reviews here (the sample CNN: 0.59;
    // chance stays within 0.5 +- 0.05).
    let project = Project::new();
    let train = "    model: {type: bow, features: tfidf, ngrams: 2, l2: 1.0e-5}\n    optimizer: {type: adam, lr: 1.0e-2}\n    epochs: 5\n    metric: eval_accuracy\n    load_best_at_end: true\n";
    let file = project.write("bow.yaml", &sample(train));
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
    let accuracy = metric(&result, "evaluate", "test_accuracy");
    assert!(accuracy > 0.7, "test accuracy {accuracy}");
    // A bad setting is a located error.
    let output = project.run(&["plan", &file, "--set", "stages.train.model.ngrams=3"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("must be 1 (tokens) or 2"),
        "{}",
        stderr(&output)
    );
}
