//! A small HTTP/1.1 server on 127.0.0.1 that serves files the way the Hugging
//! Face Hub's `resolve` endpoints do (ranges, `etag`, `x-repo-commit`), and
//! can answer 503 to the first requests to test retries.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A running server; it stops when the test process ends.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    failures: Arc<AtomicUsize>,
    /// Request lines received, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = Server {
            url,
            files: Arc::default(),
            failures: Arc::default(),
            requests: Arc::default(),
        };
        let (files, failures, requests) = (server.files.clone(), server.failures.clone(), server.requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (files, failures, requests) = (files.clone(), failures.clone(), requests.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &files, &failures, &requests);
                });
            }
        });
        server
    }

    /// Serves `bytes` at `path` (e.g. `/datasets/o/n/resolve/main/train.parquet`).
    pub fn add(&self, path: &str, bytes: Vec<u8>) {
        self.files.lock().unwrap().insert(path.to_string(), bytes);
    }

    /// Answers the next `n` requests with 503.
    pub fn fail_next(&self, n: usize) {
        self.failures.store(n, Ordering::SeqCst);
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn serve(
    stream: TcpStream,
    files: &Mutex<HashMap<String, Vec<u8>>>,
    failures: &AtomicUsize,
    requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
    }
    requests.lock().unwrap().push(request_line.trim_end().to_string());
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let respond = |stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]| {
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)
    };
    if failures.load(Ordering::SeqCst) > 0 {
        failures.fetch_sub(1, Ordering::SeqCst);
        return respond(&mut stream, "503 Service Unavailable", &[], b"try again");
    }
    let Some(body) = files.lock().unwrap().get(&path).cloned() else {
        return respond(&mut stream, "404 Not Found", &[], b"not found");
    };
    let headers = vec![
        ("ETag", format!("\"{}\"", blake3::hash(&body).to_hex())),
        ("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567".to_string()),
    ];
    match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(spec) => {
            let (start, end) = spec.split_once('-').unwrap();
            let start: usize = start.parse().unwrap();
            let end: usize = if end.is_empty() {
                body.len() - 1
            } else {
                end.parse::<usize>().unwrap().min(body.len() - 1)
            };
            let mut headers = headers;
            headers.push(("Content-Range", format!("bytes {start}-{end}/{}", body.len())));
            respond(&mut stream, "206 Partial Content", &headers, &body[start..=end])
        }
        None => respond(&mut stream, "200 OK", &headers, &body),
    }
}
