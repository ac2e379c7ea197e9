//! Moves bytes both ways between the downstream and upstream sockets, with half-close (an EOF
//! one way shuts down writing that way only; the other way keeps flowing) and an idle timeout.
//!
//! Two engines: a userspace copy through a buffer, and splice(2) through a pipe (socket → pipe →
//! socket, no copy to userspace). Both wait on tokio's readiness and use non-blocking calls, so
//! one task drives both directions of a connection. Buffers and pipes are created when the first
//! byte arrives, so an idle connection costs no buffer memory. They start at 64 KiB and double
//! each time one read fills them, up to the configured size: a bulk transfer soon moves a
//! megabyte per read/write pair (fewer system calls, less CPU per byte), while request/response
//! traffic keeps small buffers.

use super::metrics::{Direction, Metrics};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Which engine moves the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// read(2)/write(2) through a userspace buffer.
    Copy,
    /// splice(2) through a pipe: the bytes never enter userspace.
    Splice,
}

/// How a pumped connection ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Bytes read from the downstream and written upstream.
    pub rx: u64,
    /// Bytes read from the upstream and written downstream.
    pub tx: u64,
    /// Closed by the idle timeout.
    pub idle_timeout: bool,
    /// The error that ended it, if any (e.g. a reset).
    pub error: Option<io::Error>,
}

/// What the two directions share: the last time any byte moved (ms since `start`).
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let deadline =
                self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// Per-direction byte counting: the connection's own total and the process metrics.
struct Tally<'a> {
    metrics: &'a Metrics,
    direction: Direction,
    downstream_to_upstream: bool,
    total: u64,
}

impl Tally<'_> {
    fn add(&mut self, n: usize) {
        self.total += n as u64;
        if self.downstream_to_upstream {
            self.metrics.add_rx(self.direction, n as u64);
        } else {
            self.metrics.add_tx(self.direction, n as u64);
        }
    }
}

/// Pumps until both directions reached EOF, one failed, or the connection was idle for `idle`.
pub async fn pump(
    downstream: &TcpStream,
    upstream: &TcpStream,
    engine: Engine,
    buffer: usize,
    idle: Duration,
    metrics: &Arc<Metrics>,
    direction: Direction,
) -> Outcome {
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let mut up = Tally {
        metrics,
        direction,
        downstream_to_upstream: true,
        total: 0,
    };
    let mut down = Tally {
        metrics,
        direction,
        downstream_to_upstream: false,
        total: 0,
    };
    let result = {
        let both = async {
            match engine {
                Engine::Copy => tokio::try_join!(
                    copy_one_way(downstream, upstream, buffer, &activity, &mut up),
                    copy_one_way(upstream, downstream, buffer, &activity, &mut down),
                ),
                Engine::Splice => tokio::try_join!(
                    splice_one_way(downstream, upstream, buffer, &activity, &mut up),
                    splice_one_way(upstream, downstream, buffer, &activity, &mut down),
                ),
            }
        };
        tokio::select! {
            r = both => Some(r),
            () = activity.idle(idle) => None,
        }
    };
    let mut outcome = Outcome {
        rx: up.total,
        tx: down.total,
        ..Outcome::default()
    };
    match result {
        None => outcome.idle_timeout = true,
        Some(Ok(((), ()))) => {}
        Some(Err(e)) => outcome.error = Some(e),
    }
    outcome
}

/// The size of one direction's buffer or pipe: starts at [`Size::START`] (or the maximum, if
/// smaller) and doubles whenever one read fills it, up to the maximum.
struct Size {
    now: usize,
    max: usize,
}

impl Size {
    const START: usize = 64 * 1024;

    fn new(max: usize) -> Size {
        Size {
            now: Size::START.min(max),
            max,
        }
    }

    /// Records that a read moved `n` bytes; true when that filled the buffer and it grew.
    fn grows_after(&mut self, n: usize) -> bool {
        if n < self.now || self.now >= self.max {
            return false;
        }
        self.now = (self.now * 2).min(self.max);
        true
    }
}

