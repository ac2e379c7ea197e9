//! The agent's control socket, where the CNI plugin asks for a pod to be enrolled (ADD) or let
//! go (DEL), or checks its rules (CHECK): a unix stream socket, one JSON request per connection, answered with one JSON
//! response. The answer comes once the work is done, so an ADD returns only after the rules are
//! in and ztunnel has acknowledged the pod.

use super::node::{Node, NodeError, PodRef};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where the agent listens by default.
pub const DEFAULT_SOCKET: &str = "/var/run/meshcap/ambient.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Add {
        pod: PodRef,
    },
    Del {
        uid: String,
    },
    /// Whether an enrolled pod's namespace still holds its rules (the plugin's CHECK).
    Check {
        uid: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// `None`: done.
    pub error: Option<String>,
    /// The request itself is at fault (a bad annotation): the plugin's error code 7.
    #[serde(default)]
    pub invalid: bool,
}

/// Answers requests until `stop` is set.
pub fn serve(listener: &UnixListener, node: &Node, stop: &AtomicBool) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, node) {
                    tracing::warn!("control request failed: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn answer(mut stream: UnixStream, node: &Node) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let response = match serde_json::from_str::<Request>(&text) {
        Err(e) => Response {
            error: Some(format!("undecodable request: {e}")),
            invalid: true,
        },
        Ok(request) => {
            let result = match request {
                Request::Add { pod } => node.enroll(pod),
                Request::Del { uid } => node.unenroll(&uid),
                Request::Check { uid } => node.check(&uid),
            };
            match result {
                Ok(()) => Response::default(),
                Err(e) => Response {
                    invalid: matches!(e, NodeError::Annotation(_)),
                    error: Some(e.to_string()),
                },
            }
        }
    };
    stream.write_all(serde_json::to_string(&response)?.as_bytes())
}

/// Sends one request to the agent at `socket` and waits (up to `timeout`) for its answer.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(serde_json::to_string(request)?.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    serde_json::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
