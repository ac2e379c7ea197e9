//! The ZDS messages (protobuf, package `istio.workload.zds`), written from the wire format of
//! zds.proto in istio/ztunnel: message and field numbers are the contract, the Rust shapes are
//! meshcap's.
//!
//! Each message travels alone in one SOCK_SEQPACKET packet: ztunnel opens with a [`ZdsHello`],
//! the agent sends [`WorkloadRequest`]s (an `add` carries the pod's network namespace as an
//! SCM_RIGHTS descriptor), ztunnel answers each with a [`WorkloadResponse`] holding an [`Ack`].

/// Protocol versions (`Version`): 1 is the only one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Version {
    NotUsed = 0,
    V1 = 1,
}

/// ztunnel's first message on a new connection.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ZdsHello {
    #[prost(enumeration = "Version", tag = "1")]
    pub version: i32,
}

/// Who the workload is (field 4, the trust domain, is retired).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(string, tag = "3")]
    pub service_account: String,
}

/// Start proxying for a workload; the packet carries its network namespace descriptor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddWorkload {
    #[prost(string, tag = "1")]
    pub uid: String,
    #[prost(message, optional, tag = "2")]
    pub workload_info: Option<WorkloadInfo>,
}

/// Before the snapshot ends: keep a workload whose namespace the agent could not find again.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeepWorkload {
    #[prost(string, tag = "1")]
    pub uid: String,
}

/// Stop proxying for a workload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DelWorkload {
    #[prost(string, tag = "2")]
    pub uid: String,
}

/// The snapshot is complete: ztunnel drops the workloads it was not sent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotSent {}

/// ztunnel's answer: an empty `error` is success.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    #[prost(string, tag = "1")]
    pub error: String,
}

/// From the agent to ztunnel.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadRequest {
    #[prost(oneof = "Request", tags = "1, 5, 2, 3")]
    pub payload: Option<Request>,
}

/// What a [`WorkloadRequest`] asks.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Request {
    #[prost(message, tag = "1")]
    Add(AddWorkload),
    #[prost(message, tag = "5")]
    Keep(KeepWorkload),
    #[prost(message, tag = "2")]
    Del(DelWorkload),
    #[prost(message, tag = "3")]
    SnapshotSent(SnapshotSent),
}

/// From ztunnel to the agent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadResponse {
    #[prost(oneof = "Response", tags = "1")]
    pub payload: Option<Response>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Response {
    #[prost(message, tag = "1")]
    Ack(Ack),
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn field_numbers_are_the_wire_formats() {
        // add (1) { uid (1) "p", workload_info (2) { name (1) "n" } }
        let add = WorkloadRequest {
            payload: Some(Request::Add(AddWorkload {
                uid: "p".into(),
                workload_info: Some(WorkloadInfo {
                    name: "n".into(),
                    ..WorkloadInfo::default()
                }),
            })),
        };
        assert_eq!(
            add.encode_to_vec(),
            [0x0a, 0x08, 0x0a, 0x01, b'p', 0x12, 0x03, 0x0a, 0x01, b'n']
        );
        // del (2) { uid (2) "p" }
        let del = WorkloadRequest {
            payload: Some(Request::Del(DelWorkload { uid: "p".into() })),
        };
        assert_eq!(del.encode_to_vec(), [0x12, 0x03, 0x12, 0x01, b'p']);
        // snapshot_sent (3) {}, keep (5) { uid (1) }
        let sent = WorkloadRequest {
            payload: Some(Request::SnapshotSent(SnapshotSent {})),
        };
        assert_eq!(sent.encode_to_vec(), [0x1a, 0x00]);
        let keep = WorkloadRequest {
            payload: Some(Request::Keep(KeepWorkload { uid: "p".into() })),
        };
        assert_eq!(keep.encode_to_vec(), [0x2a, 0x03, 0x0a, 0x01, b'p']);
        // hello { version (1) V1 }, ack (1) { error (1) "e" }
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        assert_eq!(hello.encode_to_vec(), [0x08, 0x01]);
        let ack = WorkloadResponse {
            payload: Some(Response::Ack(Ack { error: "e".into() })),
        };
        assert_eq!(ack.encode_to_vec(), [0x0a, 0x03, 0x0a, 0x01, b'e']);
        assert_eq!(
            WorkloadResponse::decode(&[0x0a, 0x00][..]).unwrap().payload,
            Some(Response::Ack(Ack::default()))
        );
    }
}
