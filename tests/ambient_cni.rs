//! Ambient mode as a kubelet's runtime drives it: bridge + host-local, then meshcap-cni chained
//! with `"ambient"` on, `CNI_ARGS` naming the pod, the pod and its namespace's labels served by
//! a TLS API server on the node's loopback, `meshcap ambient agent` running in the throwaway
//! node namespace (sockets and state in a temporary directory) and the ztunnel stand-in
//! connected to it:
//!
//! - ADD of an ambient pod → agent → rules in the pod's namespace → the stand-in's ack → real
//!   TCP from the app reaches the stand-in's 15001, a peer's reaches 15006 → the pod annotated
//!   `ambient.istio.io/redirection: enabled`; DEL → `del` to ztunnel, rules, probe-set entry
//!   and annotation gone;
//! - faults: the agent absent, ztunnel absent (ADD fails and nothing stays), a bad annotation
//!   (code 7), ztunnel reconnecting (snapshot), the agent restarting between ADD and DEL, the
//!   API server down (code 11, the agent never asked), the annotation refused (the agent lets
//!   the pod go again);
//! - pods that are not enrolled: a sidecar pod of an unlabelled namespace gets the sidecar rules
//!   as before; a pod opting out (`istio.io/dataplane-mode=none`) of an ambient namespace is
//!   left alone. Needs root.

mod ambient_common;
mod common;

use ambient_common::standin::Ztunnel;
use ambient_common::{APP, AgentPaths, TempDir, fetch, in_probe_set, start_agent, stop_agent};
use common::apiserver::{ApiServer, CaForm, Credential, Fault};
use common::cni::{CniNode, ISTIO_CNI_FLAGS, interception_state, stdout_json};
use netns_test_harness::{Netns, require_root};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::Path;
use std::process::Output;

const VERSION: &str = "1.0.0";
const POD_NAME: &str = "productpage-0";
const UID: &str = "7d1f0c52-0000-4000-8000-0000000000a1";
const REDIRECTION: &str = "ambient.istio.io/redirection";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kubelet_args(namespace: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={POD_NAME};\
         K8S_POD_INFRA_CONTAINER_ID=0123456789ab;K8S_POD_UID={UID}"
    )
}

fn pod(namespace: &str, labels: Value, annotations: Value, sidecar: bool) -> Value {
    let mut containers = vec![json!({"name": "app", "image": "app"})];
    if sidecar {
        containers.push(json!({"name": "istio-proxy", "image": "proxy"}));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD_NAME, "namespace": namespace, "uid": UID,
                     "labels": labels, "annotations": annotations},
        "spec": {"containers": containers, "serviceAccountName": "bookinfo-productpage"},
    })
}

fn stanza(kubeconfig: &Path, control: &Path) -> Value {
    json!({
        "type": "meshcap-cni",
        "kubernetes": {"kubeconfig": kubeconfig.display().to_string()},
        "ambient": {"enabled": true, "control_socket": control.display().to_string()},
    })
}

/// The pod's address bridge + host-local gave it.
fn address(result: &Value) -> IpAddr {
    let cidr = result["ips"][0]["address"].as_str().expect("an address");
    cidr.split('/').next().unwrap().parse().unwrap()
}

fn has_ambient_rules(pod: &Netns) -> bool {
    pod.exec_ok(&["iptables-save"]).contains("ISTIO_")
}

fn error_code(out: &Output) -> u64 {
    stdout_json(out)["code"].as_u64().expect("an error code")
}

struct Node {
    cni: CniNode,
    api: ApiServer,
    kubeconfig: std::path::PathBuf,
    // Removed when the node goes (sockets and state).
    _dir: TempDir,
    paths: AgentPaths,
}

impl Node {
    fn new(tag: &str) -> Node {
        Node::with_fault(tag, Fault::None)
    }

    fn with_fault(tag: &str, fault: Fault) -> Node {
        let cni = CniNode::new(tag);
        let api = ApiServer::start_in(&cni.host, fault);
        let kubeconfig = api.kubeconfig(CaForm::Data, Credential::Token);
        let dir = TempDir::new(&format!("ambcni-{tag}"));
        let paths = AgentPaths::in_dir(&dir.0);
        Node {
            cni,
            api,
            kubeconfig,
            _dir: dir,
            paths,
        }
    }

    fn stanza(&self) -> Value {
        stanza(&self.kubeconfig, &self.paths.control)
    }
}

