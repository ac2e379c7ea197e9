//! The node agent's side of ZDS: a unix SOCK_SEQPACKET listener that ztunnel connects to.
//!
//! On each connection ztunnel says hello; the agent answers with a snapshot: one `add` per
//! enrolled pod, its network namespace attached, each acknowledged, then `snapshot_sent`. From
//! then on [`Agent::add`] and [`Agent::del`] send one request each and wait for its ack. A
//! ztunnel that reconnects (after a restart) gets a fresh snapshot; only the latest connection
//! is used.
//!
//! The connection is held under a lock for the whole of a snapshot or a request: an `add` never
//! overtakes a snapshot, and acks are never confused between requests.

use super::messages::{
    AddWorkload, DelWorkload, Request, Response, SnapshotSent, Version, WorkloadInfo,
    WorkloadRequest, WorkloadResponse, ZdsHello,
};
use super::{recv_packet, send_packet};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use prost::Message;
use socket2::{Domain, SockAddr, Socket, Type};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why ztunnel did not take a request.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    /// No ztunnel is connected: the pod cannot be handed over (the CNI ADD fails closed).
    #[error("ztunnel is not connected")]
    NotConnected,
    /// ztunnel answered with an error.
    #[error("ztunnel refused {uid}: {error}")]
    Refused { uid: String, error: String },
    /// The connection failed (ztunnel went away, or did not answer in time); it is dropped.
    #[error("ztunnel connection: {0}")]
    Connection(String),
}

/// An enrolled pod as ztunnel gets it.
struct Pod {
    info: WorkloadInfo,
    netns: File,
}

struct Inner {
    pods: Mutex<BTreeMap<String, Pod>>,
    connection: Mutex<Option<Socket>>,
    connected: Condvar,
    ack_timeout: Duration,
    stop: AtomicBool,
}

/// The listening agent; dropping it stops listening and removes the socket file.
pub struct Agent {
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Agent {
    /// Listens on `path` (a stale socket file there is replaced, a live one refused). Each
    /// request waits at most `ack_timeout` for ztunnel's answer.
    pub fn listen(path: &Path, ack_timeout: Duration) -> io::Result<Agent> {
        crate::ambient::socket_file::claim(path, Type::SEQPACKET)?;
        let listener = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
        listener.bind(&SockAddr::unix(path)?)?;
        listener.listen(16)?;
        listener.set_nonblocking(true)?;
        let inner = Arc::new(Inner {
            pods: Mutex::new(BTreeMap::new()),
            connection: Mutex::new(None),
            connected: Condvar::new(),
            ack_timeout,
            stop: AtomicBool::new(false),
        });
        let accept = {
            let inner = inner.clone();
            std::thread::spawn(move || accept_loop(&listener, &inner))
        };
        Ok(Agent {
            inner,
            accept: Some(accept),
            path: path.to_owned(),
        })
    }

    /// Hands a pod to ztunnel and waits for its ack; then the pod is enrolled (in every later
    /// snapshot). Fails when no ztunnel is connected or it refuses: the pod is not enrolled.
    pub fn add(&self, uid: &str, info: WorkloadInfo, netns: File) -> Result<(), ZdsError> {
        let mut connection = self.inner.lock_connection();
        let socket = connection.as_ref().ok_or(ZdsError::NotConnected)?;
        let result = request(
            socket,
            &add_request(uid, &info),
            Some(&netns),
            self.inner.ack_timeout,
        );
        if let Err(ZdsError::Refused { .. }) = &result {
            // ztunnel keeps a pod it could not start (a port taken in the pod, say) and retries
            // it: withdrawn, so that its proxy does not come up later in a pod left without
            // rules, holding the pod's namespace.
            if let Err(e) = request(socket, &del_request(uid), None, self.inner.ack_timeout) {
                tracing::warn!("ztunnel did not take the withdrawal of {uid}: {e}");
                if let ZdsError::Connection(_) = e {
                    *connection = None;
                }
            }
        }
        if let Err(ZdsError::Connection(_)) = &result {
            *connection = None;
        }
        result?;
        lock(&self.inner.pods).insert(uid.to_owned(), Pod { info, netns });
        Ok(())
    }

    /// Enrols a pod without telling ztunnel (the agent rebuilding its list after a restart):
    /// ztunnel gets it with the next snapshot.
    pub fn restore(&self, uid: &str, info: WorkloadInfo, netns: File) {
        lock(&self.inner.pods).insert(uid.to_owned(), Pod { info, netns });
    }

    /// Removes a pod and tells ztunnel, waiting for its ack. Without a ztunnel this succeeds: the
    /// next snapshot leaves the pod out, and ztunnel drops it then.
    pub fn del(&self, uid: &str) -> Result<(), ZdsError> {
        let mut connection = self.inner.lock_connection();
        lock(&self.inner.pods).remove(uid);
        let Some(socket) = connection.as_ref() else {
            return Ok(());
        };
        let result = request(socket, &del_request(uid), None, self.inner.ack_timeout);
        if let Err(ZdsError::Connection(_)) = &result {
            *connection = None;
        }
        result
    }

    /// The uids of the enrolled pods, sorted.
    pub fn enrolled(&self) -> Vec<String> {
        lock(&self.inner.pods).keys().cloned().collect()
    }

    /// Whether a ztunnel has connected and taken its snapshot, waiting up to `timeout`.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut connection = self.inner.lock_connection();
        while connection.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            connection = self
                .inner
                .connected
                .wait_timeout(connection, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.accept.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Inner {
    fn lock_connection(&self) -> MutexGuard<'_, Option<Socket>> {
        lock(&self.connection)
    }
}

/// A poisoned lock only means another thread panicked holding it; the data is still whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn add_request(uid: &str, info: &WorkloadInfo) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(Request::Add(AddWorkload {
            uid: uid.to_owned(),
            workload_info: Some(info.clone()),
        })),
    }
}

