//! The run report and the sweep report, rendered by a real browser:
//! headless Chromium (`CHROMIUM`, default `chromium`; `make test` installs
//! Debian's) loads each page with no console message, every chart parses
//! as an SVG document on its own, and a screenshot of each page is left in
//! `SCREENSHOTS` (default: the test's temporary directory) for review.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::project::Project;
use common::sweeps::sample_grid;

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Runs headless Chromium on `url` with `args`; returns stdout and stderr.
fn browse(args: &[&str], url: &str) -> (String, String) {
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} (install Debian's `chromium`: make test does): {e}",
                chromium()
            )
        });
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Loads `page`, checks it, its charts, and saves a screenshot as `name`.
fn check_page(page: &Path, name: &str, scratch: &Path) -> String {
    let url = format!("file://{}", page.display());
    let (dom, log) = browse(&["--dump-dom"], &url);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "{name}: console messages {console:?}");
    assert!(dom.contains("<svg") && !dom.contains("parsererror"), "{name}: {dom}");
    let html = std::fs::read_to_string(page).unwrap();
    let mut charts = 0;
    for (i, chunk) in html.split("<svg").skip(1).enumerate() {
        let end = chunk.find("</svg>").expect("every chart is closed") + "</svg>".len();
        let file = scratch.join(format!("{name}-{i}.svg"));
        std::fs::write(&file, format!("<svg{}", &chunk[..end])).unwrap();
        let (dom, _) = browse(&["--dump-dom"], &format!("file://{}", file.display()));
        assert!(
            !dom.contains("parsererror"),
            "{name}: chart {i} is not well-formed SVG: {dom}"
        );
        charts += 1;
    }
    let shots = std::env::var("SCREENSHOTS").map_or_else(|_| scratch.to_path_buf(), PathBuf::from);
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join(format!("{name}.png"));
    browse(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,3600",
            "--hide-scrollbars",
        ],
        &url,
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "{name}: an empty screenshot"
    );
    assert!(charts >= 3, "{name}: {charts} charts");
    html
}

#[test]
fn reports_load_in_a_real_browser_without_errors() {
    let project = Project::new();
    let scratch = project.dir.path().join("browser");
    std::fs::create_dir_all(&scratch).unwrap();
    let file = project.copy("imdb-sample.yaml");
    let (code, result) = project.run_json(&["run", &file, "--set", "stages.train.epochs=1"], &[]);
    assert_eq!(code, 0, "{result}");
    let report = project.out(&result, "report").join("report.html");
    let html = check_page(&report, "report", &scratch);
    assert!(
        html.contains("<title>imdb-sample: train (cnn)</title>"),
        "the title names the pipeline"
    );
    assert!(html.contains("true label") && html.contains("predicted label"));
    let config = &html[html.find("<h2>Configuration</h2>").unwrap()..];
    assert!(
        config.contains("num_filters") && !config.contains("hidden_size"),
        "{config}"
    );

    let sweep = sample_grid(&project, "browse", &["1.0e-2", "1.0e-3"], "");
    let (code, result) = project.run_json(&["run", &sweep, "--set", "stages.train.max_steps=30"], &[]);
    assert_eq!(code, 0, "{result}");
    let html = check_page(Path::new(result["report"].as_str().unwrap()), "sweep-report", &scratch);
    assert!(html.contains("<title>Sweep browse</title>") && html.contains("over every parameter"));
    assert!(
        html.contains("lr=0.01 clip_grad_norm=null"),
        "the loss legend names trials by parameters"
    );
    assert!(html.contains(" (best)"));
}