#[test]
fn an_ambient_pod_through_plugin_agent_and_ztunnel() {
    if !require_root("an_ambient_pod_through_plugin_agent_and_ztunnel") {
        return;
    }
    let mut node = Node::new("ambadd");
    node.cni.cni_args = Some(kubelet_args("bookinfo"));
    node.api
        .serve_namespace("bookinfo", json!({"istio.io/dataplane-mode": "ambient"}));
    node.api.serve_pod(&pod(
        "bookinfo",
        json!({"app": "productpage"}),
        json!({}),
        false,
    ));
    let pod_ns = Netns::new("ambcnipod");
    let host = &node.cni.host;

    // The agent absent: ADD fails closed (try again later), naming its socket.
    let (_, out) = node.cni.add_chain(VERSION, &pod_ns, "c1", &node.stanza());
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(error_code(&out), 11, "{}", text(&out));
    assert!(text(&out).contains("ambient node agent"), "{}", text(&out));
    assert!(!has_ambient_rules(&pod_ns));
    node.cni
        .del_chain(VERSION, Some(&pod_ns.path()), "c1", &node.stanza());

    // A bad annotation: code 7 naming it; nothing installed.
    node.api.serve_pod(&pod(
        "bookinfo",
        json!({}),
        json!({"ambient.istio.io/dns-capture": "sometimes"}),
        false,
    ));
    let (_, out) = node.cni.add_chain(VERSION, &pod_ns, "c1", &node.stanza());
    assert_eq!(error_code(&out), 7, "{}", text(&out));
    assert!(
        text(&out).contains("ambient.istio.io/dns-capture"),
        "{}",
        text(&out)
    );
    node.cni
        .del_chain(VERSION, Some(&pod_ns.path()), "c1", &node.stanza());
    node.api
        .serve_pod(&pod("bookinfo", json!({}), json!({}), false));

    // The node's own namespace as CNI_NETNS: refused (code 4) before the agent is asked.
    let vars = node.cni.vars("ADD", "c0", Some(&host.path()));
    let prev = json!({"cniVersion": VERSION, "ips": [{"address": "198.51.100.9/24"}]});
    let own = CniNode::config(VERSION, &node.stanza(), Some(&prev));
    let out = node.cni.invoke("meshcap-cni", &vars, &own);
    assert_eq!(error_code(&out), 4, "{}", text(&out));

    // The agent without ztunnel: ADD fails, and no rules, probe-set entry or state stay.
    let agent = start_agent(host, &node.paths, &[]);
    let (result, out) = node.cni.add_chain(VERSION, &pod_ns, "c1", &node.stanza());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("ztunnel is not connected"),
        "{}",
        text(&out)
    );
    assert!(!has_ambient_rules(&pod_ns), "{}", pod_ns.dump_rulesets());
    assert!(!in_probe_set(host, address(&result)));
    let state = std::fs::read_to_string(node.paths.state.join("pods.json")).unwrap();
    assert_eq!(state.trim(), "[]");
    assert!(node.api.patches().is_empty());
    node.cni
        .del_chain(VERSION, Some(&pod_ns.path()), "c1", &node.stanza());

    // With ztunnel: ADD returns once the rules are in and the stand-in has acknowledged.
    let ztunnel = Ztunnel::start(node.paths.zds.clone());
    assert_eq!(ztunnel.wait_for(1), ["snapshot []"]);
    let (result, out) = node.cni.add_chain(VERSION, &pod_ns, "c1", &node.stanza());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout_json(&out)["ips"],
        result["ips"],
        "prevResult passed on"
    );
    let ip = address(&result);
    assert_eq!(
        ztunnel.log(),
        ["snapshot []", format!("add {UID}").as_str()]
    );
    assert!(has_ambient_rules(&pod_ns));
    assert!(in_probe_set(host, ip));
    // The app's TCP out reaches 15001; a peer's TCP in reaches 15006.
    let out_to = "198.51.100.1:9";
    assert!(
        fetch(&pod_ns, Some(APP), out_to).starts_with(&format!("ztunnel-outbound {out_to} |")),
        "{}",
        fetch(&pod_ns, Some(APP), out_to)
    );
    let peer = Netns::new("ambcnipeer");
    let peer_vars = node.cni.vars("ADD", "peer", Some(&peer.path()));
    let bridge = CniNode::config(VERSION, &node.cni.bridge_stanza(), None);
    let added = node.cni.invoke("bridge", &peer_vars, &bridge);
    assert!(added.status.success(), "{}", text(&added));
    let app = format!("{ip}:8080");
    let inbound = fetch(&peer, None, &app);
    assert!(
        inbound.starts_with(&format!("ztunnel-inbound {app} |")),
        "{inbound}"
    );
    // A repeated ADD (the runtime retrying) succeeds and keeps the pod enrolled.
    let vars = node.cni.vars("ADD", "c1", Some(&pod_ns.path()));
    let again = CniNode::config(VERSION, &node.stanza(), Some(&result));
    let out = node.cni.invoke("meshcap-cni", &vars, &again);
    assert!(out.status.success(), "{}", text(&out));
    assert!(has_ambient_rules(&pod_ns) && in_probe_set(host, ip));
    assert!(fetch(&pod_ns, Some(APP), out_to).starts_with("ztunnel-outbound"));
    // The pod annotated, as Istio's agent does (once per ADD).
    let enabled = (
        format!("/api/v1/namespaces/bookinfo/pods/{POD_NAME}"),
        json!({"metadata": {"annotations": {REDIRECTION: "enabled"}}}),
    );
    assert_eq!(node.api.patches(), [enabled.clone(), enabled]);
    let served = node.api.pod("bookinfo", POD_NAME).unwrap();
    assert_eq!(served["metadata"]["annotations"][REDIRECTION], "enabled");

    // CHECK: the agent finds the pod's rules; a rule gone is drift (999, naming it), and a
    // repeated ADD (what the runtime does after a failed CHECK) puts it back.
    let check = || {
        let vars = node.cni.vars("CHECK", "c1", Some(&pod_ns.path()));
        let conf = CniNode::config(VERSION, &node.stanza(), Some(&result));
        node.cni.invoke("meshcap-cni", &vars, &conf)
    };
    let out = check();
    assert!(out.status.success(), "{}", text(&out));
    pod_ns.exec_ok(&["iptables", "-t", "nat", "-F", "ISTIO_OUTPUT"]);
    let out = check();
    assert_eq!(error_code(&out), 999, "{}", text(&out));
    assert!(
        text(&out).contains("does not hold its rules"),
        "{}",
        text(&out)
    );
    let out = node.cni.invoke("meshcap-cni", &vars, &again);
    assert!(out.status.success(), "{}", text(&out));
    let out = check();
    assert!(out.status.success(), "{}", text(&out));

    // ztunnel reconnects: it gets the pod in a fresh snapshot.
    drop(ztunnel);
    let ztunnel = Ztunnel::start(node.paths.zds.clone());
    assert_eq!(ztunnel.wait_for(1), [format!("snapshot [\"{UID}\"]")]);
    // The agent restarts between ADD and DEL: it takes the pod back, ztunnel gets it again.
    stop_agent(agent);
    let agent = start_agent(host, &node.paths, &[]);
    assert_eq!(ztunnel.wait_for(2)[1], format!("snapshot [\"{UID}\"]"));
    assert!(
        fetch(&pod_ns, Some(APP), out_to).starts_with("ztunnel-outbound"),
        "traffic still flows"
    );

    // DEL: ztunnel lets go, rules and the probe-set entry go, the annotation is removed.
    let out = node
        .cni
        .del_chain(VERSION, Some(&pod_ns.path()), "c1", &node.stanza());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        ztunnel.log().last().map(String::as_str),
        Some(format!("del {UID}").as_str())
    );
    assert!(!has_ambient_rules(&pod_ns), "{}", pod_ns.dump_rulesets());
    assert!(!pod_ns.exec_ok(&["ip", "rule"]).contains("0x111/0xfff"));
    assert!(!in_probe_set(host, ip));
    let served = node.api.pod("bookinfo", POD_NAME).unwrap();
    assert!(served["metadata"]["annotations"].get(REDIRECTION).is_none());
    // A repeated DEL, and a DEL with the agent gone, succeed (DEL never fails the deletion).
    let again = node.cni.del_chain(VERSION, None, "c1", &node.stanza());
    assert!(again.status.success(), "{}", text(&again));
    stop_agent(agent);
    let gone = node.cni.del_chain(VERSION, None, "c1", &node.stanza());
    assert!(gone.status.success(), "{}", text(&gone));
    let del = node.cni.vars("DEL", "peer", Some(&peer.path()));
    node.cni.invoke("bridge", &del, &bridge);
    drop(ztunnel);
}

