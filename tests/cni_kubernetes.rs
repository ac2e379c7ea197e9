//! meshcap-cni with the Kubernetes pod lookup on, driven as a kubelet's runtime drives it
//! (chained after Debian's bridge and host-local, `CNI_ARGS` naming the pod) against a real TLS
//! API server that the test starts on the loopback of the node's namespace:
//!
//! - the pod's annotations change the capture, and real TCP traffic in the pod's namespace shows
//!   each one's effect (an excluded inbound port, an included outbound CIDR, TPROXY);
//! - faults of the API server and bad input end in a clear error and nothing installed;
//! - the pods Istio's plugin skips are skipped;
//! - CHECK and DEL with the lookup on, DEL of a pod that is gone from the API server.

mod common;

use common::apiserver::{ApiServer, CaForm, Credential, Fault};
use common::cni::{CniNode, interception_state, stdout_json};
use netns_test_harness::probe::{Class, Outcome, Probe, Role, Servers, run_client};
use netns_test_harness::{Netns, require_root};
use serde_json::{Value, json};
use socket2::{Domain, Socket, Type};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const POD_NAMESPACE: &str = "test-ns";
const POD_NAME: &str = "web-0";
/// The bridge's gateway: the node's address on the pod network, where inbound probes come from.
const GATEWAY: &str = "198.51.100.1";
/// Served by the node: a destination an included CIDR covers, and one it does not.
const INCLUDED_DST: &str = "203.0.113.10:80";
const OTHER_DST: &str = "192.0.2.10:80";

/// `CNI_ARGS` as containerd passes them for a pod of `namespace`.
fn kubelet_args(namespace: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={POD_NAME};\
         K8S_POD_INFRA_CONTAINER_ID=0123456789ab;K8S_POD_UID=0b1c2d3e-0000-4000-8000-0000000000aa"
    )
}

/// An injected pod (istio-proxy container, `sidecar.istio.io/status`) of `namespace` with these
/// extra annotations.
fn injected_pod(namespace: &str, annotations: Value) -> Value {
    let mut all = json!({"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"});
    for (k, v) in annotations.as_object().expect("annotations object") {
        all[k] = v.clone();
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": POD_NAME,
            "namespace": namespace,
            "uid": "0b1c2d3e-0000-4000-8000-0000000000aa",
            "annotations": all,
        },
        "spec": {
            "containers": [
                {"name": "app", "image": "app"},
                {"name": "istio-proxy", "image": "proxy", "args": ["proxy", "sidecar"],
                 "securityContext": {"runAsUser": 1337, "runAsGroup": 1337}},
            ]
        },
        "status": {"phase": "Pending"}
    })
}

