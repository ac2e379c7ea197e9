//! meshcap-cni on a Kubernetes node, for real: Debian's containerd (1.6) with its CRI plugin
//! creates the pods exactly as kubelet asks it to (tests/common/containerd.rs), the node
//! installer (`meshcap cni install`, as its DaemonSet runs it) puts the plugin into the node's
//! CNI configuration, and the plugin reads each pod's settings from a test API server through
//! the `CNI_ARGS` containerd passes (K8S_POD_NAMESPACE, K8S_POD_NAME, …).
//!
//! The pods run an app (busybox httpd, uid 1000) and `meshcap proxy` (uid 1337) from an image
//! staged as `make image` stages localhost/meshcap:dev; real TCP goes inbound from the node and
//! outbound to a server on the node, and the proxy's counters show what it carried.
//!
//! Ambient mode the same way: the installer chains meshcap-cni with `--ambient`, and
//! `meshcap ambient agent` and the ztunnel stand-in (tests/ambient_common) run on the node.
//!
//! Everything runs in a throwaway node namespace; traffic stays on 198.51.100.0/24.

mod ambient_common;
mod common;

use ambient_common::standin::Ztunnel;
use ambient_common::{AgentPaths, in_probe_set, start_node_agent, stop_agent};
use common::apiserver::{ApiServer, CaForm, Credential, Fault, TOKEN};
use common::cni::ISTIO_CNI_FLAGS;
use common::containerd::{ContainerSpec, GATEWAY, Node, Pod, PodSpec};
use common::in_netns;
use netns_test_harness::Process;
use serde_json::{Value, json};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const APP_IMAGE: &str = "localhost/meshcap-test-app:node";
const MESHCAP_IMAGE: &str = "localhost/meshcap:dev";
const APP_PORT: u16 = 8080;
const UPSTREAM_PORT: u16 = 8081;
/// How long anything awaited may take (generous: a shared machine).
const DEADLINE: Duration = Duration::from_secs(30);

/// A node with a test API server on its loopback (where the plugins, run by containerd in the
/// node's namespace, reach it), a service account for the installer, and the test images.
struct Cluster {
    api: Option<ApiServer>,
    account: PathBuf,
    /// A server on the node (GATEWAY:UPSTREAM_PORT), started with the first pod.
    upstream: Option<Process>,
    // Last: the node goes after the API server and the processes above.
    node: Node,
}

impl Cluster {
    fn start(test: &str) -> Option<Cluster> {
        let node = Node::start(test)?;
        let api = ApiServer::start_in(node.host(), Fault::None);
        let account = node.dir().join("serviceaccount");
        std::fs::create_dir_all(&account).unwrap();
        std::fs::write(account.join("token"), TOKEN).unwrap();
        std::fs::write(account.join("namespace"), "istio-system").unwrap();
        std::fs::write(account.join("ca.crt"), ca_pem(&api)).unwrap();
        node.import_busybox_image(
            APP_IMAGE,
            &[
                ("/www/index.html", "app"),
                ("/upstream/index.html", "upstream"),
            ],
            &[
                "/bin/busybox",
                "httpd",
                "-f",
                "-p",
                &APP_PORT.to_string(),
                "-h",
                "/www",
            ],
        );
        node.import_meshcap_image(MESHCAP_IMAGE);
        Some(Cluster {
            api: Some(api),
            account,
            upstream: None,
            node,
        })
    }

    fn api(&self) -> &ApiServer {
        self.api.as_ref().expect("the API server is up")
    }