fn del_request(uid: &str) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(Request::Del(DelWorkload {
            uid: uid.to_owned(),
        })),
    }
}

fn accept_loop(listener: &Socket, inner: &Inner) {
    while !inner.stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::from(100u16)), Ok(n) if n > 0) {
            continue;
        }
        let Ok((socket, _)) = listener.accept() else {
            continue;
        };
        if let Err(e) = welcome(socket, inner) {
            tracing::warn!("ztunnel connection dropped: {e}");
        }
    }
}

/// A new ztunnel: its hello, then the snapshot; it becomes the connection in use.
fn welcome(socket: Socket, inner: &Inner) -> Result<(), ZdsError> {
    socket
        .set_nonblocking(false)
        .and_then(|()| socket.set_read_timeout(Some(inner.ack_timeout)))
        .and_then(|()| socket.set_write_timeout(Some(inner.ack_timeout)))
        .map_err(|e| ZdsError::Connection(e.to_string()))?;
    let (bytes, _) = recv_packet(&socket).map_err(|e| connection_error(e, inner.ack_timeout))?;
    let hello = ZdsHello::decode(bytes.as_slice())
        .map_err(|e| ZdsError::Connection(format!("undecodable hello: {e}")))?;
    if hello.version != Version::V1 as i32 {
        return Err(ZdsError::Connection(format!(
            "unsupported protocol version {}",
            hello.version
        )));
    }
    let mut connection = inner.lock_connection();
    // The old connection (if any) is replaced whatever happens: ztunnel has restarted.
    *connection = None;
    {
        let pods = lock(&inner.pods);
        for (uid, pod) in pods.iter() {
            match request(
                &socket,
                &add_request(uid, &pod.info),
                Some(&pod.netns),
                inner.ack_timeout,
            ) {
                Err(ZdsError::Refused { uid, error }) => {
                    tracing::warn!("ztunnel refused {uid} in the snapshot: {error}")
                }
                other => other?,
            }
        }
    }
    let sent = WorkloadRequest {
        payload: Some(Request::SnapshotSent(SnapshotSent {})),
    };
    request(&socket, &sent, None, inner.ack_timeout)?;
    *connection = Some(socket);
    inner.connected.notify_all();
    tracing::info!("ztunnel connected; snapshot sent");
    Ok(())
}

fn connection_error(e: io::Error, timeout: Duration) -> ZdsError {
    ZdsError::Connection(match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no answer within {timeout:?}")
        }
        io::ErrorKind::UnexpectedEof => "ztunnel closed the connection".into(),
        _ => e.to_string(),
    })
}

/// Sends one request and waits for its ack.
fn request(
    socket: &Socket,
    message: &WorkloadRequest,
    netns: Option<&File>,
    timeout: Duration,
) -> Result<(), ZdsError> {
    send_packet(socket, &message.encode_to_vec(), netns.map(|f| f.as_fd()))
        .map_err(|e| connection_error(e, timeout))?;
    let (bytes, _) = recv_packet(socket).map_err(|e| connection_error(e, timeout))?;
    let response = WorkloadResponse::decode(bytes.as_slice())
        .map_err(|e| ZdsError::Connection(format!("undecodable answer: {e}")))?;
    match response.payload {
        Some(Response::Ack(ack)) if ack.error.is_empty() => Ok(()),
        Some(Response::Ack(ack)) => Err(ZdsError::Refused {
            uid: match &message.payload {
                Some(Request::Add(a)) => a.uid.clone(),
                Some(Request::Del(d)) => d.uid.clone(),
                _ => String::new(),
            },
            error: ack.error,
        }),
        None => Err(ZdsError::Connection("an answer without an ack".into())),
    }
}
