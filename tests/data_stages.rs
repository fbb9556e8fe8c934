//! The data stages on real files: the repo's IMDB sample, the bert-base-cased
//! tokenizer, GLUE MRPC from ../shared/data, and Hub/URL downloads from a
//! local server. Each test runs the real `pipeline` binary in a scratch
//! project whose `data` and `shared` point at the real ones.

mod common;

use std::path::Path;
use std::process::Output;

use common::http::Server;
use common::project::Project;
use pipeline::data::batches::SplitTensors;
use polars::prelude::*;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn read_parquet(path: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(path).unwrap()).finish().unwrap()
}

fn ids_column(df: &DataFrame) -> Vec<Vec<u32>> {
    list_column(df, "ids")
}

fn list_column(df: &DataFrame, name: &str) -> Vec<Vec<u32>> {
    df.column(name)
        .unwrap()
        .list()
        .unwrap()
        .series_iter()
        .map(|s| s.unwrap().u32().unwrap().no_null_iter().collect())
        .collect()
}

#[test]
fn the_sample_pipeline_loads_splits_tokenizes_and_vectorizes() {
    let project = Project::new();
    let file = project.copy("imdb-sample.yaml");
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
    let split = project.out(&result, "split");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(split.join("table.json")).unwrap()).unwrap();
    assert_eq!(meta["splits"], serde_json::json!(["train", "validation", "test"]));
    let stages = result["stages"].as_array().unwrap();
    let metrics = &stages.iter().find(|s| s["name"] == "split").unwrap()["metrics"];
    assert_eq!(metrics["rows.train"], 1800.0);
    assert_eq!(metrics["rows.validation"], 200.0);
    assert_eq!(metrics["rows.validation.label_0"], 100.0, "stratified: {metrics}");
    let tokenized = read_parquet(&project.out(&result, "tokenize").join("validation.parquet"));
    let lengths: Vec<u32> = tokenized
        .column("length")
        .unwrap()
        .u32()
        .unwrap()
        .no_null_iter()
        .collect();
    assert!(lengths.iter().all(|&l| (3..=128).contains(&l)));
    let ids = ids_column(&tokenized);
    assert!(
        ids.iter().all(|row| row[0] == 101 && *row.last().unwrap() == 102),
        "[CLS] ... [SEP]"
    );
    let tensors = SplitTensors::load(&project.out(&result, "vectorize").join("validation.safetensors")).unwrap();
    assert_eq!(tensors.rows(), 200);
    assert_eq!(tensors.width, *lengths.iter().max().unwrap() as usize);
    assert_eq!(tensors.lengths, lengths);
    assert_eq!(&tensors.ids[..lengths[0] as usize], ids[0].as_slice());
}

#[test]
fn data_stages_give_the_committed_bytes_with_one_or_two_threads() {
    let hashes = |jobs: &str| {
        let project = Project::new();
        let file = project.copy("imdb-sample.yaml");
        let output = project.run(&["run", &file, "--jobs", jobs]);
        assert!(output.status.success(), "{}", stderr(&output));
        let lock = std::fs::read_to_string(project.main().join("pipelines/imdb-sample.lock")).unwrap();
        let verify = project.run(&["verify", &file]);
        assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
        lock
    };
    let one = hashes("1");
    assert_eq!(one, hashes("2"));
    // The committed lock is a golden file: output bytes that change need a new
    // lock, and a `VERSION` bump of the stage kinds whose output changed.
    let committed = std::fs::read_to_string("pipelines/imdb-sample.lock").unwrap();
    assert_eq!(
        one, committed,
        "pipelines/imdb-sample.lock is out of date: run `make run` and commit it"
    );
}

#[test]
fn bert_ids_equal_the_python_tokenizers_library() {
    let project = Project::new();
    let file = project.write(
        "ids.yaml",
        "name: ids
seed: 0
stages:
  data: {kind: download, source: ../data/imdb-sample/train.parquet}
  load: {splits: {train: train.parquet}, limit: 300}
  tokenize:
    tokenizer: {pretrained: ../data/tokenizers/bert-base-cased/tokenizer.json}
    max_length: 128
",
    );
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
    let ours = ids_column(&read_parquet(&project.out(&result, "tokenize").join("train.parquet")));
    let fixture = std::fs::read_to_string("tests/fixtures/bert-base-cased-128-sample-ids.txt").unwrap();
    let expected: Vec<Vec<u32>> = fixture
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(' ').map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(expected.len(), 300);
    assert_eq!(ours, expected);
}

