//! ztunnel's side of ZDS, as much as a stand-in for tests needs: connect, say hello, receive
//! requests with their namespace descriptors, answer each with an ack.

use super::messages::{
    Ack, Request, Response, Version, WorkloadRequest, WorkloadResponse, ZdsHello,
};
use super::{recv_packet, send_packet};
use prost::Message;
use socket2::{Domain, SockAddr, Socket, Type};
use std::fs::File;
use std::io;
use std::path::Path;
use std::time::Duration;

/// A connection to the agent, as ztunnel holds it.
pub struct StandIn {
    socket: Socket,
}

/// One request from the agent.
pub struct Received {
    pub request: Request,
    /// The pod's network namespace (with an `add`).
    pub netns: Option<File>,
}

impl StandIn {
    /// Connects to the agent at `path` and says hello (protocol V1). Reads wait at most
    /// `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<StandIn> {
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
        socket.connect(&SockAddr::unix(path)?)?;
        socket.set_read_timeout(Some(timeout))?;
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        send_packet(&socket, &hello.encode_to_vec(), None)?;
        Ok(StandIn { socket })
    }

    /// The next request.
    pub fn receive(&self) -> io::Result<Received> {
        let (bytes, mut files) = recv_packet(&self.socket)?;
        let request = WorkloadRequest::decode(bytes.as_slice())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            .payload
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "empty request"))?;
        Ok(Received {
            request,
            netns: files.pop(),
        })
    }

    /// Answers the last request: `error` empty for success.
    pub fn ack(&self, error: &str) -> io::Result<()> {
        let ack = WorkloadResponse {
            payload: Some(Response::Ack(Ack {
                error: error.to_owned(),
            })),
        };
        send_packet(&self.socket, &ack.encode_to_vec(), None)
    }

    /// Receives the snapshot, acknowledging every request: the pods added (uid and namespace),
    /// up to `snapshot_sent`.
    pub fn snapshot(&self) -> io::Result<Vec<(String, File)>> {
        let mut pods = Vec::new();
        loop {
            let received = self.receive()?;
            self.ack("")?;
            match received.request {
                Request::Add(add) => {
                    let netns = received.netns.ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "an add without a namespace")
                    })?;
                    pods.push((add.uid, netns));
                }
                Request::SnapshotSent(_) => return Ok(pods),
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected in a snapshot: {other:?}"),
                    ));
                }
            }
        }
    }
}