fn stanza(backend: &str, kubeconfig: &Path) -> Value {
    json!({
        "type": "meshcap-cni",
        "capture": {"backend": backend},
        "kubernetes": {"kubeconfig": kubeconfig.display().to_string()},
    })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// --- the acceptance end to end -----------------------------------------------------------------

/// The inbound capture listener (15006): a transparent socket, as a TPROXY listener must be,
/// that answers `captured-inbound local=ADDR orig=ADDR peer=ADDR`. Under REDIRECT the accepted
/// socket's local address is the capture port and the original destination is conntrack's;
/// under TPROXY the socket itself holds the original destination and the client's address.
struct InboundCapture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl InboundCapture {
    fn start(pod: &Netns) -> InboundCapture {
        let listener: TcpListener = pod
            .run(|| {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.set_ip_transparent_v4(true)?;
                socket.bind(&"0.0.0.0:15006".parse::<SocketAddr>().unwrap().into())?;
                socket.listen(64)?;
                socket.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(socket.into())
            })
            .expect("inbound capture listener");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let Ok((stream, peer)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let local = stream.local_addr().map(|a| a.to_string());
                let orig = socket2::SockRef::from(&stream)
                    .original_dst_v4()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .map_or_else(|| "none".to_owned(), |a| a.to_string());
                let mut stream = stream;
                let _ = stream.set_nonblocking(false);
                let _ = write!(
                    stream,
                    "captured-inbound local={} orig={orig} peer={peer}",
                    local.unwrap_or_else(|_| "?".into())
                );
            }
        });
        InboundCapture {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for InboundCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pod set up through the chain with the lookup on, with its listeners: the app on 8080 and
/// 9080, the outbound capture on 15001, the inbound capture on 15006; the node serves
/// [`INCLUDED_DST`] and [`OTHER_DST`] on its loopback, and the pod routes to them via the bridge.
struct Wired {
    // Dropped first: the listeners stop before their namespaces go.
    _inbound: InboundCapture,
    _servers: Servers,
    _server: ApiServer,
    pod_ip: String,
    pod: Netns,
    node: CniNode,
}

fn wire(backend: &str, annotations: Value) -> Wired {
    let mut node = CniNode::new("k8se2e");
    node.cni_args = Some(kubelet_args(POD_NAMESPACE));
    let server = ApiServer::start_in(&node.host, Fault::None);
    server.serve_pod(&injected_pod(POD_NAMESPACE, annotations.clone()));
    let kubeconfig = server.kubeconfig(CaForm::Data, Credential::Token);
    let pod = Netns::new("k8se2epod");
    let (bridge, out) = node.add_chain("1.0.0", &pod, "e2e", &stanza(backend, &kubeconfig));
    assert!(
        out.status.success(),
        "{backend} {annotations}: ADD: {}",
        text(&out)
    );
    assert_eq!(
        stdout_json(&out),
        bridge,
        "ADD passes the bridge's result on"
    );
    assert!(server.requests() >= 1, "the plugin looked the pod up");
    let pod_ip = bridge["ips"][0]["address"]
        .as_str()
        .expect("bridge address")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    pod.ip_batch(&[format!("route replace default via {GATEWAY}")]);
    node.host.ip_batch(&[
        "addr add 203.0.113.10/32 dev lo".to_owned(),
        "addr add 192.0.2.10/32 dev lo".to_owned(),
    ]);
    let mut servers = Servers::new();
    let at = |a: &str| a.parse::<SocketAddr>().unwrap();
    servers.tcp(
        &pod,
        at("0.0.0.0:15001"),
        Role::Capture(Class::CapturedOutbound),
        false,
    );
    for port in [8080, 9080] {
        servers.tcp(&pod, at(&format!("0.0.0.0:{port}")), Role::App, false);
    }
    for dst in [INCLUDED_DST, OTHER_DST] {
        servers.tcp(&node.host, at(dst), Role::Server, false);
    }
    let inbound = InboundCapture::start(&pod);
    Wired {
        node,
        pod,
        pod_ip,
        _server: server,
        _servers: servers,
        _inbound: inbound,
    }
}

impl Wired {
    /// A connection from the node (the gateway address) to the pod's `port`.
    fn inbound(&self, port: u16) -> Outcome {
        let probe = Probe::tcp(
            netns_test_harness::probe::From::peer("node"),
            &format!("{}:{port}", self.pod_ip),
        );
        netns_test_harness::join(
            self.node
                .host
                .thread(None, move || run_client(&probe, Duration::from_secs(5))),
        )
    }

    /// A connection from the pod's app (uid 1000) to `dst`.
    fn outbound(&self, dst: &str) -> Outcome {
        let probe = Probe::tcp(netns_test_harness::probe::From::pod(1000, 1000), dst);
        netns_test_harness::join(
            self.pod
                .thread(Some(netns_test_harness::User::new(1000, 1000)), move || {
                    run_client(&probe, Duration::from_secs(5))
                }),
        )
    }
}

/// The REDIRECT answer of the inbound capture for the pod's `port`.
fn redirected_inbound(w: &Wired, port: u16, outcome: &Outcome) {
    assert_eq!(outcome.class, Class::CapturedInbound, "{port}: {outcome}");
    let want = format!(
        "local={ip}:15006 orig={ip}:{port} peer={GATEWAY}:",
        ip = w.pod_ip
    );
    assert!(
        outcome.seen.starts_with(&want),
        "{port}: REDIRECT to 15006 expected, {want}…, got {outcome}"
    );
}

fn direct_app(w: &Wired, port: u16, outcome: &Outcome) {
    assert_eq!(
        outcome.to_string(),
        format!("direct app {}:{port}", w.pod_ip),
        "{port} reaches the app itself"
    );
}

#[test]
fn pod_annotations_change_the_capture_of_real_traffic() {
    if !require_root("pod_annotations_change_the_capture_of_real_traffic") {
        return;
    }
    let captured_out = |dst: &str| format!("captured-outbound {dst}");
    let direct_server = |dst: &str| format!("direct server {dst}");
    for backend in ["nftables", "iptables"] {
        // No annotation: Istio's defaults capture every inbound port and every destination.
        let w = wire(backend, json!({}));
        for port in [8080, 9080] {
            redirected_inbound(&w, port, &w.inbound(port));
        }
        assert_eq!(
            w.outbound(INCLUDED_DST).to_string(),
            captured_out(INCLUDED_DST)
        );
        assert_eq!(w.outbound(OTHER_DST).to_string(), captured_out(OTHER_DST));
        drop(w);

        // (a) An excluded inbound port reaches the app; the others are still captured.
        let w = wire(
            backend,
            json!({"traffic.sidecar.istio.io/excludeInboundPorts": "9080"}),
        );
        direct_app(&w, 9080, &w.inbound(9080));
        redirected_inbound(&w, 8080, &w.inbound(8080));
        drop(w);

        // (b) An included outbound CIDR: only destinations inside it are captured.
        let w = wire(
            backend,
            json!({"traffic.sidecar.istio.io/includeOutboundIPRanges": "203.0.113.0/24"}),
        );
        assert_eq!(
            w.outbound(INCLUDED_DST).to_string(),
            captured_out(INCLUDED_DST)
        );
        assert_eq!(w.outbound(OTHER_DST).to_string(), direct_server(OTHER_DST));
        redirected_inbound(&w, 8080, &w.inbound(8080));
        drop(w);

        // (c) TPROXY: the transparent listener gets the connection without NAT, its socket
        // holding the original destination and the client's own address.
        let w = wire(
            backend,
            json!({"sidecar.istio.io/interceptionMode": "TPROXY"}),
        );
        for port in [8080, 9080] {
            let got = w.inbound(port);
            assert_eq!(
                got.class,
                Class::CapturedInbound,
                "{backend} TPROXY {port}: {got}"
            );
            let want = format!(
                "local={ip}:{port} orig={ip}:{port} peer={GATEWAY}:",
                ip = w.pod_ip
            );
            assert!(
                got.seen.starts_with(&want),
                "{backend} TPROXY {port}: {want}… expected, got {got}"
            );
        }
        assert!(
            w.pod
                .exec_ok(&["ip", "rule", "show"])
                .contains("fwmark 0x539 lookup 133"),
            "{backend}: TPROXY's fwmark rule is in place"
        );
        // Outbound capture stays REDIRECT.
        assert_eq!(
            w.outbound(INCLUDED_DST).to_string(),
            captured_out(INCLUDED_DST)
        );
        drop(w);
    }
}

// --- faults and bad input ----------------------------------------------------------------------

/// What a failed ADD must report: the CNI code and words its message must hold.
struct Refusal {
    name: &'static str,
    code: u64,
    needles: Vec<String>,
}

/// ADD with the lookup on in a fresh pod namespace with `stanza`: the output and how long the
/// plugin took. Nothing may be installed whatever happens.
fn add_in_fresh_pod(node: &CniNode, stanza: &Value, name: &str) -> (Output, Duration) {
    let pod = Netns::new("k8sfault");
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "198.51.100.9/24"}]});
    let start = Instant::now();
    let out = node.invoke(
        "meshcap-cni",
        &node.vars("ADD", "fault", Some(&pod.path())),
        &CniNode::config("1.0.0", stanza, Some(&prev)),
    );
    let took = start.elapsed();
    assert_eq!(interception_state(&pod), "", "{name}: nothing installed");
    (out, took)
}