/// Waits until `src` has a byte or its EOF to read. tokio reports a freshly accepted socket
/// readable once even when nothing has arrived; without this check every idle connection
/// would get its buffer (or pipe) at accept.
async fn data_arrived(src: &TcpStream) -> io::Result<()> {
    loop {
        src.readable().await?;
        let peek = || {
            let mut byte = [0u8; 1];
            nix::sys::socket::recv(
                src.as_raw_fd(),
                &mut byte,
                nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            )
            .map_err(|e| io::Error::from_raw_os_error(e as i32))
        };
        match src.try_io(Interest::READABLE, peek) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    match nix::sys::socket::shutdown(s.as_raw_fd(), nix::sys::socket::Shutdown::Write) {
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

async fn copy_one_way(
    src: &TcpStream,
    dst: &TcpStream,
    max: usize,
    activity: &Activity,
    tally: &mut Tally<'_>,
) -> io::Result<()> {
    let mut size = Size::new(max);
    let mut buf: Vec<u8> = Vec::new();
    data_arrived(src).await?;
    loop {
        src.readable().await?;
        if buf.len() < size.now {
            // The old contents are sent already: a fresh buffer, not a copying resize.
            buf = vec![0; size.now];
        }
        let n = match src.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return shutdown_write(dst);
        }
        let mut sent = 0;
        while sent < n {
            dst.writable().await?;
            match dst.try_write(&buf[sent..n]) {
                Ok(m) => sent += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        size.grows_after(n);
        tally.add(n);
        activity.touch();
    }
}

/// A pipe for splicing; created on first use.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new(size: usize) -> io::Result<Pipe> {
        use nix::fcntl::OFlag;
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        let pipe = Pipe { read, write };
        pipe.resize(size);
        Ok(pipe)
    }

    /// A larger pipe moves more per call. Best effort: the kernel's default (64 KiB) stays when
    /// asked for less, and the old size when the per-user pipe limit refuses.
    fn resize(&self, size: usize) {
        if size > 65536 {
            let _ = nix::fcntl::fcntl(&self.write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size as i32));
        }
    }
}

fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    use nix::fcntl::SpliceFFlags;
    nix::fcntl::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
    )
    .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

