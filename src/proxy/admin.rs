//! The two admin endpoints, served by a tiny HTTP/1.1 responder: `GET /healthz/ready` (200 once
//! the data listeners are up, 503 before and while draining) and `GET /stats/prometheus`.
//! One request per connection (`Connection: close`); anything else gets 404/405.

use super::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const READY_PATH: &str = "/healthz/ready";
pub const STATS_PATH: &str = "/stats/prometheus";

/// State the endpoints report.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Data listeners are listening.
    pub listening: AtomicBool,
    /// SIGTERM received: not ready any more.
    pub draining: AtomicBool,
}

impl AdminState {
    fn ready(&self) -> bool {
        self.listening.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), respond(stream, &state)).await;
                });
            }
            Err(e) => {
                tracing::warn!("admin accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The request line's method and path, once the header block is complete.
fn parse_request(head: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(head).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

/// Status, content type and body for a request.
fn route(method: &str, path: &str, state: &AdminState) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (method, path) {
        ("GET" | "HEAD", READY_PATH) if state.ready() => ("200 OK", TEXT, "ready\n".into()),
        ("GET" | "HEAD", READY_PATH) => ("503 Service Unavailable", TEXT, "not ready\n".into()),
        ("GET" | "HEAD", STATS_PATH) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        (_, READY_PATH | STATS_PATH) => ("405 Method Not Allowed", TEXT, "GET only\n".into()),
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

async fn respond(mut stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if head.len() > 8192 {
            break head.len();
        }
    };
    let (status, ctype, body) = match parse_request(&head[..end]) {
        Some((method, path)) => {
            let (s, c, b) = route(method, path, state);
            (s, c, if method == "HEAD" { String::new() } else { b })
        }
        None => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(listening: bool, draining: bool) -> AdminState {
        AdminState {
            metrics: Arc::new(Metrics::default()),
            listening: AtomicBool::new(listening),
            draining: AtomicBool::new(draining),
        }
    }

    #[test]
    fn readiness_follows_listening_and_draining() {
        assert_eq!(route("GET", READY_PATH, &state(true, false)).0, "200 OK");
        assert_eq!(
            route("GET", READY_PATH, &state(false, false)).0,
            "503 Service Unavailable"
        );
        assert_eq!(
            route("GET", READY_PATH, &state(true, true)).0,
            "503 Service Unavailable"
        );
    }

    #[test]
    fn routes_and_request_lines() {
        let s = state(true, false);
        let (status, ctype, body) = route("GET", STATS_PATH, &s);
        assert_eq!(status, "200 OK");
        assert!(ctype.starts_with("text/plain; version=0.0.4"));
        assert!(body.contains("meshcap_connections_total{direction=\"inbound\"} 0"));
        assert_eq!(route("POST", STATS_PATH, &s).0, "405 Method Not Allowed");
        assert_eq!(route("GET", "/", &s).0, "404 Not Found");
        assert_eq!(
            parse_request(b"GET /stats/prometheus?x=1 HTTP/1.1\r\nHost: a"),
            Some(("GET", STATS_PATH))
        );
        assert_eq!(parse_request(b"\xff\xfe"), None);
    }

    #[tokio::test]
    async fn answers_over_tcp() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let st = Arc::new(state(true, false));
        let server = tokio::spawn(serve(l, st));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nready\n"), "{out}");
        server.abort();
    }
}