fn assert_refused(out: &Output, r: &Refusal) {
    assert!(
        !out.status.success(),
        "{}: must fail: {}",
        r.name,
        text(out)
    );
    let err = stdout_json(out);
    assert_eq!(err["code"], r.code, "{}: {err}", r.name);
    let message = format!(
        "{} {}",
        err["msg"].as_str().unwrap_or_default(),
        err["details"].as_str().unwrap_or_default()
    );
    for needle in &r.needles {
        assert!(
            message.contains(needle.as_str()),
            "{}: {message:?} should name {needle:?}",
            r.name
        );
    }
    assert!(
        !String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "{}: logged",
        r.name
    );
}

#[test]
fn unreachable_or_slow_api_server_is_try_again_later() {
    if !require_root("unreachable_or_slow_api_server_is_try_again_later") {
        return;
    }
    let mut node = CniNode::new("k8sdown");
    node.cni_args = Some(kubelet_args(POD_NAMESPACE));
    let node = &node;
    // Each takes the plugin's whole retry budget: both at once.
    std::thread::scope(|s| {
        let runs: Vec<_> = [
            ("API down", Fault::Down),
            ("API slow", Fault::Slow(Duration::from_secs(30))),
        ]
        .into_iter()
        .map(|(name, fault)| {
            s.spawn(move || {
                let server = ApiServer::start_in(&node.host, fault);
                server.serve_pod(&injected_pod(POD_NAMESPACE, json!({})));
                let kubeconfig = server.kubeconfig(CaForm::Data, Credential::Token);
                let (out, took) = add_in_fresh_pod(node, &stanza("nftables", &kubeconfig), name);
                (name, server.url.clone(), out, took)
            })
        })
        .collect();
        for run in runs {
            let (name, url, out, took) = run.join().expect("fault thread");
            assert_refused(
                &out,
                &Refusal {
                    name,
                    code: 11,
                    needles: vec![url, "unavailable".into(), "attempts".into()],
                },
            );
            // The retry budget is the plugin's (5 s); a test that ends proves it is bounded.
            println!("{name}: code 11 after {took:.1?}");
        }
    });
}