    /// `meshcap cni install` with the node's directories, as the DaemonSet's container runs it
    /// (the host paths are the same here), with `extra` flags.
    fn installer(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.node.host().path().display()))
            .arg(common::MESHCAP)
            .args(["cni", "install", "--cni-bin-dir"])
            .arg(self.node.bin_dir())
            .arg("--cni-conf-dir")
            .arg(self.node.conf_dir())
            .arg("--host-cni-conf-dir")
            .arg(self.node.conf_dir())
            .arg("--service-account-dir")
            .arg(&self.account)
            .args(["--kubernetes-service-host", "127.0.0.1"])
            .arg("--kubernetes-service-port")
            .arg(self.api().port.to_string())
            .args(["--capture", r#"{"backend":"nftables"}"#])
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null());
        cmd
    }

    /// One installer pass with `extra` flags; then waits until containerd has loaded the new
    /// configuration.
    fn install(&self, extra: &[&str]) {
        let out = self.installer(extra).output().expect("run the installer");
        assert!(
            out.status.success(),
            "{}",
            common::containerd::output_text(&out)
        );
        self.node.await_cni_config("meshcap-cni", true);
    }

    /// An injected pod (an `istio-proxy` container as uid 1337, `sidecar.istio.io/status`) of
    /// `namespace` with these annotations, served by the API server.
    fn serve_injected(&self, namespace: &str, name: &str, annotations: Value) -> PodSpec {
        let mut all = json!({"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"});
        for (k, v) in annotations.as_object().expect("annotations") {
            all[k] = v.clone();
        }
        self.serve(namespace, name, all)
    }

    /// A pod of `namespace` with exactly these annotations and the containers of an injected
    /// pod, served by the API server; its spec for RunPodSandbox.
    fn serve(&self, namespace: &str, name: &str, annotations: Value) -> PodSpec {
        let containers = json!([
            {"name": "app", "image": APP_IMAGE,
             "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}},
            {"name": "istio-proxy", "image": MESHCAP_IMAGE, "args": ["proxy"],
             "securityContext": {"runAsUser": 1337, "runAsGroup": 1337}},
        ]);
        self.serve_with(namespace, name, annotations, containers)
    }

    /// A pod of `namespace` with these annotations and containers, served by the API server;
    /// its spec for RunPodSandbox.
    fn serve_with(
        &self,
        namespace: &str,
        name: &str,
        annotations: Value,
        containers: Value,
    ) -> PodSpec {
        let mut spec = PodSpec::new(namespace, name);
        spec.annotations = annotations
            .as_object()
            .expect("annotations")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("annotation").to_owned()))
            .collect();
        self.api().serve_pod(&json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": spec.uid,
                "annotations": annotations,
            },
            "spec": {"containers": containers},
            "status": {"phase": "Pending"}
        }));
        spec
    }

    /// RunPodSandbox, panicking with containerd's log on failure.
    fn run_pod(&mut self, spec: &PodSpec) -> Pod {
        let pod = self.node.run_pod(spec).unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox {}: {e}\ncontainerd's log:\n{}",
                spec.name,
                self.node.log_errors()
            )
        });
        self.ensure_upstream();
        pod
    }

    /// busybox httpd on the node's address on the pod network (the bridge exists once a pod
    /// does).
    fn ensure_upstream(&mut self) {
        if self.upstream.is_none() {
            let root = self.node.dir().join("upstream");
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(root.join("index.html"), "upstream").unwrap();
            self.upstream = Some(self.node.host().spawn(
                &[
                    "/usr/bin/busybox",
                    "httpd",
                    "-f",
                    "-p",
                    &format!("{GATEWAY}:{UPSTREAM_PORT}"),
                    "-h",
                    &root.display().to_string(),
                ],
                None,
            ));
        }
    }

    /// The app container (uid 1000) in `pod`.
    fn start_app(&self, pod: &Pod) -> String {
        self.node
            .start_container(
                pod,
                &ContainerSpec {
                    name: "app".into(),
                    image: APP_IMAGE.into(),
                    command: vec![],
                    args: vec![],
                    user: Some((1000, 1000)),
                },
            )
            .unwrap_or_else(|e| panic!("app container: {e}"))
    }

    /// `meshcap proxy` (uid 1337) in `pod`, from the meshcap image; returns once it serves.
    fn start_proxy(&self, pod: &Pod) -> String {
        let id = self
            .node
            .start_container(
                pod,
                &ContainerSpec {
                    name: "istio-proxy".into(),
                    image: MESHCAP_IMAGE.into(),
                    command: vec![],
                    args: vec!["proxy".into()],
                    user: Some((1337, 1337)),
                },
            )
            .unwrap_or_else(|e| panic!("proxy container: {e}"));
        let deadline = Instant::now() + DEADLINE;
        let metrics: SocketAddr = "127.0.0.1:15021".parse().unwrap();
        while in_netns(&pod.netns, move || {
            TcpStream::connect_timeout(&metrics, Duration::from_secs(1))
        })
        .is_err()
        {
            assert!(Instant::now() < deadline, "meshcap proxy did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        id
    }

    /// Istio's validation init container, from the meshcap image: `meshcap --run-validation
    /// --skip-rule-apply` with Istio's CNI flags, as uid 1337, in `pod`; its exit code and log.
    fn validate(&self, pod: &Pod, name: &str) -> (i32, String) {
        let mut args = vec![
            "--run-validation".to_owned(),
            "--skip-rule-apply".to_owned(),
        ];
        args.extend(ISTIO_CNI_FLAGS.iter().map(|s| s.to_string()));
        let id = self
            .node
            .start_container(
                pod,
                &ContainerSpec {
                    name: name.into(),
                    image: MESHCAP_IMAGE.into(),
                    command: vec![],
                    args,
                    user: Some((1337, 1337)),
                },
            )
            .unwrap_or_else(|e| panic!("validation container: {e}"));
        self.node.wait_container(&id)
    }

    /// GET / of the app from the node (as a kubelet probe or a peer would).
    fn inbound(&self, pod: &Pod) -> String {
        let addr = SocketAddr::new(pod.ip.into(), APP_PORT);
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.node.host().run(move || common::http_get(addr, "/")) {
                Ok(body) => return body,
                Err(e) => assert!(Instant::now() < deadline, "inbound to {addr}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// GET of the node's server by the app (uid 1000, from inside its container; busybox nc:
    /// its static wget crashes without a resolver configuration).
    fn outbound(&self, app: &str) -> String {
        let script = format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 10 {GATEWAY} {UPSTREAM_PORT}"
        );
        let (code, out, err) = self.node.exec(app, &["/bin/busybox", "sh", "-c", &script]);
        assert_eq!(code, 0, "outbound GET: {out}{err}");
        common::http_body("outbound GET", &out).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `meshcap diff` of Istio's CNI rules with `extra` flags against the pod's namespace:
    /// Ok when the rules there are exactly those, the report otherwise.
    fn diff(&self, pod: &Pod, extra: &[&str]) -> Result<(), String> {
        let netns = pod.netns.display().to_string();
        let mut args = vec!["diff"];
        args.extend(ISTIO_CNI_FLAGS);
        args.extend(extra);
        args.extend(["--backend", "nftables", "--network-namespace", &netns]);
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.node.host().path().display()))
            .arg(common::MESHCAP)
            .args(&args)
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .expect("run meshcap diff");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: {}",
                pod.spec.name,
                common::containerd::output_text(&out)
            ))
        }
    }

    /// Stop, then remove, as kubelet does when a pod is deleted.
    fn delete_pod(&self, pod: &Pod) {
        self.node
            .stop_pod(&pod.id)
            .unwrap_or_else(|e| panic!("StopPodSandbox {}: {e}", pod.spec.name));
        self.node
            .remove_pod(&pod.id)
            .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {e}", pod.spec.name));
    }
}

