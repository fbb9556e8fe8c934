//! Data-stage speed on the full IMDB train split (25,000 reviews) from
//! ../shared/data: load + shuffle wall time, and tokenize throughput with
//! bert-base-cased at max_length 128, side by side with the Python
//! `tokenizers` library's `encode_batch` on the same texts when `PYTHON`
//! names an interpreter that has it (`make bench` sets one up).
//! Run with `cargo bench --bench data_stages`; prints medians of 3 runs.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use pipeline::console::Console;
use pipeline::dag::{ExecOptions, Graph, execute};
use pipeline::spec::Pipeline;
use pipeline::store::Store;

const REPS: usize = 3;
const PIPELINE: &str = "name: data-bench
seed: 1
stages:
  data: {kind: download, source: ../../shared/data/imdb/train.parquet}
  load: {splits: {train: train.parquet}}
  shuffle: {}
  tokenize:
    tokenizer: {pretrained: ../../shared/data/tokenizers/bert-base-cased/tokenizer.json}
    max_length: 128
";

const PYTHON_REFERENCE: &str = r#"
import sys, time, pyarrow.parquet as pq, tokenizers
texts = pq.read_table(sys.argv[1]).column("text").to_pylist()
tok = tokenizers.Tokenizer.from_file(sys.argv[2])
tok.enable_truncation(max_length=128)
for _ in range(int(sys.argv[3])):
    start = time.perf_counter(); cpu = time.process_time()
    tok.encode_batch(texts)
    print(len(texts) / (time.perf_counter() - start), len(texts) / (time.process_time() - cpu))
"#;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// CPU seconds this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = repo.join("../shared/data");
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::create_dir_all(dir.path().join("main/pipelines")).unwrap();
    std::os::unix::fs::symlink(repo.join("../shared"), dir.path().join("shared")).unwrap();
    let file = dir.path().join("main/pipelines/bench.yaml");
    std::fs::write(&file, PIPELINE).unwrap();
    let registry = pipeline::stages::builtin();
    let pipeline = Pipeline::load(&file, &[], &registry).expect("valid pipeline");
    let (mut load, mut shuffle, mut tokenize, mut tokenize_cpu) = (vec![], vec![], vec![], vec![]);
    for rep in 0..REPS {
        let store = Store::open(&dir.path().join(format!("store-{rep}")));
        let mut graph = Graph::new();
        let nodes = graph.add_pipeline(&pipeline, None, store.stat_cache()).unwrap();
        let options = ExecOptions::with_jobs(2);
        let cpu = cpu_seconds();
        let execution = execute(
            &graph,
            &registry,
            &store,
            &options,
            &Console::new(true),
            &AtomicBool::new(false),
        );
        let cpu = cpu_seconds() - cpu;
        assert!(execution.succeeded(), "{:?}", execution.results);
        let seconds = |i: usize| execution.results[nodes[i]].seconds;
        load.push(seconds(1));
        shuffle.push(seconds(2));
        tokenize.push(25_000.0 / seconds(3));
        let other = seconds(0) + seconds(1) + seconds(2);
        tokenize_cpu.push(25_000.0 / (cpu - other).max(1e-9));
    }
    println!("full IMDB train, 25,000 reviews, median of {REPS}:");
    println!("  load parquet:       {:.3} s", median(load.clone()));
    println!("  shuffle:            {:.3} s", median(shuffle.clone()));
    let both: Vec<f64> = load.iter().zip(&shuffle).map(|(a, b)| a + b).collect();
    println!("  load + shuffle:     {:.3} s", median(both));
    let ours = median(tokenize.clone());
    println!(
        "  tokenize (bert-base-cased, 128, 2 threads): {ours:.0} reviews/s wall, ~{:.0} reviews per CPU-second",
        median(tokenize_cpu)
    );
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let reference = Command::new(&python)
        .args(["-c", PYTHON_REFERENCE])
        .arg(shared.join("imdb/train.parquet"))
        .arg(shared.join("tokenizers/bert-base-cased/tokenizer.json"))
        .arg(REPS.to_string())
        .output();
    match reference {
        Ok(output) if output.status.success() => {
            let text = String::from_utf8_lossy(&output.stdout);
            let rows: Vec<(f64, f64)> = text
                .lines()
                .map(|l| {
                    let mut parts = l.split_whitespace().map(|v| v.parse::<f64>().unwrap());
                    (parts.next().unwrap(), parts.next().unwrap())
                })
                .collect();
            let wall = median(rows.iter().map(|r| r.0).collect());
            let per_cpu = median(rows.iter().map(|r| r.1).collect());
            println!(
                "  python tokenizers encode_batch, same texts: {wall:.0} reviews/s wall, {per_cpu:.0} per CPU-second"
            );
            println!("  ratio (ours / python, wall): {:.2}x", ours / wall);
        }
        _ => println!(
            "  (no Python reference: set PYTHON to an interpreter with tokenizers and pyarrow, or run `make bench`)"
        ),
    }
}