#[test]
fn api_answers_and_bad_input_end_in_clear_errors_with_nothing_installed() {
    if !require_root("api_answers_and_bad_input_end_in_clear_errors_with_nothing_installed") {
        return;
    }
    let mut node = CniNode::new("k8sbad");
    node.cni_args = Some(kubelet_args(POD_NAMESPACE));
    let serving = |fault: Fault, pod: Option<Value>| {
        let server = ApiServer::start_in(&node.host, fault);
        if let Some(pod) = pod {
            server.serve_pod(&pod);
        }
        server
    };
    let good = || Some(injected_pod(POD_NAMESPACE, json!({})));
    let s = |v: &str| v.to_owned();

    // 401: the server refuses the token.
    let server = serving(Fault::None, good());
    let kubeconfig = server.kubeconfig(CaForm::Data, Credential::WrongToken);
    let (out, _) = add_in_fresh_pod(&node, &stanza("nftables", &kubeconfig), "401");
    assert_refused(
        &out,
        &Refusal {
            name: "401",
            code: 999,
            needles: vec![
                s("refused the credentials"),
                kubeconfig.display().to_string(),
                s("HTTP 401"),
            ],
        },
    );

    // 404: the pod is not on the server.
    let server = serving(Fault::None, None);
    let kubeconfig = server.kubeconfig(CaForm::Data, Credential::Token);
    let (out, _) = add_in_fresh_pod(&node, &stanza("nftables", &kubeconfig), "404");
    assert_refused(
        &out,
        &Refusal {
            name: "404",
            code: 999,
            needles: vec![s("pod test-ns/web-0 not found")],
        },
    );

    // A body that is not JSON.
    let server = serving(Fault::Garbage, good());
    let kubeconfig = server.kubeconfig(CaForm::Data, Credential::Token);
    let (out, _) = add_in_fresh_pod(&node, &stanza("nftables", &kubeconfig), "garbage");
    assert_refused(
        &out,
        &Refusal {
            name: "garbage body",
            code: 999,
            needles: vec![s("is not that Pod")],
        },
    );

    // Annotation values the installer's validation refuses, with either backend.
    for (key, value) in [
        ("traffic.sidecar.istio.io/excludeInboundPorts", "80,http"),
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "203.0.113.7",
        ),
        ("sidecar.istio.io/interceptionMode", "BOGUS"),
    ] {
        let server = serving(
            Fault::None,
            Some(injected_pod(POD_NAMESPACE, json!({key: value}))),
        );
        let kubeconfig = server.kubeconfig(CaForm::Data, Credential::Token);
        for backend in ["nftables", "iptables"] {
            let (out, _) = add_in_fresh_pod(&node, &stanza(backend, &kubeconfig), key);
            assert_refused(
                &out,
                &Refusal {
                    name: "bad annotation",
                    code: 7,
                    needles: vec![s(key), s(value)],
                },
            );
        }
    }

    // The kubeconfig: missing, malformed; the "kubernetes" object: an unknown key.
    let server = serving(Fault::None, good());
    let missing = server.dir().join("no-such-kubeconfig");
    let (out, _) = add_in_fresh_pod(&node, &stanza("nftables", &missing), "missing");
    assert_refused(
        &out,
        &Refusal {
            name: "kubeconfig missing",
            code: 7,
            needles: vec![missing.display().to_string()],
        },
    );
    let malformed = server.dir().join("malformed-kubeconfig");
    std::fs::write(&malformed, "clusters: [ {server: \n  - :::\n").unwrap();
    let (out, _) = add_in_fresh_pod(&node, &stanza("nftables", &malformed), "malformed");
    assert_refused(
        &out,
        &Refusal {
            name: "kubeconfig malformed",
            code: 7,
            needles: vec![malformed.display().to_string()],
        },
    );
    let kubeconfig = server.kubeconfig(CaForm::Data, Credential::Token);
    let mut bad = stanza("nftables", &kubeconfig);
    bad["kubernetes"]["exclude_namespace"] = json!(["kube-system"]);
    let (out, _) = add_in_fresh_pod(&node, &bad, "unknown key");
    assert_refused(
        &out,
        &Refusal {
            name: "unknown kubernetes key",
            code: 7,
            needles: vec![s("\"kubernetes\""), s("exclude_namespace")],
        },
    );
    bad["kubernetes"] = json!("/etc/kubeconfig");
    let (out, _) = add_in_fresh_pod(&node, &bad, "not an object");
    assert_refused(
        &out,
        &Refusal {
            name: "kubernetes not an object",
            code: 7,
            needles: vec![s("\"kubernetes\"")],
        },
    );
}