/// The API server's CA certificate (PEM), as a service account's `ca.crt` holds it: written by
/// the server beside a kubeconfig that names it.
fn ca_pem(api: &ApiServer) -> String {
    let kubeconfig = api.kubeconfig(CaForm::File, Credential::Token);
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
    let name = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority: "))
        .expect("certificate-authority in the kubeconfig");
    std::fs::read_to_string(api.dir().join(name.trim())).expect("the CA file")
}

/// (inbound, outbound) connections the pod's proxy counted.
fn counters(pod: &Pod) -> (u64, u64) {
    common::proxy_connections_in(&pod.netns)
}

/// meshcap's tables or Istio's chains in the pod's namespace ("" when none).
fn interception_state(pod: &Pod) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", pod.netns.display()))
        .args(["nft", "list", "tables"])
        .output()
        .expect("nft list tables");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("istio"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the node holds of a removed sandbox: a netns mount, a veth, a CNI cache entry.
fn remnants(c: &Cluster, id: &str, netns: &Path) -> Vec<String> {
    let mut found: Vec<String> = c
        .node
        .mounts()
        .into_iter()
        .filter(|m| m.contains(id) || Path::new(m) == netns)
        .collect();
    if c.node.sandboxes().iter().any(|s| s == id) {
        found.push(format!("sandbox {id}"));
    }
    found.extend(
        std::fs::read_dir("/var/lib/cni/results")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains(id))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    );
    found
}