#[test]
fn truncation_side_left_keeps_the_end_of_long_texts() {
    let project = Project::new();
    let yaml = |name: &str, tokenize: &str| {
        project.write(
            &format!("{name}.yaml"),
            &format!(
                "name: {name}
seed: 0
stages:
  data: {{kind: download, source: ../data/imdb-sample/train.parquet}}
  load: {{splits: {{train: train.parquet}}, limit: 50}}
  tokenize:
    tokenizer: {{pretrained: ../data/tokenizers/bert-base-cased/tokenizer.json}}
{tokenize}"
            ),
        )
    };
    let ids = |file: String| {
        let (code, result) = project.run_json(&["run", &file], &[]);
        assert_eq!(code, 0, "{result}");
        ids_column(&read_parquet(&project.out(&result, "tokenize").join("train.parquet")))
    };
    let full = ids(yaml("full", "    max_length: 4096\n"));
    let left = ids(yaml("left", "    max_length: 16\n    truncation_side: left\n"));
    let right = ids(yaml("right", "    max_length: 16\n"));
    for ((full, left), right) in full.iter().zip(&left).zip(&right) {
        let (cls, sep, words) = (full[0], full[full.len() - 1], &full[1..full.len() - 1]);
        if words.len() <= 14 {
            assert_eq!((left, right), (full, full));
            continue;
        }
        let expected_left = [&[cls][..], &words[words.len() - 14..], &[sep]].concat();
        let expected_right = [&[cls][..], &words[..14], &[sep]].concat();
        assert_eq!((left, right), (&expected_left, &expected_right));
    }
}

#[test]
fn full_imdb_train_ids_equal_the_python_tokenizers_library() {
    let project = Project::with_full_data();
    let file = project.write(
        "full.yaml",
        "name: full
seed: 0
stages:
  data: {kind: download, source: ../../shared/data/imdb/train.parquet}
  load: {splits: {train: train.parquet}}
  tokenize:
    tokenizer: {pretrained: ../data/tokenizers/bert-base-cased/tokenizer.json}
    max_length: 128
",
    );
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
    let ids = ids_column(&read_parquet(&project.out(&result, "tokenize").join("train.parquet")));
    assert_eq!(ids.len(), 25_000);
    let mut hasher = sha2::Sha256::new();
    use sha2::Digest;
    for row in &ids {
        hasher.update((row.len() as u32).to_le_bytes());
        for id in row {
            hasher.update(id.to_le_bytes());
        }
    }
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let fixture = std::fs::read_to_string("tests/fixtures/imdb-train-bert-base-cased-128.sha256").unwrap();
    assert_eq!(digest, fixture.lines().last().unwrap());
}

#[test]
fn a_word_vocabulary_is_trained_on_the_train_split_only() {
    let project = Project::new();
    let file = project.copy("imdb-words.yaml");
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
    let out = project.out(&result, "tokenize");
    let tokenizer = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.token_to_id("<unk>"), Some(0));
    assert_eq!(tokenizer.token_to_id("<pad>"), Some(1));
    // Words that occur only in the test split are unknown.
    let test = ids_column(&read_parquet(&out.join("test.parquet")));
    assert!(test.iter().flatten().any(|&id| id == 0));
    let tensors = SplitTensors::load(&project.out(&result, "vectorize").join("test.safetensors")).unwrap();
    let first_len = tensors.lengths[0] as usize;
    let row = &tensors.ids[..tensors.width];
    assert!(
        row[..tensors.width - first_len].iter().all(|&id| id == 1),
        "left padding with <pad>"
    );
    let lock = std::fs::read_to_string(project.main().join("pipelines/imdb-words.lock")).unwrap();
    assert_eq!(
        lock,
        std::fs::read_to_string("pipelines/imdb-words.lock").unwrap(),
        "pipelines/imdb-words.lock is out of date: run the pipeline and commit it"
    );
}