// --- skip rules -------------------------------------------------------------------------------

#[test]
fn pods_istio_skips_are_skipped_with_one_log_line() {
    if !require_root("pods_istio_skips_are_skipped_with_one_log_line") {
        return;
    }
    let base = injected_pod(POD_NAMESPACE, json!({}));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut pod = base.clone();
        f(&mut pod);
        pod
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no istio-proxy container",
            with(&|p| {
                p["spec"]["containers"] = json!([{"name": "app", "image": "app"}]);
            }),
            "no istio-proxy container",
        ),
        (
            "istio-init init container",
            with(&|p| {
                p["spec"]["initContainers"] = json!([{"name": "istio-init", "image": "proxy"}]);
            }),
            "istio-init init container",
        ),
        (
            "inject label false",
            with(&|p| {
                p["metadata"]["labels"] = json!({"sidecar.istio.io/inject": "false"});
            }),
            "sidecar.istio.io/inject is \"false\"",
        ),
        (
            "inject annotation false",
            with(&|p| {
                p["metadata"]["annotations"]["sidecar.istio.io/inject"] = json!("false");
            }),
            "sidecar.istio.io/inject is \"false\"",
        ),
        (
            "no status annotation",
            with(&|p| {
                p["metadata"]["annotations"] = json!({});
            }),
            "no sidecar.istio.io/status annotation",
        ),
    ];
    let mut node = CniNode::new("k8sskip");
    node.cni_args = Some(kubelet_args(POD_NAMESPACE));
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "198.51.100.9/24"}]});
    let skipped = |node: &CniNode, stanza: &Value, name: &str, reason: &str| {
        let pod = Netns::new("k8sskip");
        let out = node.invoke(
            "meshcap-cni",
            &node.vars("ADD", "skip", Some(&pod.path())),
            &CniNode::config("1.0.0", stanza, Some(&prev)),
        );
        assert!(
            out.status.success(),
            "{name}: skipped, not failed: {}",
            text(&out)
        );
        assert_eq!(stdout_json(&out), prev, "{name}: prevResult printed");
        assert_eq!(interception_state(&pod), "", "{name}: nothing installed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: one log line: {stderr}");
        assert!(
            lines[0].contains("skipped") && lines[0].contains(reason),
            "{name}: the line says why ({reason}): {}",
            lines[0]
        );
    };
    for (name, pod, reason) in &cases {
        let server = ApiServer::start_in(&node.host, Fault::None);
        server.serve_pod(pod);
        let kubeconfig = server.kubeconfig(CaForm::Data, Credential::Token);
        skipped(&node, &stanza("nftables", &kubeconfig), name, reason);
        assert_eq!(server.requests(), 1, "{name}: one lookup");
    }

    // Excluded namespaces: decided from CNI_ARGS alone, without a request. The API server is
    // down, so a request would fail the ADD with code 11.
    let down = ApiServer::start_in(&node.host, Fault::Down);
    let kubeconfig = down.kubeconfig(CaForm::Data, Credential::Token);
    node.cni_args = Some(kubelet_args("kube-system"));
    skipped(
        &node,
        &stanza("nftables", &kubeconfig),
        "kube-system (default)",
        "namespace kube-system is excluded",
    );
    node.cni_args = Some(kubelet_args(POD_NAMESPACE));
    let mut custom = stanza("nftables", &kubeconfig);
    custom["kubernetes"]["exclude_namespaces"] = json!(["istio-system", POD_NAMESPACE]);
    skipped(
        &node,
        &custom,
        "exclude_namespaces",
        "namespace test-ns is excluded",
    );
}