#[test]
fn pods_that_are_not_enrolled_keep_the_sidecar_path() {
    if !require_root("pods_that_are_not_enrolled_keep_the_sidecar_path") {
        return;
    }
    let mut node = Node::new("ambside");
    let host = &node.cni.host;
    let agent = start_agent(host, &node.paths, &[]);
    let ztunnel = Ztunnel::start(node.paths.zds.clone());
    assert_eq!(ztunnel.wait_for(1), ["snapshot []"]);
    let pod_ns = Netns::new("ambsidepod");

    // An injected pod of a namespace without the label: Istio's sidecar rules, as before.
    node.cni.cni_args = Some(kubelet_args("plain"));
    node.api.serve_namespace("plain", json!({}));
    let status = json!({"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"});
    node.api.serve_pod(&pod("plain", json!({}), status, true));
    let (result, out) = node.cni.add_chain(VERSION, &pod_ns, "s1", &node.stanza());
    assert!(out.status.success(), "{}", text(&out));
    let vars = node.cni.vars("CHECK", "s1", Some(&pod_ns.path()));
    let conf = CniNode::config(VERSION, &node.stanza(), Some(&result));
    let out = node.cni.invoke("meshcap-cni", &vars, &conf);
    assert!(out.status.success(), "CHECK: {}", text(&out));
    let mut diff = vec!["diff"];
    diff.extend(ISTIO_CNI_FLAGS);
    let path = pod_ns.path().display().to_string();
    diff.extend(["--network-namespace", &path]);
    let out = node.cni.meshcap(&diff);
    assert!(out.status.success(), "{}", text(&out));
    node.cni
        .del_chain(VERSION, Some(&pod_ns.path()), "s1", &node.stanza());
    assert_eq!(interception_state(&pod_ns), "");

    // A pod opting out in an ambient namespace: not enrolled, and (no sidecar) left alone.
    node.cni.cni_args = Some(kubelet_args("mesh"));
    node.api
        .serve_namespace("mesh", json!({"istio.io/dataplane-mode": "ambient"}));
    node.api.serve_pod(&pod(
        "mesh",
        json!({"istio.io/dataplane-mode": "none"}),
        json!({}),
        false,
    ));
    let (_, out) = node.cni.add_chain(VERSION, &pod_ns, "s2", &node.stanza());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(interception_state(&pod_ns), "");
    assert!(!has_ambient_rules(&pod_ns));
    node.cni
        .del_chain(VERSION, Some(&pod_ns.path()), "s2", &node.stanza());

    assert_eq!(ztunnel.log(), ["snapshot []"], "ztunnel was told of no pod");
    assert!(node.api.patches().is_empty(), "no pod annotated");
    stop_agent(agent);
    drop(ztunnel);
}