#[test]
fn mrpc_sentence_pairs_are_tokenized_as_pairs() {
    let project = Project::with_full_data();
    let file = project.copy("mrpc.yaml");
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
    let validation = read_parquet(&project.out(&result, "tokenize").join("validation.parquet"));
    assert_eq!(validation.height(), 408);
    let ids = ids_column(&validation);
    assert!(
        ids.iter().all(|row| row.iter().filter(|&&id| id == 102).count() == 2),
        "two [SEP]"
    );
    // Segment ids: 0 through the first [SEP], 1 after, as `transformers` gives them.
    let types = list_column(&validation, "type_ids");
    for (row, types) in ids.iter().zip(&types) {
        let first_sep = row.iter().position(|&id| id == 102).unwrap();
        let expected: Vec<u32> = (0..row.len()).map(|i| u32::from(i > first_sep)).collect();
        assert_eq!(types, &expected);
    }
    // ... and they reach the model-ready tensors, padded like the ids.
    let tensors = SplitTensors::load(&project.out(&result, "vectorize").join("validation.safetensors")).unwrap();
    let padded = tensors.type_ids.expect("pairs keep their segment ids");
    assert_eq!(padded.len(), tensors.ids.len());
    for (r, types) in types.iter().enumerate() {
        let row = &padded[r * tensors.width..(r + 1) * tensors.width];
        assert_eq!(&row[..types.len()], types.as_slice());
        assert!(row[types.len()..].iter().all(|&t| t == 0));
    }
}

#[test]
fn string_labels_are_mapped_to_ids_and_the_mapping_recorded() {
    let project = Project::new();
    std::fs::write(
        project.main().join("reviews.csv"),
        "review,sentiment\n\"great, really\",pos\nawful,neg\nfine,pos\n",
    )
    .unwrap();
    std::fs::write(
        project.main().join("more.jsonl"),
        "{\"review\": \"meh\", \"sentiment\": \"neg\"}\n",
    )
    .unwrap();
    let file = project.write(
        "csv.yaml",
        "name: csv
seed: 0
stages:
  a: {kind: download, source: ../reviews.csv}
  b: {kind: download, source: ../more.jsonl, needs: []}
  load:
    splits: {train: reviews.csv, test: more.jsonl}
    columns: {text: review, label: sentiment}
    needs: [a, b]
",
    );
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
    let out = project.out(&result, "load");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("table.json")).unwrap()).unwrap();
    assert_eq!(meta["label_names"], serde_json::json!(["neg", "pos"]));
    let train = read_parquet(&out.join("train.parquet"));
    let labels: Vec<i64> = train.column("label").unwrap().i64().unwrap().no_null_iter().collect();
    assert_eq!(labels, [1, 0, 1]);
    assert_eq!(
        train.column("text").unwrap().str().unwrap().get(0),
        Some("great, really")
    );
}

#[test]
fn filter_and_limit_select_rows() {
    let project = Project::new();
    let file = project.write(
        "filter.yaml",
        "name: filter
seed: 0
stages:
  data: {kind: download, source: ../data/imdb-sample/test.parquet}
  load:
    splits: {test: test.parquet}
    filter: ['rating >= 9', 'label == 1']
    limit: 50
",
    );
    let (code, result) = project.run_json(&["run", &file], &[]);
    assert_eq!(code, 0, "{result}");
    let metrics = &result["stages"][1]["metrics"];
    assert_eq!(metrics["rows.test"], 50.0);
    assert_eq!(metrics["rows.test.label_1"], 50.0);
}

#[test]
fn shuffle_limit_keeps_a_seeded_sample_the_prefix_of_the_full_shuffle() {
    let project = Project::new();
    let pipeline = |limit: &str| {
        format!(
            "name: sample
seed: 7
stages:
  data: {{kind: download, source: ../data/imdb-sample/test.parquet}}
  load:
    splits: {{test: test.parquet}}
  shuffle: {{{limit}}}
"
        )
    };
    let texts = |file: &str| {
        let (code, result) = project.run_json(&["run", file], &[]);
        assert_eq!(code, 0, "{result}");
        let df = read_parquet(&project.out(&result, "shuffle").join("test.parquet"));
        let labels: Vec<i64> = df
            .column("label")
            .unwrap()
            .cast(&DataType::Int64)
            .unwrap()
            .i64()
            .unwrap()
            .no_null_iter()
            .collect();
        let texts: Vec<String> = df
            .column("text")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|t| t.unwrap().to_string())
            .collect();
        (texts, labels)
    };
    let (all, _) = texts(&project.write("all.yaml", &pipeline("")));
    let (sample, labels) = texts(&project.write("sample.yaml", &pipeline("limit: 40")));
    assert_eq!(sample.len(), 40);
    assert_eq!(
        sample,
        all[..40],
        "the sample is the first rows of the same permutation"
    );
    assert!(
        labels.contains(&0) && labels.contains(&1),
        "a random sample of label-sorted rows mixes labels: {labels:?}"
    );
    let output = project.run(&["plan", &project.write("zero.yaml", &pipeline("limit: 0"))]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("limit"), "{}", stderr(&output));
}