// --- CHECK and DEL -----------------------------------------------------------------------------

#[test]
fn check_with_the_lookup_passes_and_del_cleans_even_when_the_pod_is_gone() {
    if !require_root("check_with_the_lookup_passes_and_del_cleans_even_when_the_pod_is_gone") {
        return;
    }
    for backend in ["nftables", "iptables"] {
        let mut node = CniNode::new("k8sdel");
        node.cni_args = Some(kubelet_args(POD_NAMESPACE));
        // Settings that differ from the stanza's: CHECK agrees only with the pod's own.
        let server = ApiServer::start_in(&node.host, Fault::None);
        server.serve_pod(&injected_pod(
            POD_NAMESPACE,
            json!({
                "sidecar.istio.io/interceptionMode": "TPROXY",
                "traffic.sidecar.istio.io/excludeInboundPorts": "9080",
            }),
        ));
        let meshcap = stanza(backend, &server.kubeconfig(CaForm::Data, Credential::Token));
        // The same API server without the pod: it answers 404.
        let empty = ApiServer::start_in(&node.host, Fault::None);
        let gone = stanza(backend, &empty.kubeconfig(CaForm::Data, Credential::Token));

        for (round, del_stanza) in [("pod present", &meshcap), ("pod gone (404)", &gone)] {
            let pod = Netns::new("k8sdelpod");
            let (bridge, out) = node.add_chain("1.0.0", &pod, "del", &meshcap);
            assert!(
                out.status.success(),
                "{backend} {round}: ADD: {}",
                text(&out)
            );
            assert_ne!(interception_state(&pod), "", "{backend}: rules installed");
            assert!(pod.exec_ok(&["ip", "rule", "show"]).contains("lookup 133"));

            let check = node.invoke(
                "meshcap-cni",
                &node.vars("CHECK", "del", Some(&pod.path())),
                &CniNode::config("1.0.0", &meshcap, Some(&bridge)),
            );
            assert!(
                check.status.success(),
                "{backend} {round}: CHECK with the lookup: {}",
                text(&check)
            );
            // Without the pod's settings the same rules are drift: CHECK does look the pod up.
            let plain = json!({"type": "meshcap-cni", "capture": {"backend": backend}});
            let check = node.invoke(
                "meshcap-cni",
                &node.vars("CHECK", "del", Some(&pod.path())),
                &CniNode::config("1.0.0", &plain, Some(&bridge)),
            );
            assert!(
                !check.status.success(),
                "{backend}: CHECK without the pod's settings"
            );

            let del = node.del_chain("1.0.0", Some(&pod.path()), "del", del_stanza);
            assert!(
                del.status.success(),
                "{backend} {round}: DEL: {}",
                text(&del)
            );
            assert_eq!(
                interception_state(&pod),
                "",
                "{backend} {round}: DEL leaves no rules"
            );
            let rules = pod.exec_ok(&["ip", "rule", "show"]);
            assert!(
                !rules.contains("lookup 133"),
                "{backend} {round}: DEL leaves TPROXY's fwmark rule: {rules}"
            );
        }
        assert!(
            empty.requests() >= 1,
            "the DEL asked the server that lost the pod"
        );
    }
}