/// The installer with `--watch`, stopped (SIGTERM: uninstall) by [`Watcher::stop`] or on drop.
struct Watcher(Option<Child>);

impl Watcher {
    fn stop(&mut self) -> std::process::Output {
        let child = self.0.take().expect("running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        child.wait_with_output().expect("the installer's exit")
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn the_installer_puts_meshcap_cni_in_place_and_pods_created_after_it_are_captured() {
    let test = "the_installer_puts_meshcap_cni_in_place_and_pods_created_after_it_are_captured";
    let Some(mut c) = Cluster::start(test) else {
        return;
    };
    // The node's primary network alone: pods get networking and no capture.
    let early_spec = c.serve_injected("default", "early", json!({}));
    let early = c.run_pod(&early_spec);
    assert_eq!(interception_state(&early), "", "no plugin yet, no rules");

    // The DaemonSet's installer adds meshcap-cni; containerd reloads the configuration.
    let mut watcher = Watcher(Some(
        c.installer(&["--watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the installer"),
    ));
    c.node.await_cni_config("meshcap-cni", true);

    // A pod created now is captured: Istio's CNI rules exactly, from containerd's ADD.
    let spec = c.serve_injected("default", "web", json!({}));
    let pod = c.run_pod(&spec);
    c.diff(&pod, &[]).unwrap();
    // Istio's validation init container passes there, before the proxy starts.
    let (code, log) = c.validate(&pod, "istio-validation");
    assert_eq!(code, 0, "validation in a captured pod: {log}");
    let app = c.start_app(&pod);
    c.start_proxy(&pod);

    // Inbound from the node reaches the app through the proxy.
    let before = counters(&pod);
    assert_eq!(c.inbound(&pod), "app");
    let after = counters(&pod);
    assert!(
        after.0 > before.0,
        "inbound not captured: {before:?} -> {after:?}"
    );

    // The app's own outbound TCP to the node goes through the proxy too.
    let before = counters(&pod);
    assert_eq!(c.outbound(&app), "upstream");
    let after = counters(&pod);
    assert!(
        after.1 > before.1,
        "outbound not captured: {before:?} -> {after:?}"
    );

    // The pod created before the plugin was in place stays uncaptured (documented in the
    // README: the node's race, as with Istio's CNI), and a validation init container in it
    // fails, as Istio's does, so such a pod does not start unprotected.
    assert_eq!(interception_state(&early), "");
    let (code, log) = c.validate(&early, "istio-validation");
    assert_eq!(code, 126, "validation in an uncaptured pod: {log}");

    // Deleting the pod: StopPodSandbox (DEL with the namespace and the cached result), then
    // RemovePodSandbox (DEL with an empty CNI_NETNS and no prevResult) both succeed, and
    // nothing of the sandbox stays.
    let netns = pod.netns.clone();
    c.delete_pod(&pod);
    assert_eq!(remnants(&c, &pod.id, &netns), Vec::<String>::new());
    c.delete_pod(&early);

    // SIGTERM to the installer uninstalls: the configuration is the primary network again,
    // and a new pod gets working networking without capture.
    let out = watcher.stop();
    assert!(
        out.status.success(),
        "{}",
        common::containerd::output_text(&out)
    );
    c.node.await_cni_config("meshcap-cni", false);
    let conf: Vec<String> = std::fs::read_dir(c.node.conf_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(conf, ["10-bridge.conflist"], "the configuration directory");
    let conflist = std::fs::read_to_string(c.node.conf_dir().join("10-bridge.conflist")).unwrap();
    assert!(!conflist.contains("meshcap-cni"), "{conflist}");
    let late_spec = c.serve_injected("default", "late", json!({}));
    let late = c.run_pod(&late_spec);
    assert_eq!(interception_state(&late), "");
    c.start_app(&late);
    assert_eq!(c.inbound(&late), "app");
    c.delete_pod(&late);
}

#[test]
fn each_pod_gets_the_settings_the_api_server_gives_it() {
    let test = "each_pod_gets_the_settings_the_api_server_gives_it";
    let Some(mut c) = Cluster::start(test) else {
        return;
    };
    c.install(&[]);

    // Annotations: an excluded inbound port and included outbound ranges.
    let spec = c.serve_injected(
        "default",
        "annotated",
        json!({
            "traffic.sidecar.istio.io/excludeInboundPorts": APP_PORT.to_string(),
            "traffic.sidecar.istio.io/includeOutboundIPRanges": "203.0.113.0/24",
        }),
    );
    let pod = c.run_pod(&spec);
    let excluded = format!("{APP_PORT},15020,15021,15090");
    c.diff(&pod, &["-d", &excluded, "-i", "203.0.113.0/24"])
        .unwrap();
    let app = c.start_app(&pod);
    c.start_proxy(&pod);
    let before = counters(&pod);
    assert_eq!(c.inbound(&pod), "app");
    // The node is outside the included ranges: the app reaches it directly.
    assert_eq!(c.outbound(&app), "upstream");
    assert_eq!(
        counters(&pod),
        before,
        "neither connection went through the proxy"
    );
    c.delete_pod(&pod);

    // A pod of an excluded namespace (kube-system, the installer's default) is left alone.
    let spec = c.serve_injected("kube-system", "dns", json!({}));
    let pod = c.run_pod(&spec);
    assert_eq!(interception_state(&pod), "");
    c.delete_pod(&pod);

    // A pod that is not injected (no sidecar.istio.io/status), and one that opts out.
    for (name, annotations) in [
        ("plain", json!({})),
        (
            "optout",
            json!({"sidecar.istio.io/status": "{}", "sidecar.istio.io/inject": "false"}),
        ),
    ] {
        let spec = c.serve("default", name, annotations);
        let pod = c.run_pod(&spec);
        assert_eq!(interception_state(&pod), "", "{name}");
        c.delete_pod(&pod);
    }

    // A bad annotation: RunPodSandbox fails with the plugin's message naming it.
    let key = "traffic.sidecar.istio.io/excludeInboundPorts";
    let spec = c.serve_injected("default", "bad", json!({ key: "http" }));
    // The CRI error names the annotation and its value.
    sandbox_refused(&c, &spec, &[key, "http"]);

    // The API server down: RunPodSandbox fails, and again nothing is left.
    drop(c.api.take());
    let mut spec = PodSpec::new("default", "unreachable");
    spec.annotations
        .insert("sidecar.istio.io/status".into(), "{}".into());
    // The CRI error is the plugin's.
    sandbox_refused(&c, &spec, &["meshcap-cni"]);
}

/// RunPodSandbox of `spec` fails with a message holding each of `needles`, and the failed
/// sandbox left nothing (below).
fn sandbox_refused(c: &Cluster, spec: &PodSpec, needles: &[&str]) {
    let err = c.node.run_pod(spec).expect_err("RunPodSandbox should fail");
    for needle in needles {
        assert!(
            err.message().contains(needle),
            "the CRI error holds {needle:?}: {}",
            err.message()
        );
    }
    failed_sandbox_left_nothing(c);
}

/// The names of the node's CNI result cache entries (libcni's /var/lib/cni/results) that
/// `wanted` picks.
fn cni_cache_entries(wanted: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir("/var/lib/cni/results")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| wanted(n))
                .collect()
        })
        .unwrap_or_default()
}

/// After a failed RunPodSandbox: containerd undid the sandbox itself (its cleanup runs the
/// chain's DEL, which meshcap-cni must not fail): no sandbox, veth, namespace or mount, and no
/// CNI cache entry is left.
fn failed_sandbox_left_nothing(c: &Cluster) {
    assert_eq!(
        c.node.sandboxes(),
        Vec::<String>::new(),
        "no sandbox is left"
    );
    assert_eq!(c.node.veths(), Vec::<String>::new(), "no veth is left");
    assert_eq!(c.node.mounts(), Vec::<String>::new(), "no mount is left");
    let network = c.node.network();
    let cached: Vec<String> = cni_cache_entries(|n| n.starts_with(&network));
    assert_eq!(cached, Vec::<String>::new(), "no CNI cache entry is left");
}

#[test]
fn twenty_pods_at_once_keep_their_rules_across_a_containerd_restart() {
    let test = "twenty_pods_at_once_keep_their_rules_across_a_containerd_restart";
    let Some(mut c) = Cluster::start(test) else {
        return;
    };
    c.install(&[]);
    let specs: Vec<PodSpec> = (0..20)
        .map(|i| c.serve_injected("default", &format!("burst-{i}"), json!({})))
        .collect();
    c.ensure_upstream();
    let pods: Vec<Pod> = std::thread::scope(|s| {
        let node = &c.node;
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| s.spawn(move || node.run_pod(spec)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").unwrap_or_else(|e| panic!("{e}")))
            .collect()
    });
    let diffs =
        |c: &Cluster| -> Vec<String> { pods.iter().filter_map(|p| c.diff(p, &[]).err()).collect() };
    assert_eq!(
        diffs(&c),
        Vec::<String>::new(),
        "every pod has complete rules"
    );

    // containerd restarted with the pods running: they are still there, still ready, with
    // their rules intact; and new pods still start.
    c.node.restart_containerd();
    let known = c.node.sandboxes();
    for pod in &pods {
        assert!(
            known.contains(&pod.id),
            "{} survived the restart",
            pod.spec.name
        );
        assert!(c.node.sandbox_ready(&pod.id), "{} is ready", pod.spec.name);
    }
    assert_eq!(
        diffs(&c),
        Vec::<String>::new(),
        "rules intact after the restart"
    );
    let spec = c.serve_injected("default", "after-restart", json!({}));
    let pod = c.run_pod(&spec);
    c.diff(&pod, &[]).unwrap();

    // containerd killed with every pod still running: the teardown still leaves nothing.
    let dir = c.node.dir().to_owned();
    let shim_sockets: Vec<PathBuf> =
        std::fs::read_dir(dir.join("state/io.containerd.runtime.v2.task/k8s.io"))
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("address")).ok())
            .map(|a| PathBuf::from(a.trim().trim_start_matches("unix://")))
            .collect();
    assert_eq!(shim_sockets.len(), 21, "one shim per sandbox");
    assert!(shim_sockets.iter().all(|s| s.exists()));
    let ids: Vec<String> = c.node.sandboxes();
    let cgroup = c.node.cgroup_parent();
    c.node.kill_containerd();
    drop(c);
    assert!(!Node::cgroups_left(&cgroup), "cgroups left under {cgroup}");
    // meshcap's lock is an abstract socket inside each pod's namespace: nothing of it outlives
    // the namespaces, so there is nothing to look for on the node's filesystem.
    assert!(!dir.exists(), "{} is gone", dir.display());
    let left: Vec<&PathBuf> = shim_sockets.iter().filter(|s| s.exists()).collect();
    assert!(left.is_empty(), "shim sockets left: {left:?}");
    let cached: Vec<String> = std::fs::read_dir("/var/lib/cni/results")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| ids.iter().any(|id| n.contains(id.as_str())))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(cached, Vec::<String>::new(), "CNI cache entries left");
    assert_eq!(
        processes_mentioning(&format!("{}/", dir.display())),
        Vec::<String>::new(),
        "processes left"
    );
}