/// Runs a pipeline that must fail; returns stderr and checks no entry was left for the failing stage.
fn fails(project: &Project, yaml: &str, entries_before_failure: usize) -> String {
    let file = project.write("bad.yaml", yaml);
    let output = project.run(&["run", &file]);
    assert_ne!(output.status.code(), Some(0));
    assert_eq!(project.entries(), entries_before_failure, "{}", stderr(&output));
    assert_eq!(
        std::fs::read_dir(project.dir.path().join("store/.tmp")).map_or(0, |d| d.count()),
        0,
        "no build directory is left"
    );
    stderr(&output)
}

#[test]
fn bad_input_gets_a_specific_error_and_leaves_no_entry() {
    let header = "name: bad\nseed: 0\nstages:\n";
    let project = Project::new();
    let err = fails(
        &project,
        &format!("{header}  d: {{kind: download, source: ../data/missing.parquet}}\n"),
        0,
    );
    assert!(
        err.contains("stage `d`: `source` names pipelines/../data/missing.parquet, which does not exist")
            && err.contains("relative to the pipeline file's directory, pipelines")
            && err.contains("bad.yaml:4:"),
        "{err}"
    );
    // Known before anything runs, as a located usage error with the closest name.
    let typo = project.write(
        "typo.yaml",
        &format!("{header}  d:\n    kind: download\n    source: ../data/imdb-sample/trian.parquet\n"),
    );
    let output = project.run(&["plan", &typo]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("typo.yaml:6:") && err.contains("did you mean pipelines/../data/imdb-sample/train.parquet?"),
        "{err}"
    );
    // Unquoted: 64 digits are read as written, not as a number.
    let pin = "3".repeat(64);
    let err = fails(
        &project,
        &format!("{header}  d: {{kind: download, source: ../data/imdb-sample/test.parquet, sha256: {pin}}}\n"),
        0,
    );
    assert!(
        err.contains("sha256 of test.parquet") && err.contains(&format!("pipeline pins {pin}")),
        "{err}"
    );
    let err = fails(
        &project,
        &format!("{header}  d: {{kind: download, source: ../data/imdb-sample/test.parquet, sha256: 12}}\n"),
        0,
    );
    assert!(err.contains("must be a sha256 in hex (64 digits, quoted"), "{err}");
    let download = "  d: {kind: download, source: ../data/imdb-sample/test.parquet}\n";
    let err = fails(
        &project,
        &format!("{header}{download}  load: {{splits: {{test: test.parquet}}, columns: {{text: review}}}}\n"),
        1,
    );
    assert!(
        err.contains("test.parquet has no column `review`; its columns are `text`, `label`, `review_id`, `rating`"),
        "{err}"
    );
    // Found at run time, but still the user's to fix: exit 2, at the key's
    // line, with the closest column or the files the needed stages produced.
    for (load, at, expected) in [
        (
            "  load:\n    splits: {test: test.parquet}\n    columns: {text: txet}\n",
            "runtime.yaml:7:",
            "did you mean `text`?",
        ),
        (
            "  load:\n    splits: {test: tset.parquet}\n",
            "runtime.yaml:6:",
            "they produced `test.parquet`",
        ),
    ] {
        let file = project.write("runtime.yaml", &format!("{header}{download}{load}"));
        let output = project.run(&["run", &file]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{err}");
        assert!(err.contains(at) && err.contains(expected), "{err}");
    }
    let err = fails(
        &project,
        &format!("{header}{download}  load: {{splits: {{test: test.parquet}}, filter: ['label == 7']}}\n"),
        1,
    );
    assert!(
        err.contains("split `test` (test.parquet) is empty after `filter`"),
        "{err}"
    );
    let err = fails(
        &project,
        &format!(
            "{header}{download}  load: {{splits: {{test: test.parquet}}, columns: {{label: text}}, labels: [x]}}\n"
        ),
        1,
    );
    assert!(err.contains("is not listed in `labels`"), "{err}");
    std::fs::write(project.main().join("floats.csv"), "text,label\na,0.5\nb,1.5\n").unwrap();
    let err = fails(
        &project,
        &format!("{header}  f: {{kind: download, source: ../floats.csv}}\n  load: {{splits: {{train: floats.csv}}}}\n"),
        2,
    );
    assert!(
        err.contains("holds f64 values; labels must be integers or strings"),
        "{err}"
    );
    std::fs::write(project.main().join("broken.json"), "{\"model\": 3}").unwrap();
    let err = fails(
        &project,
        &format!(
            "{header}{download}  load: {{splits: {{test: test.parquet}}}}\n  tokenize: {{tokenizer: {{pretrained: ../broken.json}}}}\n"
        ),
        3,
    );
    assert!(
        err.contains("the tokenizer from ../broken.json does not parse"),
        "{err}"
    );
    let err = fails(
        &project,
        &format!(
            "{header}{download}  load: {{splits: {{test: test.parquet}}}}\n  tokenize: {{tokenizer: {{pretrained: x.json}}, max_length: 0}}\n"
        ),
        3,
    );
    assert!(
        err.contains("bad.yaml:6:59") && err.contains("`max_length` of stage `tokenize` must be at least 1"),
        "{err}"
    );
    // Below the special tokens: the tokenizers crate would overflow.
    let err = fails(
        &project,
        &format!(
            "{header}{download}  load: {{splits: {{test: test.parquet}}}}\n  tokenize: {{tokenizer: {{pretrained: ../data/tokenizers/bert-base-cased/tokenizer.json}}, max_length: 1}}\n"
        ),
        3,
    );
    assert!(
        err.contains(
            "`max_length` 1: the tokenizer adds 2 special tokens to each text, so `max_length` must be at least 3"
        ),
        "{err}"
    );
}

#[test]
fn downloads_from_the_hub_and_urls_go_through_a_local_server() {
    let server = Server::start();
    let parquet = std::fs::read("data/imdb-sample/test.parquet").unwrap();
    let tokenizer = std::fs::read("data/tokenizers/bert-base-cased/tokenizer.json").unwrap();
    server.add(
        "/datasets/stanfordnlp/imdb/resolve/main/plain_text/test.parquet",
        parquet.clone(),
    );
    server.add("/bert-base-cased/resolve/main/tokenizer.json", tokenizer.clone());
    server.add("/files/test.parquet", parquet.clone());
    let project = Project::new();
    let hf_home = project.dir.path().join("hf-home");
    let hf_home = hf_home.to_str().unwrap();
    let env = [("HF_ENDPOINT", server.url.as_str()), ("HF_HOME", hf_home)];
    let file = project.write(
        "hub.yaml",
        &format!(
            "name: hub
seed: 0
stages:
  data:
    kind: download
    source: hf://datasets/stanfordnlp/imdb
    files: [plain_text/test.parquet]
  url: {{kind: download, source: '{}/files/test.parquet', needs: []}}
  load: {{splits: {{test: plain_text/test.parquet}}, needs: [data]}}
  tokenize:
    tokenizer: {{pretrained: 'hf://bert-base-cased'}}
    max_length: 32
",
            server.url
        ),
    );
    server.fail_next(2);
    let (code, result) = project.run_json(&["run", &file], &env);
    assert_eq!(code, 0, "{result}");
    assert_eq!(
        std::fs::read(project.out(&result, "data").join("plain_text/test.parquet")).unwrap(),
        parquet
    );
    assert_eq!(
        std::fs::read(project.out(&result, "url").join("test.parquet")).unwrap(),
        parquet
    );
    assert_eq!(
        std::fs::read(project.out(&result, "tokenize").join("tokenizer.json")).unwrap(),
        tokenizer
    );
    // Offline, the Hub files come from the Hugging Face cache in HF_HOME.
    std::fs::remove_dir_all(project.dir.path().join("store")).unwrap();
    let requests = server.request_count();
    let offline = [
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
        ("HF_HOME", hf_home),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let (code, result) = project.run_json(
        &[
            "run",
            &file,
            "--set",
            "stages.url.source=../data/imdb-sample/test.parquet",
        ],
        &offline,
    );
    assert_eq!(code, 0, "{result}");
    assert_eq!(server.request_count(), requests, "no request while offline");
    // A 404 and an unreachable host are explained, and leave no entry.
    let missing = format!("{}/files/missing.parquet", server.url);
    let output = project.run_env(&["run", &file, "--set", &format!("stages.url.source={missing}")], &env);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!("{missing} answered 404 Not Found")),
        "{}",
        stderr(&output)
    );
    std::fs::remove_dir_all(project.dir.path().join("store")).unwrap();
    let unreachable = [("HF_ENDPOINT", "http://127.0.0.1:9"), ("HF_HOME", hf_home)];
    let output = project.run_env(&["run", &file, "--set", "stages.data.revision=v2"], &unreachable);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("are you offline?"), "{}", stderr(&output));
    assert_eq!(project.entries(), 1, "only the URL download finished");
}