/// What a pod's namespace holds that DEL must put back: every rule and user chain of both
/// iptables variants and families, the nftables tables (iptables-nft's own tables, which an
/// iptables-nft run leaves empty, are covered by their rules above), the policy routing rules
/// and the routes of every table.
fn netfilter_and_routing(pod: &Netns) -> String {
    let builtin = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
    let mut state = String::new();
    for program in [
        "iptables-legacy-save",
        "ip6tables-legacy-save",
        "iptables-nft-save",
        "ip6tables-nft-save",
    ] {
        let saved = pod.exec_ok(&[program]);
        for line in saved.lines() {
            let user_chain = line
                .strip_prefix(':')
                .and_then(|l| l.split_whitespace().next())
                .is_some_and(|chain| !builtin.contains(&chain));
            if line.starts_with("-A ") || user_chain {
                state.push_str(&format!("{program}: {line}\n"));
            }
        }
    }
    let iptables_nft_table = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        matches!(
            words.as_slice(),
            [
                "table",
                "ip" | "ip6",
                "nat" | "mangle" | "raw" | "filter" | "security"
            ]
        )
    };
    for line in pod.exec_ok(&["nft", "list", "tables"]).lines() {
        if !iptables_nft_table(line) {
            state.push_str(&format!("nft: {line}\n"));
        }
    }
    for argv in [
        &["ip", "-4", "rule"][..],
        &["ip", "-6", "rule"],
        &["ip", "-4", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
    ] {
        for line in pod.exec_ok(argv).lines() {
            state.push_str(&format!("{}: {line}\n", argv.join(" ")));
        }
    }
    state
}

#[test]
fn del_with_the_api_server_down_leaves_the_namespace_as_before_the_add() {
    if !require_root("del_with_the_api_server_down_leaves_the_namespace_as_before_the_add") {
        return;
    }
    // A proxy uid other than the stanza's (1337) too: the owner MARK rules of TPROXY name it.
    let tproxy_other_uid = {
        let mut pod = injected_pod(
            POD_NAMESPACE,
            json!({"sidecar.istio.io/interceptionMode": "TPROXY"}),
        );
        pod["spec"]["containers"][1]["securityContext"]["runAsUser"] = json!(1400);
        pod
    };
    let pods = [
        (
            "TPROXY",
            injected_pod(
                POD_NAMESPACE,
                json!({"sidecar.istio.io/interceptionMode": "TPROXY"}),
            ),
        ),
        ("TPROXY, proxy uid 1400", tproxy_other_uid),
        (
            "excludeInterfaces",
            injected_pod(
                POD_NAMESPACE,
                json!({"traffic.sidecar.istio.io/excludeInterfaces": "eth7,eth8,net1"}),
            ),
        ),
    ];
    for backend in ["iptables", "nftables"] {
        for (what, served) in &pods {
            let mut node = CniNode::new("k8sdown");
            node.cni_args = Some(kubelet_args(POD_NAMESPACE));
            let server = ApiServer::start_in(&node.host, Fault::None);
            server.serve_pod(served);
            // The kubeconfig outlives the server: the DEL finds it, and nobody at its address.
            let kubeconfig = node.dir.join("kubeconfig");
            std::fs::copy(
                server.kubeconfig(CaForm::Data, Credential::Token),
                &kubeconfig,
            )
            .expect("keep the kubeconfig");
            let meshcap = stanza(backend, &kubeconfig);
            let pod = Netns::new("k8sdownpod");
            let before = netfilter_and_routing(&pod);

            let (_, out) = node.add_chain("1.0.0", &pod, "down", &meshcap);
            assert!(
                out.status.success(),
                "{backend} {what}: ADD: {}",
                text(&out)
            );
            let installed = netfilter_and_routing(&pod);
            assert_ne!(installed, before, "{backend} {what}: ADD installed rules");

            drop(server);
            let del = node.del_chain("1.0.0", Some(&pod.path()), "down", &meshcap);
            assert!(
                del.status.success(),
                "{backend} {what}: DEL: {}",
                text(&del)
            );
            assert!(
                text(&del).contains("unavailable"),
                "{backend} {what}: the lookup failed: {}",
                text(&del)
            );
            let after = netfilter_and_routing(&pod);
            assert_eq!(
                after, before,
                "{backend} {what}: DEL without the pod's settings left this behind\n\
                 (installed was:\n{installed})"
            );
        }
    }
}