/// Whether the pod's namespace holds ambient's rules (the agent's iptables chains or its
/// fwmark routing rule).
fn ambient_state(pod: &Pod) -> String {
    let mut found = Vec::new();
    for argv in [&["iptables-save"][..], &["ip", "rule"]] {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", pod.netns.display()))
            .args(argv)
            .output()
            .expect("nsenter");
        let text = String::from_utf8_lossy(&out.stdout);
        found.extend(
            text.lines()
                .filter(|l| l.contains("ISTIO_") || l.contains("0x111/0xfff"))
                .map(str::to_owned),
        );
    }
    found.join("\n")
}

#[test]
fn an_ambient_pod_is_enrolled_by_run_pod_sandbox_and_let_go_by_its_removal() {
    let test = "an_ambient_pod_is_enrolled_by_run_pod_sandbox_and_let_go_by_its_removal";
    let Some(mut c) = Cluster::start(test) else {
        return;
    };
    let started = Instant::now();
    // The agent's sockets and state in the node's directory (removed with it).
    let dir = c.node.dir().join("ambient");
    std::fs::create_dir_all(&dir).unwrap();
    let paths = AgentPaths::in_dir(&dir);
    let control = paths.control.display().to_string();
    c.install(&["--ambient", "--ambient-control-socket", &control]);
    let agent = start_node_agent(c.node.host(), &paths, &[]);
    c.api()
        .serve_namespace("bookinfo", json!({"istio.io/dataplane-mode": "ambient"}));
    let app_only = json!([{"name": "app", "image": APP_IMAGE,
                           "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}]);
    let state = || std::fs::read_to_string(paths.state.join("pods.json")).unwrap();

    // ztunnel absent: RunPodSandbox fails closed, and containerd's cleanup (the chain's DEL)
    // leaves nothing: no sandbox, namespace (so no rules), probe-set entry, state or patch.
    let spec = c.serve_with("bookinfo", "early", json!({}), app_only.clone());
    // The CRI error is the agent's.
    sandbox_refused(&c, &spec, &["ztunnel is not connected"]);
    // The address host-local gave the failed sandbox (and released) is not in the probe set.
    let leases = c.node.dir().join("ipam").join(c.node.network());
    let given = std::fs::read_to_string(leases.join("last_reserved_ip.0")).unwrap();
    let given: std::net::IpAddr = given.trim().parse().unwrap();
    assert!(
        !in_probe_set(c.node.host(), given),
        "{given} in the probe set"
    );
    assert_eq!(state().trim(), "[]");
    assert!(c.api().patches().is_empty());
    let fault = started.elapsed();

    // With ztunnel: RunPodSandbox returns once the agent has installed the rules and the
    // stand-in has acknowledged the pod.
    let ztunnel = Ztunnel::start(paths.zds.clone());
    assert_eq!(ztunnel.wait_for(1), ["snapshot []"]);
    let spec = c.serve_with("bookinfo", "productpage", json!({}), app_only);
    let t = Instant::now();
    let pod = c.run_pod(&spec);
    let run = t.elapsed();
    assert_eq!(ztunnel.log(), ["snapshot []", &format!("add {}", spec.uid)]);
    assert!(ambient_state(&pod).contains("ISTIO_"), "no ambient rules");
    assert!(
        ambient_state(&pod).contains("0x111/0xfff"),
        "no fwmark rule"
    );
    assert!(in_probe_set(c.node.host(), pod.ip.into()));
    assert!(state().contains(&spec.uid), "{}", state());
    let redirection = (
        "/api/v1/namespaces/bookinfo/pods/productpage".to_owned(),
        json!({"metadata": {"annotations": {"ambient.istio.io/redirection": "enabled"}}}),
    );
    assert_eq!(c.api().patches(), [redirection]);

    // The app's own TCP, from inside its container (uid 1000), reaches ztunnel's 15001.
    let app = c.start_app(&pod);
    let (code, out, err) = c.node.exec(
        &app,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            &format!("printf '' | /bin/busybox nc -w 10 {GATEWAY} 9"),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("ztunnel-outbound {GATEWAY}:9 |")),
        "{out}{err}"
    );

    // A kubelet probe (from a socket of the node's) reaches the app itself: the agent's host
    // rule SNATs it to 169.254.7.127 for the pod's address in the probe set, and the pod's
    // rules let that address past ztunnel.
    assert_eq!(c.inbound(&pod), "app");

    // Deleting the pod: StopPodSandbox and RemovePodSandbox (DEL) make the agent tell ztunnel
    // to let go; rules (with the namespace), probe-set entry, state and annotation go.
    let (netns, ip) = (pod.netns.clone(), pod.ip);
    let t = Instant::now();
    c.delete_pod(&pod);
    let delete = t.elapsed();
    assert_eq!(
        ztunnel.log().last().map(String::as_str),
        Some(format!("del {}", spec.uid).as_str())
    );
    assert_eq!(remnants(&c, &pod.id, &netns), Vec::<String>::new());
    assert!(!in_probe_set(c.node.host(), ip.into()));
    assert_eq!(state().trim(), "[]");
    let served = c.api().pod("bookinfo", "productpage").unwrap();
    assert!(
        served["metadata"]["annotations"]
            .get("ambient.istio.io/redirection")
            .is_none(),
        "{served}"
    );
    stop_agent(agent);
    drop(ztunnel);
    println!(
        "ambient on containerd: fault case {fault:?}, RunPodSandbox {run:?}, \
         Stop+RemovePodSandbox {delete:?}"
    );
}

/// Set in the child process of the test below: it starts a node with a running pod and exits
/// without any teardown, as a test process killed mid-run.
const ABANDON: &str = "MESHCAP_TEST_ABANDON_NODE";

#[test]
fn a_node_left_by_a_killed_test_process_is_swept_by_the_next() {
    let test = "a_node_left_by_a_killed_test_process_is_swept_by_the_next";
    if std::env::var_os(ABANDON).is_some() {
        let node = Node::start(test).expect("the parent checked");
        node.import_busybox_image(
            APP_IMAGE,
            &[("/www/index.html", "app")],
            &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
        );
        let pod = node
            .run_pod(&PodSpec::new("default", "abandoned"))
            .expect("RunPodSandbox");
        node.start_container(
            &pod,
            &ContainerSpec {
                name: "app".into(),
                image: APP_IMAGE.into(),
                command: vec![],
                args: vec![],
                user: Some((1000, 1000)),
            },
        )
        .expect("the app");
        println!("NODE={}", node.dir().display());
        println!("CGROUP={}", node.cgroup_parent());
        println!("SANDBOX={}", pod.id);
        // No destructor runs: containerd, its shims and the pod stay, as after a SIGKILL.
        std::process::exit(0);
    }
    if !common::containerd::available(test) {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(ABANDON, "1")
        .stdin(Stdio::null())
        .output()
        .expect("run the abandoning child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = |key: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.split_once(&format!("{key}=")).map(|(_, v)| v))
            .unwrap_or_else(|| panic!("no {key} from the child: {}", common::text(&out)))
            .to_owned()
    };
    let (dir, cgroup, sandbox) = (
        PathBuf::from(value("NODE")),
        value("CGROUP"),
        value("SANDBOX"),
    );
    let dir_text = format!("{}/", dir.display());
    let shim_sockets: Vec<PathBuf> =
        std::fs::read_dir(dir.join("state/io.containerd.runtime.v2.task/k8s.io"))
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("address")).ok())
            .map(|a| PathBuf::from(a.trim().trim_start_matches("unix://")))
            .collect();
    assert!(!shim_sockets.is_empty() && shim_sockets.iter().all(|s| s.exists()));
    assert!(
        !processes_mentioning(&dir_text).is_empty(),
        "containerd runs on"
    );
    assert!(Node::cgroups_left(&cgroup));

    // What the next node's start does first.
    common::containerd::remove_stale();
    netns_test_harness::remove_stale();
    assert!(!dir.exists(), "{dir_text} is gone");
    assert_eq!(processes_mentioning(&dir_text), Vec::<String>::new());
    assert!(!Node::cgroups_left(&cgroup), "cgroups left under {cgroup}");
    let left: Vec<&PathBuf> = shim_sockets.iter().filter(|s| s.exists()).collect();
    assert!(left.is_empty(), "shim sockets left: {left:?}");
    let cached: Vec<String> = cni_cache_entries(|n| n.contains(&sandbox));
    assert_eq!(cached, Vec::<String>::new(), "CNI cache entries left");
    // The cgroup parent is /meshcap-node-<pid>-<n>.
    let child_pid = cgroup.split('-').nth(2).unwrap().to_owned();
    let namespaces: Vec<String> = netns_test_harness::list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with("meshcap-node-") && n.split('-').nth(2) == Some(&child_pid))
        .collect();
    assert_eq!(
        namespaces,
        Vec::<String>::new(),
        "the node's namespace is gone"
    );
}

/// Command lines of the processes that mention `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle) && !c.contains(ABANDON))
        .collect()
}