#[test]
fn ctrl_c_stops_tokenize_within_a_fraction_of_a_second() {
    use std::io::BufRead as _;
    let project = Project::with_full_data();
    let file = project.write(
        "tokenize-imdb.yaml",
        "name: tokenize-imdb
seed: 0
stages:
  data: {kind: download, source: ../../shared/data/imdb/train.parquet}
  load: {splits: {train: train.parquet}}
  tokenize: {tokenizer: {pretrained: ../data/tokenizers/bert-base-cased/tokenizer.json}, max_length: 512}
",
    );
    let mut child = project
        .command(&["run", &file, "--jobs", "1"], &[])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("running  tokenize"))
    );
    std::thread::sleep(std::time::Duration::from_millis(700));
    let interrupted = std::time::Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    std::thread::spawn(move || lines.for_each(drop));
    let status = child.wait().unwrap();
    let took = interrupted.elapsed();
    assert_eq!(status.code(), Some(130));
    // 25,000 long reviews in chunks of 2,048 took 4-4.7 s to stop.
    assert!(took.as_secs_f64() < 1.5, "Ctrl-C took {took:?}");
    assert_eq!(project.entries(), 2, "tokenize left no entry");
}

#[test]
fn a_local_source_may_be_any_readable_file_and_the_lock_names_it() {
    // Outside the checkout, reached through `..`: allowed (a pipeline is code its user runs),
    // and its path and content hash are on record in the lock.
    let project = Project::new();
    let outside = project.dir.path().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy("data/imdb-sample/test.parquet", outside.join("reviews.parquet")).unwrap();
    let file = project.write(
        "outside.yaml",
        "name: outside
seed: 0
stages:
  data: {kind: download, source: ../../elsewhere/reviews.parquet}
",
    );
    let output = project.run(&["run", &file]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lock = std::fs::read_to_string(project.main().join("pipelines/outside.lock")).unwrap();
    let hash = blake3::hash(&std::fs::read(outside.join("reviews.parquet")).unwrap())
        .to_hex()
        .to_string();
    assert!(lock.contains("../../elsewhere/reviews.parquet"), "{lock}");
    assert!(lock.contains(&hash[..16]), "the content hash is in the lock: {lock}");
}

#[test]
fn the_data_root_moves_without_changing_keys() {
    // `${PIPELINE_DATA:-../../shared/data}`: the same bytes elsewhere give the same keys.
    let project = Project::with_full_data();
    let file = project.copy("imdb-cnn.yaml");
    let keys = |env: &[(&str, &str)]| {
        let (code, plan) = project.run_json(&["plan", &file], env);
        assert_eq!(code, 0, "{plan}");
        plan["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].clone())
            .collect::<Vec<_>>()
    };
    let moved = project.dir.path().join("elsewhere");
    std::os::unix::fs::symlink(common::project::data_root(), &moved).unwrap();
    let moved = moved.to_str().unwrap().to_string();
    assert_eq!(keys(&[]), keys(&[("PIPELINE_DATA", &moved)]));
    let empty = project.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = project.run_env(&["plan", &file], &[("PIPELINE_DATA", empty.to_str().unwrap())]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("imdb-cnn.yaml:11:") && err.contains("empty/imdb/train.parquet, which does not exist"),
        "{err}"
    );
}