#[test]
fn the_pod_lookup_runs_in_the_plugins_namespace() {
    if !require_root("the_pod_lookup_runs_in_the_plugins_namespace") {
        return;
    }
    // The API server listens on the node namespace's loopback only. The pod's namespace has a
    // loopback of its own, up, where nothing listens: a lookup made from inside the pod's
    // namespace would be refused and end in code 11.
    let mut node = CniNode::new("k8swhere");
    node.cni_args = Some(kubelet_args(POD_NAMESPACE));
    let server = ApiServer::start_in(&node.host, Fault::None);
    server.serve_pod(&injected_pod(POD_NAMESPACE, json!({})));
    let meshcap = stanza(
        "nftables",
        &server.kubeconfig(CaForm::Data, Credential::Token),
    );
    let pod = Netns::new("k8swherepod");
    pod.ip_batch(&["link set lo up".to_owned()]);
    let (bridge, out) = node.add_chain("1.0.0", &pod, "where", &meshcap);
    assert!(out.status.success(), "ADD: {}", text(&out));
    let check = node.invoke(
        "meshcap-cni",
        &node.vars("CHECK", "where", Some(&pod.path())),
        &CniNode::config("1.0.0", &meshcap, Some(&bridge)),
    );
    assert!(check.status.success(), "CHECK: {}", text(&check));
    let del = node.del_chain("1.0.0", Some(&pod.path()), "where", &meshcap);
    assert!(del.status.success(), "DEL: {}", text(&del));
    assert!(
        !text(&del).contains("unavailable"),
        "DEL found the pod: {}",
        text(&del)
    );
    assert_eq!(
        server.requests(),
        3,
        "ADD, CHECK and DEL each looked the pod up"
    );
}

#[test]
fn hostile_values_are_not_echoed_whole() {
    if !require_root("hostile_values_are_not_echoed_whole") {
        return;
    }
    const MB: usize = 1 << 20;
    let huge = |unit: &str| unit.repeat(MB / unit.len());
    let mut node = CniNode::new("k8shuge");
    node.cni_args = Some(kubelet_args(POD_NAMESPACE));
    let server = ApiServer::start_in(&node.host, Fault::None);
    let kubeconfig = server.kubeconfig(CaForm::Data, Credential::Token);
    let pod = Netns::new("k8shugepod");
    for (key, value) in [
        ("sidecar.istio.io/interceptionMode", huge("X")),
        ("traffic.sidecar.istio.io/excludeInboundPorts", huge("1")),
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            huge("9"),
        ),
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            huge("10.0.0.0/8;"),
        ),
        ("traffic.sidecar.istio.io/excludeInterfaces", huge("e")),
        ("traffic.sidecar.istio.io/kubevirtInterfaces", huge("e")),
    ] {
        server.serve_pod(&injected_pod(POD_NAMESPACE, json!({ key: value })));
        let (_, out) = node.add_chain("1.0.0", &pod, "huge", &stanza("nftables", &kubeconfig));
        assert!(!out.status.success(), "{key}: refused");
        let err = stdout_json(&out);
        assert_eq!(err["code"], 7, "{key}: {err}");
        // The error names the annotation and shows the start of the value and its length.
        let msg = err["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(key), "{key}: {msg}");
        assert!(msg.contains("bytes)"), "{key}: {msg}");
        println!(
            "{key}: {} bytes of value, {} on stdout, {} on stderr",
            value.len(),
            out.stdout.len(),
            out.stderr.len()
        );
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                bytes.len() < 4096,
                "{key}: {} bytes on {stream}: {}",
                bytes.len(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(600)])
            );
        }
        let bridge_del = node.del_chain(
            "1.0.0",
            Some(&pod.path()),
            "huge",
            &stanza("nftables", &kubeconfig),
        );
        assert!(
            bridge_del.status.success(),
            "{key}: DEL: {}",
            text(&bridge_del)
        );
    }
    // A huge pod name in CNI_ARGS (as large as one environment string may be: 128 KiB).
    node.cni_args = Some(format!(
        "K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={}",
        "a".repeat(120_000)
    ));
    let vars = node.vars("ADD", "huge", Some(&pod.path()));
    let out = node.invoke(
        "meshcap-cni",
        &vars,
        &CniNode::config("1.0.0", &stanza("nftables", &kubeconfig), None),
    );
    assert_eq!(stdout_json(&out)["code"], 4, "{}", text(&out));
    assert!(out.stdout.len() < 4096 && out.stderr.len() < 4096);
}
