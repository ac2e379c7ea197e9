//! ZDS between meshcap's agent side and a ztunnel stand-in, over a real unix SOCK_SEQPACKET
//! socket with the namespaces passed as SCM_RIGHTS descriptors: the snapshot on connect, `add`
//! and `del` acknowledged, a refusal, ztunnel absent, gone, silent, and reconnecting. The
//! namespaces handed over are this process's own (/proc/self/ns/*), so no root is needed; what
//! arrives is checked by device and inode.

use meshcap::ambient::zds::agent::{Agent, ZdsError};
use meshcap::ambient::zds::identity;
use meshcap::ambient::zds::messages::{Request, WorkloadInfo};
use meshcap::ambient::zds::ztunnel::StandIn;
use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

/// Generous: only a broken exchange waits this long.
const WAIT: Duration = Duration::from_secs(10);

/// A socket path in a directory of its own, removed when dropped.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new(tag: &str) -> SocketDir {
        let dir = std::env::temp_dir().join(format!("meshcap-zds-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        SocketDir(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("ztunnel.sock")
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn info(name: &str) -> WorkloadInfo {
    WorkloadInfo {
        name: name.into(),
        namespace: "default".into(),
        service_account: "sa".into(),
    }
}

fn ns(kind: &str) -> File {
    File::open(format!("/proc/self/ns/{kind}")).unwrap()
}

fn same(a: &File, b: &File) -> bool {
    identity(a).unwrap() == identity(b).unwrap()
}

/// A request as the stand-in got it: uid, whether it was an add, the descriptor.
type Got = (String, bool, Option<File>);

/// A stand-in on its own thread that answers `n` requests with `answer` and returns what it got
/// (uid, whether it was an add, the descriptor).
fn serve(
    standin: StandIn,
    n: usize,
    answer: &'static str,
) -> std::thread::JoinHandle<(StandIn, Vec<Got>)> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..n {
            let received = standin.receive().unwrap();
            standin.ack(answer).unwrap();
            let (uid, add) = match received.request {
                Request::Add(a) => (a.uid, true),
                Request::Del(d) => (d.uid, false),
                other => panic!("unexpected {other:?}"),
            };
            got.push((uid, add, received.netns));
        }
        (standin, got)
    })
}

#[test]
fn snapshot_then_add_and_del_each_acknowledged() {
    let dir = SocketDir::new("flow");
    let agent = Agent::listen(&dir.socket(), WAIT).unwrap();

    // No ztunnel yet: an ADD fails (closed), the pod is not enrolled.
    assert!(matches!(
        agent.add("pod-x", info("x"), ns("net")),
        Err(ZdsError::NotConnected)
    ));
    // A pod the agent knew before (its restart): it goes out with the snapshot.
    agent.restore("pod-a", info("a"), ns("net"));
    assert_eq!(agent.enrolled(), ["pod-a"]);

    let standin = StandIn::connect(&dir.socket(), WAIT).unwrap();
    let snapshot = standin.snapshot().unwrap();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].0, "pod-a");
    assert!(same(&snapshot[0].1, &ns("net")));
    assert!(agent.wait_connected(WAIT));

    // add: the namespace arrives with it; del: no descriptor.
    let ztunnel = serve(standin, 2, "");
    agent.add("pod-b", info("b"), ns("ipc")).unwrap();
    agent.del("pod-a").unwrap();
    let (standin, got) = ztunnel.join().unwrap();
    assert_eq!(got[0].0, "pod-b");
    assert!(got[0].1);
    assert!(same(got[0].2.as_ref().unwrap(), &ns("ipc")));
    assert_eq!((got[1].0.as_str(), got[1].1), ("pod-a", false));
    assert!(got[1].2.is_none());
    assert_eq!(agent.enrolled(), ["pod-b"]);

    // A refusal fails the add; the pod is not enrolled, and it is withdrawn with a del: real
    // ztunnel keeps a pod it could not start and retries it (its proxy came up later in a pod
    // without rules, by hand against ztunnel 62d8265, see docs/AMBIENT.md).
    const TAKEN: &str = "failure to start proxy : Bind([::]:15008, AddrInUse)";
    let ztunnel = std::thread::spawn(move || {
        let add = standin.receive().unwrap();
        standin.ack(TAKEN).unwrap();
        let del = standin.receive().unwrap();
        standin.ack("").unwrap();
        (standin, add.request, del)
    });
    match agent.add("pod-c", info("c"), ns("uts")) {
        Err(ZdsError::Refused { uid, error }) => {
            assert_eq!(uid, "pod-c");
            assert_eq!(error, TAKEN);
        }
        other => panic!("{other:?}"),
    }
    let (standin, add, del) = ztunnel.join().unwrap();
    assert!(matches!(add, Request::Add(a) if a.uid == "pod-c"));
    assert!(
        matches!(&del.request, Request::Del(d) if d.uid == "pod-c"),
        "{:?}",
        del.request
    );
    assert!(del.netns.is_none());
    assert_eq!(agent.enrolled(), ["pod-b"]);

    // ztunnel restarts: the old connection goes, the new one gets a fresh snapshot.
    drop(standin);
    let standin = StandIn::connect(&dir.socket(), WAIT).unwrap();
    let snapshot = standin.snapshot().unwrap();
    let uids: Vec<&str> = snapshot.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(uids, ["pod-b"]);
    assert!(same(&snapshot[0].1, &ns("ipc")));
    let ztunnel = serve(standin, 1, "");
    agent.add("pod-d", info("d"), ns("net")).unwrap();
    let (standin, _) = ztunnel.join().unwrap();
    assert_eq!(agent.enrolled(), ["pod-b", "pod-d"]);

    // ztunnel gone: the add fails on the dead connection, then says not connected; a del
    // still removes the pod (the next snapshot leaves it out).
    drop(standin);
    assert!(matches!(
        agent.add("pod-e", info("e"), ns("net")),
        Err(ZdsError::Connection(_))
    ));
    assert!(matches!(
        agent.add("pod-e", info("e"), ns("net")),
        Err(ZdsError::NotConnected)
    ));
    agent.del("pod-b").unwrap();
    assert_eq!(agent.enrolled(), ["pod-d"]);

    drop(agent);
    assert!(!dir.socket().exists(), "the socket file stays behind");
}

#[test]
fn a_silent_ztunnel_fails_the_add_after_the_ack_timeout() {
    let dir = SocketDir::new("silent");
    let agent = Agent::listen(&dir.socket(), Duration::from_millis(300)).unwrap();
    let standin = StandIn::connect(&dir.socket(), WAIT).unwrap();
    assert!(standin.snapshot().unwrap().is_empty());
    assert!(agent.wait_connected(WAIT));
    // The stand-in receives the add but never answers.
    match agent.add("pod-s", info("s"), ns("net")) {
        Err(ZdsError::Connection(reason)) => assert!(reason.contains("no answer"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        standin.receive().unwrap().request,
        Request::Add(_)
    ));
    assert!(agent.enrolled().is_empty());
}
