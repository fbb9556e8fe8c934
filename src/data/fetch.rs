//! Remote sources: files of Hugging Face Hub repositories (through `hf-hub`,
//! honouring `HF_ENDPOINT`, `HF_HOME`, `HF_TOKEN` and `HF_HUB_OFFLINE`) and
//! plain `https://` URLs (through `ureq`), with retries on transient errors.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::stage::StageContext;

/// Attempts per file before giving up on transient errors.
const ATTEMPTS: u32 = 4;

/// Where a `download` stage's `source:` points.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A path relative to the pipeline file.
    Local(String),
    /// A Hub repository: `hf://OWNER/MODEL` or `hf://datasets/OWNER/NAME`.
    Hub {
        /// `owner/name`.
        repo: String,
        /// Whether it is a dataset repository.
        dataset: bool,
    },
    /// An `http://` or `https://` URL.
    Url(String),
}

impl Source {
    /// Parses a `source:` value.
    pub fn parse(text: &str) -> Result<Source, String> {
        if let Some(rest) = text.strip_prefix("hf://") {
            let (dataset, repo) = match rest.strip_prefix("datasets/") {
                Some(repo) => (true, repo),
                None => (false, rest),
            };
            let repo = repo.trim_end_matches('/');
            if repo.is_empty() || repo.split('/').count() > 2 || repo.split('/').any(str::is_empty) {
                return Err(format!(
                    "`{text}` is not a Hub repository: write hf://OWNER/MODEL or hf://datasets/OWNER/NAME"
                ));
            }
            return Ok(Source::Hub {
                repo: repo.to_string(),
                dataset,
            });
        }
        if text.starts_with("https://") || text.starts_with("http://") {
            return Ok(Source::Url(text.to_string()));
        }
        if text.contains("://") {
            return Err(format!(
                "`{text}` uses an unknown scheme: use a local path, hf:// or https://"
            ));
        }
        if text.trim().is_empty() {
            return Err("is empty".into());
        }
        Ok(Source::Local(text.to_string()))
    }
}

/// True for errors worth another attempt: connection trouble and 5xx/429 answers.
fn transient(error: &ureq::Error) -> bool {
    match error {
        ureq::Error::StatusCode(code) => *code >= 500 || *code == 429,
        ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            true
        }
        _ => false,
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 * (1 << attempt.min(5)))
}

/// A user-facing sentence for a failed request.
fn explain(url: &str, error: &ureq::Error) -> String {
    match error {
        ureq::Error::StatusCode(404) => format!("{url} answered 404 Not Found: check the name and revision"),
        ureq::Error::StatusCode(401 | 403) => {
            format!("{url} refused access ({error}): set HF_TOKEN for gated or private repositories")
        }
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => unreachable(url, error),
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            ) =>
        {
            unreachable(url, error)
        }
        other => format!("request to {url} failed: {other}"),
    }
}

fn unreachable(url: &str, error: &ureq::Error) -> String {
    format!(
        "cannot reach {url} ({error}): are you offline? Set HF_HUB_OFFLINE=1 to use files already in the Hugging Face cache"
    )
}

/// Downloads a URL to `target` (through `target.part`, renamed when complete).
pub fn fetch_url(url: &str, target: &Path, ctx: &StageContext) -> anyhow::Result<u64> {
    let part = target.with_extension("part");
    let mut attempt = 0;
    loop {
        ctx.check_cancelled()?;
        match try_fetch_url(url, &part, ctx) {
            Ok(size) => {
                std::fs::rename(&part, target)?;
                return Ok(size);
            }
            Err(FetchError::Http(error)) if transient(&error) && attempt + 1 < ATTEMPTS => {
                tracing::warn!("{}; retrying", explain(url, &error));
                std::thread::sleep(backoff(attempt));
                attempt += 1;
            }
            Err(FetchError::Http(error)) => anyhow::bail!("{}", explain(url, &error)),
            Err(FetchError::Other(error)) => return Err(error),
        }
    }
}

enum FetchError {
    Http(ureq::Error),
    Other(anyhow::Error),
}

impl From<std::io::Error> for FetchError {
    fn from(error: std::io::Error) -> Self {
        FetchError::Http(ureq::Error::Io(error))
    }
}

fn try_fetch_url(url: &str, part: &Path, ctx: &StageContext) -> Result<u64, FetchError> {
    let response = ureq::get(url).call().map_err(FetchError::Http)?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(total) = total {
        ctx.progress.set_total(total, "bytes");
    }
    let mut reader = response.into_body().into_reader();
    let mut file = std::fs::File::create(part).map_err(|e| FetchError::Other(e.into()))?;
    let mut buffer = vec![0; 1 << 16];
    let mut written = 0;
    loop {
        ctx.check_cancelled().map_err(FetchError::Other)?;
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n]).map_err(|e| FetchError::Other(e.into()))?;
        written += n as u64;
        ctx.progress.advance(n as u64);
    }
    if let Some(total) = total
        && total != written
    {
        return Err(FetchError::Http(ureq::Error::Io(std::io::Error::other(format!(
            "connection closed after {written} of {total} bytes"
        )))));
    }
    Ok(written)
}

/// Forwards hf-hub's download progress to the stage's progress display.
struct HubProgress<'a>(&'a dyn crate::stage::Progress);

impl hf_hub::api::Progress for HubProgress<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.set_total(size as u64, "bytes");
        self.0.message(filename);
    }

    fn update(&mut self, size: usize) {
        self.0.advance(size as u64);
    }

    fn finish(&mut self) {}
}

/// Copies one file of a Hub repository (at `revision`) to `target`, through
/// the Hugging Face cache (`HF_HOME`), or only from that cache when
/// `HF_HUB_OFFLINE` is set.
pub fn fetch_hub(
    repo: &str,
    dataset: bool,
    revision: &str,
    file: &str,
    target: &Path,
    ctx: &StageContext,
) -> anyhow::Result<u64> {
    let kind = if dataset { RepoType::Dataset } else { RepoType::Model };
    let spec = Repo::with_revision(repo.to_string(), kind, revision.to_string());
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
    let cached = if offline {
        Cache::from_env().repo(spec.clone()).get(file).with_context(|| {
            format!("HF_HUB_OFFLINE is set and {file} of {repo}@{revision} is not in the Hugging Face cache")
        })?
    } else {
        let api = ApiBuilder::from_env()
            .with_progress(false)
            .with_token(std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()))
            .build()
            .context("cannot set up the Hugging Face Hub client")?;
        let handle = api.repo(spec);
        let url = handle.url(file);
        let mut attempt = 0;
        loop {
            match handle.download_with_progress(file, HubProgress(ctx.progress)) {
                Ok(path) => break path,
                Err(ApiError::RequestError(error)) if transient(&error) && attempt + 1 < ATTEMPTS => {
                    tracing::warn!("{}; retrying", explain(&url, &error));
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
                Err(ApiError::RequestError(error)) => anyhow::bail!("{}", explain(&url, &error)),
                Err(other) => anyhow::bail!("cannot download {url}: {other}"),
            }
        }
    };
    std::fs::copy(&cached, target).with_context(|| format!("cannot copy {} from the Hub cache", cached.display()))
}