async fn splice_one_way(
    src: &TcpStream,
    dst: &TcpStream,
    max: usize,
    activity: &Activity,
    tally: &mut Tally<'_>,
) -> io::Result<()> {
    let mut size = Size::new(max);
    let mut pipe: Option<Pipe> = None;
    data_arrived(src).await?;
    loop {
        src.readable().await?;
        let p = match &pipe {
            Some(p) => p,
            None => pipe.insert(Pipe::new(size.now)?),
        };
        // The pipe is empty here: everything spliced in is spliced out before reading again.
        let n = match src.try_io(Interest::READABLE, || splice(src, &p.write, size.now)) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return shutdown_write(dst);
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || splice(&p.read, dst, left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        if size.grows_after(n) {
            p.resize(size.now);
        }
        tally.add(n);
        activity.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::{Engine, Size, pump};
    use crate::proxy::metrics::{Direction, Metrics};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// client <-> [downstream | pump | upstream] <-> server, all on loopback; returns the client
    /// and server ends and the pump's task (its outcome: bytes up, bytes down).
    async fn proxied(
        engine: Engine,
    ) -> (TcpStream, TcpStream, tokio::task::JoinHandle<(u64, u64)>) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (downstream, _) = front.accept().await.unwrap();
        let upstream = TcpStream::connect(back.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = back.accept().await.unwrap();
        let task = tokio::spawn(async move {
            let metrics = Arc::new(Metrics::default());
            let out = pump(
                &downstream,
                &upstream,
                engine,
                1 << 20,
                Duration::from_secs(60),
                &metrics,
                Direction::Inbound,
            )
            .await;
            assert!(out.error.is_none(), "{:?}", out.error);
            (out.rx, out.tx)
        });
        (client, server, task)
    }

    /// A hang (a FIN that never arrives, a byte never sent) fails the test instead of stalling it.
    async fn within_30s(test: impl std::future::Future<Output = ()>) {
        tokio::time::timeout(Duration::from_secs(30), test)
            .await
            .expect("timed out: bytes or an end of stream never arrived");
    }

    /// Bytes that do not repeat with any power-of-two period, so a chunk delivered twice, lost
    /// or out of order changes what the far end sees.
    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect()
    }

    /// Writes `data` then a FIN while reading everything the other end sends until its FIN.
    async fn exchange(mut stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = stream.split();
        let mut got = Vec::new();
        let (sent, read) = tokio::join!(
            async {
                w.write_all(&data).await?;
                w.shutdown().await
            },
            r.read_to_end(&mut got)
        );
        sent.unwrap();
        read.unwrap();
        got
    }

    async fn bulk_both_ways_arrive_intact(engine: Engine) {
        let (client, server, task) = proxied(engine).await;
        let (up, down) = (pattern(12 << 20, 1), pattern(5 << 20, 2));
        let client_side = tokio::spawn(exchange(client, up.clone()));
        let got_up = exchange(server, down.clone()).await;
        let got_down = client_side.await.unwrap();
        assert!(got_up == up, "{engine:?}: upload changed on the way");
        assert!(got_down == down, "{engine:?}: download changed on the way");
        assert_eq!(task.await.unwrap(), (up.len() as u64, down.len() as u64));
    }

    /// 12 MiB up and 5 MiB down at once: the buffers grow from 64 KiB to 1 MiB on the way and
    /// every byte arrives once, in order.
    #[tokio::test]
    async fn bulk_both_ways_arrive_intact_copy() {
        within_30s(bulk_both_ways_arrive_intact(Engine::Copy)).await;
    }

    #[tokio::test]
    async fn bulk_both_ways_arrive_intact_splice() {
        within_30s(bulk_both_ways_arrive_intact(Engine::Splice)).await;
    }

    async fn half_close_keeps_the_other_way_open(engine: Engine) {
        let (mut client, mut server, task) = proxied(engine).await;
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        // The server sees the request end (the client's FIN came through)...
        let mut request = Vec::new();
        server.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request");
        // ...and can still answer, at length, after it.
        let answer = pattern(3 << 20, 3);
        server.write_all(&answer).await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got == answer, "{engine:?}: answer after half-close changed");
        assert_eq!(task.await.unwrap(), (7, answer.len() as u64));
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_way_open_copy() {
        within_30s(half_close_keeps_the_other_way_open(Engine::Copy)).await;
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_way_open_splice() {
        within_30s(half_close_keeps_the_other_way_open(Engine::Splice)).await;
    }

    #[test]
    fn buffers_double_only_when_a_read_fills_them_and_stop_at_the_maximum() {
        let mut size = Size::new(1 << 20);
        assert_eq!(size.now, 64 << 10);
        assert!(!size.grows_after(1000), "a short read keeps the size");
        assert!(size.grows_after(64 << 10));
        assert_eq!(size.now, 128 << 10);
        for _ in 0..3 {
            let full = size.now;
            assert!(size.grows_after(full));
        }
        assert_eq!(size.now, 1 << 20);
        assert!(!size.grows_after(1 << 20), "never beyond the maximum");
        assert_eq!(size.now, 1 << 20);
    }

    #[test]
    fn a_maximum_below_the_start_is_the_size() {
        let mut size = Size::new(16 << 10);
        assert_eq!(size.now, 16 << 10);
        assert!(!size.grows_after(16 << 10));
        // A maximum that is not a power-of-two multiple of the start is reached exactly.
        let mut size = Size::new(100_000);
        assert!(size.grows_after(64 << 10));
        assert_eq!(size.now, 100_000);
    }
}
