//! A tiny blocking HTTP/1.1 app and client for the proxy's end-to-end tests and benchmark
//! (included with `#[path]` by tests/proxy_e2e.rs and bench/proxy_bench.rs). std only.
//!
//! Paths the app serves (one request per connection, `Connection: close`):
//! * `/whoami`: `peer=<address the app saw> local=<address it was reached at>`
//! * `/fetch/<host:port>`: the app calls `/whoami` on that address and returns its answer
//!   prefixed with `upstream: ` (how the tests make the app call out)
//! * `/echo` with a `Content-Length` body: the body back

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Serves the paths above on every address, one thread per connection. Never returns.
pub fn serve(addrs: &[SocketAddr]) -> ! {
    let mut threads = Vec::new();
    for &addr in addrs {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        threads.push(std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = answer(stream);
                });
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(1)
}

/// Reads a request head; returns (request line, content length, body bytes already read).
fn read_head(stream: &mut TcpStream) -> io::Result<(String, usize, Vec<u8>)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = head.split_off(i + 4);
            let text = String::from_utf8_lossy(&head).into_owned();
            let line = text.lines().next().unwrap_or_default().to_owned();
            let len = text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            return Ok((line, len, rest));
        }
    }
}

fn answer(mut stream: TcpStream) -> io::Result<()> {
    let (line, len, mut body) = read_head(&mut stream)?;
    let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
    let (status, text) = if path == "/whoami" {
        (
            "200 OK",
            format!(
                "peer={} local={}\n",
                stream.peer_addr()?,
                stream.local_addr()?
            ),
        )
    } else if let Some(target) = path.strip_prefix("/fetch/") {
        match target.parse::<SocketAddr>() {
            Ok(addr) => match get(addr, "/whoami") {
                Ok((200, b)) => ("200 OK", format!("upstream: {b}")),
                Ok((s, b)) => ("502 Bad Gateway", format!("upstream said {s}: {b}")),
                Err(e) => ("502 Bad Gateway", format!("upstream {addr}: {e}\n")),
            },
            Err(_) => ("400 Bad Request", "bad address\n".to_owned()),
        }
    } else if path == "/echo" {
        while body.len() < len {
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
        ("200 OK", String::from_utf8_lossy(&body).into_owned())
    } else {
        ("404 Not Found", "not found\n".to_owned())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

/// Reads a whole `Connection: close` response: (status code, body).
pub fn read_response(stream: &mut TcpStream) -> io::Result<(u16, String)> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("no head in {text:?}"))
    })?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status in {head:?}"),
            )
        })?;
    Ok((code, body.to_owned()))
}

/// GET `path` from `addr` (10 s timeouts): (status code, body).
pub fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    read_response(&mut stream)
}