#[test]
fn ambient_add_fails_closed_when_the_api_server_does() {
    if !require_root("ambient_add_fails_closed_when_the_api_server_does") {
        return;
    }
    let pod_ns = Netns::new("ambapipod");
    for (fault, code, needle) in [
        (Fault::Down, 11, "unavailable"),
        (Fault::RefusePatch(403), 999, REDIRECTION),
    ] {
        let mut node = Node::with_fault("ambapi", fault);
        node.cni.cni_args = Some(kubelet_args("bookinfo"));
        node.api
            .serve_namespace("bookinfo", json!({"istio.io/dataplane-mode": "ambient"}));
        node.api
            .serve_pod(&pod("bookinfo", json!({}), json!({}), false));
        let agent = start_agent(&node.cni.host, &node.paths, &[]);
        let ztunnel = Ztunnel::start(node.paths.zds.clone());
        assert_eq!(ztunnel.wait_for(1), ["snapshot []"]);
        let (result, out) = node.cni.add_chain(VERSION, &pod_ns, "f1", &node.stanza());
        assert_eq!(error_code(&out), code, "{fault:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{fault:?}: {}", text(&out));
        // Nothing stays: no rules, no probe-set entry, no state; ztunnel was never told, or
        // told to let go again.
        assert!(!has_ambient_rules(&pod_ns), "{}", pod_ns.dump_rulesets());
        assert!(!in_probe_set(&node.cni.host, address(&result)));
        let state = std::fs::read_to_string(node.paths.state.join("pods.json")).unwrap();
        assert_eq!(state.trim(), "[]");
        let told = match fault {
            Fault::Down => vec!["snapshot []".to_owned()],
            _ => vec![
                "snapshot []".to_owned(),
                format!("add {UID}"),
                format!("del {UID}"),
            ],
        };
        assert_eq!(ztunnel.log(), told, "{fault:?}");
        node.cni
            .del_chain(VERSION, Some(&pod_ns.path()), "f1", &node.stanza());
        stop_agent(agent);
        drop(ztunnel);
    }
}
