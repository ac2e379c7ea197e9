//! deploy/productpage.yaml as a pod under `podman kube play`, with real images, containers and
//! traffic (see tests/common/podman.rs for the setting). The manifest is the file operators
//! apply, with only these changes, each checked to hit exactly the expected text:
//! * the images: meshcap's is built from the test binary by deploy/build-image.sh (what
//!   `make image` runs), the app's is Debian's static busybox serving `/cgi-bin/peer` (the
//!   address the app sees the connection from) on productpage's port 9080;
//! * a name unique to the test and `restartPolicy: OnFailure` (podman kube play restarts
//!   finished init containers under Kubernetes' default `Always`; deploy/README.md);
//! * per variant: `--backend nftables` on the nftables-only image; `-m TPROXY` with the
//!   sidecar's securityContext taken from deploy/README.md; no init container at all (which
//!   must make the inbound check fail); or no init container on a network whose configuration
//!   list chains meshcap-cni with the stanza of deploy/meshcap-cni.conflist.
//!
//! And Istio's injected workloads of `../shared/conformance/istio-injection/pods/` (REDIRECT,
//! TPROXY, and Istio's CNI with `istio-validation`), as Istio's injector writes them, with only
//! these changes (the test checks that every init container's args, env and securityContext
//! are the injected ones):
//! * the images: meshcap's for `istio-init`/`istio-validation` and the sidecar, the app's (the
//!   busybox server above, on the injected app's port 80) for `hello`;
//! * the sidecar `istio-proxy`: its args (pilot-agent's `proxy sidecar …`) become `proxy`, so
//!   the container runs `meshcap proxy`; Envoy's preStop hook (`pilot-agent request …`) and the
//!   volumes only Envoy and pilot-agent use (certificates, tokens, bootstrap) go with them;
//! * what Podman 4.3 needs: the sidecar, a native sidecar (an init container with
//!   `restartPolicy: Always`, which Podman would wait for forever), becomes an ordinary
//!   container; `restartPolicy: OnFailure` (above); one replica; a name unique to the test;
//!   downward-API variables Podman cannot fill (all but metadata.name) are dropped from the
//!   sidecar's env.
//!
//! Without `../shared` these are skipped (a failure under MESHCAP_REQUIRE_SHARED=1).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::podman::{GATEWAY, Podman};
use netns_test_harness::Process;

/// productpage's port.
const APP_PORT: u16 = 9080;
/// The app image deploy/productpage.yaml names.
const PRODUCTPAGE_IMAGE: &str = "docker.io/istio/examples-bookinfo-productpage-v1:1.20.2";
/// The port of the injected workloads' app (`hello`).
const INJECTED_APP_PORT: u16 = 80;
/// A server outside the pod (in the host namespace) that the app calls.
const UPSTREAM_PORT: u16 = 8000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    /// deploy/productpage.yaml as it is: iptables backend, REDIRECT.
    Sidecar,
    /// `--backend nftables`, on the image without iptables.
    Nftables,
    /// `-m TPROXY`, the sidecar as Istio runs it there (deploy/README.md).
    Tproxy,
    /// No init container: nothing installs the rules.
    NoInit,
    /// No init container and no `NET_ADMIN` anywhere: the network's configuration list chains
    /// meshcap-cni (its stanza from deploy/meshcap-cni.conflist), which installs the rules.
    Cni,
    /// One of Istio's injected workloads (see the module documentation).
    Injected(Injection),
    /// deploy/README.md's own `make image` + `podman kube play` commands, run as written, with
    /// Podman's own pause image.
    Readme,
}

/// Istio's injected workloads, by the file of `../shared/conformance/istio-injection/pods/`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Injection {
    /// `hello.yaml.injected`: Istio's defaults, `istio-init` with REDIRECT.
    Redirect,
    /// `hello-tproxy.yaml.injected`: `istio-init` with TPROXY, the sidecar as uid 0, gid 1337.
    Tproxy,
    /// `hello.yaml.cni.injected`: Istio's CNI; `istio-validation` checks the rules meshcap-cni
    /// installed on the network.
    Cni,
}

impl Injection {
    fn file(self) -> &'static str {
        match self {
            Injection::Redirect => "hello.yaml.injected",
            Injection::Tproxy => "hello-tproxy.yaml.injected",
            Injection::Cni => "hello.yaml.cni.injected",
        }
    }
}

impl Variant {
    /// Whether inbound connections are TPROXYed (the app sees the peer's address).
    fn tproxy(self) -> bool {
        matches!(self, Variant::Tproxy | Variant::Injected(Injection::Tproxy))
    }

    /// Whether meshcap-cni on the pod's network installs the rules.
    fn cni(self) -> bool {
        matches!(self, Variant::Cni | Variant::Injected(Injection::Cni))
    }

    /// Whether the rules are in nftables' own tables (the nftables backend) rather than
    /// iptables' `table ip nat`.
    fn nftables(self) -> bool {
        self == Variant::Nftables || self.cni()
    }

    /// The pod's (init container, sidecar, app) names.
    fn containers(self) -> (Option<&'static str>, &'static str, &'static str) {
        match self {
            Variant::Sidecar | Variant::Nftables | Variant::Tproxy | Variant::Readme => {
                (Some("meshcap-init"), "meshcap-proxy", "productpage")
            }
            Variant::NoInit | Variant::Cni => (None, "meshcap-proxy", "productpage"),
            Variant::Injected(Injection::Cni) => (Some("istio-validation"), "istio-proxy", "hello"),
            Variant::Injected(_) => (Some("istio-init"), "istio-proxy", "hello"),
        }
    }

    fn app_port(self) -> u16 {
        match self {
            Variant::Injected(_) => INJECTED_APP_PORT,
            _ => APP_PORT,
        }
    }
}

/// `text` with `from` replaced by `to`, which must occur exactly `times` times.
fn replace(text: &str, from: &str, to: &str, times: usize) -> String {
    assert_eq!(
        text.matches(from).count(),
        times,
        "deploy/productpage.yaml changed: expected {from:?} {times} time(s)"
    );
    text.replace(from, to)
}

/// The sidecar securityContext of deploy/README.md's TPROXY section (its only yaml block).
fn readme_tproxy_security_context() -> String {
    let readme = std::fs::read_to_string(common::repo().join("deploy/README.md")).unwrap();
    let start = readme
        .find("```yaml\n")
        .expect("deploy/README.md has a yaml block")
        + 8;
    let len = readme[start..].find("```").expect("closed yaml block");
    let block: Vec<&str> = readme[start..start + len].lines().collect();
    let indent = block[0].len() - block[0].trim_start().len();
    block
        .iter()
        .map(|l| format!("        {}\n", &l[indent.min(l.len())..]))
        .collect()
}

/// The pod of deploy/productpage.yaml for `variant` (see the module documentation).
fn manifest(variant: Variant, name: &str, meshcap: &str, app: &str) -> String {
    let text = std::fs::read_to_string(common::repo().join("deploy/productpage.yaml")).unwrap();
    let mut text = replace(&text, "image: meshcap:dev", &format!("image: {meshcap}"), 2);
    text = replace(
        &text,
        &format!("image: {PRODUCTPAGE_IMAGE}"),
        &format!("image: {app}"),
        1,
    );
    text = replace(
        &text,
        "  name: productpage-v1\n",
        &format!("  name: {name}\n"),
        1,
    );
    text = replace(
        &text,
        "      terminationGracePeriodSeconds: 30\n",
        "      terminationGracePeriodSeconds: 30\n      restartPolicy: OnFailure\n",
        1,
    );
    match variant {
        Variant::Sidecar => {}
        Variant::Nftables => {
            text = replace(
                &text,
                r#""-d", "15090,15021,15020"]"#,
                r#""-d", "15090,15021,15020", "--backend", "nftables"]"#,
                1,
            );
        }
        Variant::Tproxy => {
            text = replace(&text, r#""-m", "REDIRECT""#, r#""-m", "TPROXY""#, 1);
            let start = text
                .find("        securityContext:\n          # The uid the capture rules exempt")
                .expect("the sidecar's securityContext");
            let end = start
                + text[start..]
                    .find("        resources:\n")
                    .expect("resources after the securityContext");
            text.replace_range(start..end, &readme_tproxy_security_context());
        }
        Variant::Injected(_) | Variant::Readme => unreachable!("played otherwise"),
        Variant::NoInit | Variant::Cni => {
            let start = text
                .find("      initContainers:\n")
                .expect("initContainers");
            let end = start
                + text[start..]
                    .find("      containers:\n")
                    .expect("containers");
            text.replace_range(start..end, "");
        }
    }
    text
}

/// The Deployment of an injected workload (its file's first document), or why it is absent.
fn injected_deployment(injection: Injection) -> Result<serde_json::Value, String> {
    let file = common::repo()
        .join("../shared/conformance/istio-injection/pods")
        .join(injection.file());
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("{}: {e} (no ../shared beside the checkout)", file.display()))?;
    let first = text.split("\n---").next().expect("a document");
    Ok(yaml_serde::from_str(first).expect("the injected workload is YAML"))
}

/// The injected Deployment as Podman plays it (see the module documentation), as JSON (which
/// is YAML).
fn injected_manifest(
    deployment: &serde_json::Value,
    name: &str,
    meshcap: &str,
    app: &str,
) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut d = deployment.clone();
    d["metadata"]["name"] = json!(name);
    d["spec"]["replicas"] = json!(1);
    let spec = &mut d["spec"]["template"]["spec"];
    spec["restartPolicy"] = json!("OnFailure");
    spec.as_object_mut().unwrap().remove("volumes");
    let inits = spec["initContainers"]
        .as_array_mut()
        .expect("initContainers");
    let at = inits
        .iter()
        .position(|c| c["name"] == "istio-proxy")
        .expect("the native sidecar istio-proxy");
    let mut proxy = inits.remove(at);
    for init in inits.iter_mut() {
        init["image"] = json!(meshcap);
    }
    let sidecar = proxy.as_object_mut().unwrap();
    assert_eq!(sidecar["restartPolicy"], "Always");
    for gone in ["restartPolicy", "lifecycle", "volumeMounts"] {
        sidecar.remove(gone);
    }
    sidecar.insert("image".into(), json!(meshcap));
    assert_eq!(sidecar["args"][0], "proxy", "pilot-agent proxy sidecar …");
    sidecar.insert("args".into(), json!(["proxy"]));
    // Podman fills metadata.name only.
    if let Some(Value::Array(env)) = sidecar.get_mut("env") {
        env.retain(|e| {
            let field = &e["valueFrom"]["fieldRef"]["fieldPath"];
            field.is_null() || field == "metadata.name"
        });
    }
    let containers = spec["containers"].as_array_mut().expect("containers");
    assert_eq!(containers.len(), 1, "the app alone");
    assert_eq!(containers[0]["name"], "hello");
    containers[0]["image"] = json!(app);
    containers.push(proxy);
    d
}

/// The pod Podman makes of deploy/productpage.yaml's Deployment.
const README_POD: &str = "productpage-v1-pod-0";

/// deploy/README.md's commands for playing productpage.yaml with Podman (its last `sh` block:
/// `make image`, then the manifest piped into `podman kube play -`), run exactly as written in
/// the repository, with a user's Podman defaults ([`Podman::with_user_defaults`]) and the app
/// image the manifest names being the local `app` image under that name. The names these
/// commands use are the machine's (the pod, `localhost/meshcap:dev`): one such play at a time on
/// the machine, and none over a user's own pod or productpage image. What they made is removed
/// with the fixture (meshcap's images unless they were there before).
fn play_readme(podman: &Podman, app: &str) -> MachineLock {
    let readme = std::fs::read_to_string(common::repo().join("deploy/README.md")).unwrap();
    let start = readme
        .rfind("```sh\n")
        .expect("deploy/README.md has a sh block")
        + 6;
    let len = readme[start..].find("```").expect("closed sh block");
    let script = &readme[start..start + len];
    assert!(
        script.starts_with("make image\n") && script.contains("| podman kube play -"),
        "deploy/README.md's commands changed:\n{script}"
    );
    let lock = MachineLock::take("meshcap-pods-readme-play");
    assert!(
        podman.pods_named(README_POD).is_empty(),
        "a pod {README_POD} exists (not this test's): remove it to run this test"
    );
    assert!(
        podman
            .run(&["image", "exists", PRODUCTPAGE_IMAGE])
            .status
            .code()
            == Some(1),
        "{PRODUCTPAGE_IMAGE} exists (not this test's): remove it to run this test"
    );
    podman.ok(&["tag", app, PRODUCTPAGE_IMAGE]);
    podman.track_image(PRODUCTPAGE_IMAGE);
    let before = podman.image_tags("localhost/meshcap");
    let out = podman.shell(script, &common::repo());
    for tag in ["localhost/meshcap:dev", "localhost/meshcap:dev-nft"] {
        if !before.iter().any(|t| t == tag) {
            podman.track_image(tag);
        }
    }
    for pod in podman.pods_named(README_POD) {
        podman.track_pod(&pod);
    }
    assert!(
        out.status.success(),
        "deploy/README.md's commands failed ({}):\n{script}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    lock
}

/// A lock held across the machine's test processes while it lives: an abstract unix socket
/// of the machine's network namespace, so it leaves no file and dies with its holder.
struct MachineLock(#[allow(dead_code)] std::os::unix::net::UnixListener);

impl MachineLock {
    fn take(name: &str) -> MachineLock {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
        loop {
            match std::os::unix::net::UnixListener::bind_addr(&addr) {
                Ok(listener) => return MachineLock(listener),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("lock {name}: {e}"),
            }
        }
    }
}

/// A running pod of one variant, with the upstream server the app calls.
struct Pod {
    variant: Variant,
    name: String,
    ip: Ipv4Addr,
    // Dropped before the fixture (fields drop in order).
    _upstream: Process,
    podman: Podman,
    /// Held until the fixture has removed what a play under the machine's names made.
    _machine_lock: Option<MachineLock>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// The pods of this file run one after the other: each builds images and starts four
/// containers, and the machine is small.
static ONE_POD_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Pod {
    fn start(test: &str, variant: Variant) -> Option<Pod> {
        if let Variant::Injected(injection) = variant
            && let Err(reason) = injected_deployment(injection)
        {
            netns_test_harness::skip::skip(test, netns_test_harness::skip::Need::Shared, &reason);
            return None;
        }
        let podman = match variant {
            _ if variant.cni() => Podman::with_meshcap_cni(test)?,
            Variant::Readme => Podman::with_user_defaults(test)?,
            _ => Podman::new(test, &[])?,
        };
        let serial = ONE_POD_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (app, root) = podman.app_image(variant.app_port());
        let mut machine_lock = None;
        let name = match variant {
            Variant::Readme => {
                machine_lock = Some(play_readme(&podman, &app));
                "productpage-v1".to_owned()
            }
            _ => {
                let name = format!(
                    "{}-{}",
                    variant.containers().2,
                    podman.network().trim_start_matches("meshcap-test-")
                );
                let meshcap = podman.meshcap_image(variant == Variant::Nftables);
                let yaml = match variant {
                    Variant::Injected(injection) => {
                        let deployment = injected_deployment(injection).expect("checked before");
                        let manifest = injected_manifest(&deployment, &name, &meshcap, &app);
                        serde_json::to_string_pretty(&manifest).unwrap()
                    }
                    _ => manifest(variant, &name, &meshcap, &app),
                };
                podman.kube_play_ok("pod.yaml", &yaml);
                name
            }
        };
        let pod = podman.pod_named(&name);
        let ip = podman.pod_ip(&pod);
        // The bridge has its address once the first pod is on it.
        let upstream = podman.host().spawn(
            &[
                "/usr/bin/busybox",
                "httpd",
                "-f",
                "-p",
                &format!("{GATEWAY}:{UPSTREAM_PORT}"),
                "-h",
                &root.join("www").display().to_string(),
            ],
            None,
        );
        let pod = Pod {
            variant,
            name: pod,
            ip,
            _upstream: upstream,
            podman,
            _machine_lock: machine_lock,
            _serial: serial,
        };
        pod.wait_until_ready();
        Some(pod)
    }

    fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.name)
    }

    /// Until the sidecar reports ready and the app answers on loopback (neither captured).
    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self.get(15021, "/healthz/ready");
            let app = self.exec_get(None, "127.0.0.1", self.variant.app_port(), "/cgi-bin/peer");
            if ready.is_ok() && app.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pod not ready (sidecar: {ready:?}, app: {app:?})\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn logs(&self) -> String {
        let (init, proxy, app) = self.variant.containers();
        let names: Vec<String> = init
            .into_iter()
            .chain([proxy, app])
            .map(|c| self.container(c))
            .collect();
        self.podman.logs(&names)
    }

    /// `GET path` on the pod's `port` from the host namespace (outside the pod): the body.
    fn get(&self, port: u16, path: &str) -> Result<String, String> {
        self.podman
            .get_from_host(SocketAddr::new(self.ip.into(), port), path)
    }

    /// `GET path` on `host:port` from inside the app container, as its own user (uid 1000) or
    /// as `user`: the body.
    fn exec_get(
        &self,
        user: Option<&str>,
        host: &str,
        port: u16,
        path: &str,
    ) -> Result<String, String> {
        self.podman.exec_get(
            &self.container(self.variant.containers().2),
            user,
            host,
            port,
            path,
        )
    }

    /// The proxy's connection counters (inbound, outbound), from its metrics on :15090.
    fn counters(&self) -> (u64, u64) {
        let text = self
            .get(15090, "/stats/prometheus")
            .unwrap_or_else(|e| panic!("metrics: {e}"));
        common::proxy_connections(&text)
    }

    /// Inbound TCP from outside the pod to the app goes through the proxy: its inbound counter
    /// grows by one, and the app sees the connection from the proxy's 127.0.0.6 (REDIRECT) or
    /// from the peer's own address (TPROXY).
    fn check_inbound(&self) -> Result<(), String> {
        let before = self.counters();
        let seen = self.get(self.variant.app_port(), "/cgi-bin/peer")?;
        let after = self.counters();
        if after.0 != before.0 + 1 {
            return Err(format!(
                "inbound connection not counted by the proxy ({} -> {}); the app saw {seen}",
                before.0, after.0
            ));
        }
        let want = if self.variant.tproxy() {
            GATEWAY
        } else {
            "127.0.0.6"
        };
        if seen != want {
            return Err(format!(
                "the app saw the connection from {seen}, not {want}"
            ));
        }
        Ok(())
    }

    /// The app's outbound TCP to a server outside the pod goes through the proxy; the server
    /// sees it from the pod's address.
    fn check_outbound(&self) {
        let before = self.counters();
        let seen = self
            .exec_get(None, GATEWAY, UPSTREAM_PORT, "/cgi-bin/peer")
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        let after = self.counters();
        assert_eq!(
            seen,
            self.ip.to_string(),
            "upstream saw the call from {seen}"
        );
        assert_eq!(
            (after.0, after.1),
            (before.0, before.1 + 1),
            "the app's outbound call must be counted once, as outbound"
        );
    }

    /// Loopback traffic of the app (its uid) and of the proxy's identity (`proxy_user`) is not
    /// captured: the app sees it from 127.0.0.1 and the proxy counts nothing.
    fn check_loopback_not_captured(&self, proxy_user: &str) {
        for user in [None, Some(proxy_user)] {
            let before = self.counters();
            let seen = self
                .exec_get(user, "127.0.0.1", self.variant.app_port(), "/cgi-bin/peer")
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(seen, "127.0.0.1", "loopback as {user:?}");
            assert_eq!(self.counters(), before, "loopback as {user:?} was captured");
        }
    }

    /// The rules are those of the variant's backend: iptables (nft variant, as the image's plain
    /// `iptables` names are) writes `table ip nat`, the nftables backend its own tables.
    fn check_backend_tables(&self) {
        let sandbox = self.podman.pod_netns(&self.name);
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={sandbox}"))
            .args(["nft", "list", "tables"])
            .output()
            .unwrap();
        let tables = String::from_utf8_lossy(&out.stdout);
        let nftables = self.variant.nftables();
        assert_eq!(
            (
                tables.contains("istio-proxy-nat"),
                tables.contains("table ip nat")
            ),
            (nftables, !nftables),
            "tables in the pod's namespace:\n{tables}"
        );
    }

    /// The init container started exactly once (podman's events for it): it succeeded, as
    /// `restartPolicy: OnFailure` would have restarted it otherwise.
    fn check_init_ran_once(&self) {
        let init = self.variant.containers().0.expect("an init container");
        let events = self.podman.events(&self.container(init));
        let starts = events.iter().filter(|e| *e == "start").count();
        assert_eq!(starts, 1, "init container events: {events:?}");
        assert!(events.iter().any(|e| e == "died"), "{events:?}");
        assert_eq!(self.podman.exit_codes(&self.container(init)), [0]);
    }
}

fn sidecar_pod_is_captured(test: &str, variant: Variant, proxy_user: &str) {
    let Some(pod) = Pod::start(test, variant) else {
        return;
    };
    pod.check_inbound()
        .unwrap_or_else(|e| panic!("{e}\n{}", pod.logs()));
    pod.check_outbound();
    pod.check_loopback_not_captured(proxy_user);
    if variant.containers().0.is_some() {
        pod.check_init_ran_once();
    }
    pod.check_backend_tables();
}

#[test]
fn sidecar_pod_of_deploy_captures_inbound_and_outbound() {
    sidecar_pod_is_captured("pods_sidecar", Variant::Sidecar, "1337:1337");
}

#[test]
fn sidecar_pod_with_nftables_on_the_nftables_only_image() {
    sidecar_pod_is_captured("pods_nftables", Variant::Nftables, "1337:1337");
}

#[test]
fn tproxy_pod_as_istio_runs_it_app_sees_the_peer() {
    sidecar_pod_is_captured("pods_tproxy", Variant::Tproxy, "0:1337");
}

#[test]
fn cni_pod_without_init_container_or_net_admin_is_captured() {
    sidecar_pod_is_captured("pods_cni", Variant::Cni, "1337:1337");
}

/// What deploy/README.md tells a user to run, run as written (on a machine set up by
/// scripts/setup.sh: Podman builds its own pause image from catatonit), gives a captured pod.
#[test]
fn deploy_readmes_make_image_and_kube_play_commands_work_as_written() {
    sidecar_pod_is_captured("pods_readme", Variant::Readme, "1337:1337");
}

#[test]
fn istio_injected_pod_redirect_captures_inbound_and_outbound() {
    sidecar_pod_is_captured(
        "pods_injected_redirect",
        Variant::Injected(Injection::Redirect),
        "1337:1337",
    );
}

#[test]
fn istio_injected_pod_tproxy_app_sees_the_peer() {
    sidecar_pod_is_captured(
        "pods_injected_tproxy",
        Variant::Injected(Injection::Tproxy),
        "0:1337",
    );
}

#[test]
fn istio_injected_pod_with_istio_cni_validation_passes_on_meshcap_cni() {
    sidecar_pod_is_captured(
        "pods_injected_cni",
        Variant::Injected(Injection::Cni),
        "1337:1337",
    );
}

/// The injected init containers keep their args, env and securityContext; only their image
/// changes.
#[test]
fn injected_init_containers_stay_as_injected() {
    for injection in [Injection::Redirect, Injection::Tproxy, Injection::Cni] {
        let Ok(deployment) = injected_deployment(injection) else {
            netns_test_harness::skip::skip_part(
                "injected_init_containers_stay_as_injected",
                "the injected workloads",
                netns_test_harness::skip::Need::Shared,
                "no ../shared beside the checkout",
            );
            return;
        };
        let played = injected_manifest(&deployment, "n", "M", "A");
        let inits = |d: &serde_json::Value| -> Vec<serde_json::Value> {
            d["spec"]["template"]["spec"]["initContainers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["name"] != "istio-proxy")
                .cloned()
                .collect()
        };
        let (before, after) = (inits(&deployment), inits(&played));
        assert_eq!(before.len(), 1, "{injection:?}");
        assert_eq!(after.len(), 1, "{injection:?}");
        for key in ["name", "args", "env", "securityContext"] {
            assert_eq!(before[0][key], after[0][key], "{injection:?} {key}");
        }
        assert_eq!(after[0]["image"], "M");
        let containers = played["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        let proxy = containers
            .iter()
            .find(|c| c["name"] == "istio-proxy")
            .unwrap();
        assert_eq!(proxy["args"], serde_json::json!(["proxy"]));
        let original_proxy = deployment["spec"]["template"]["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "istio-proxy")
            .unwrap();
        assert_eq!(proxy["securityContext"], original_proxy["securityContext"]);
    }
}

/// The inbound check can fail: without the init container nothing is captured.
#[test]
fn without_the_init_container_the_inbound_check_fails() {
    let Some(pod) = Pod::start("pods_no_init", Variant::NoInit) else {
        return;
    };
    let err = pod
        .check_inbound()
        .expect_err("inbound passed without any capture rules");
    assert!(err.contains("not counted by the proxy"), "{err}");
    eprintln!("without the init container, as expected: {err}");
}

#[test]
fn the_variants_change_only_what_they_say() {
    let base = manifest(Variant::Sidecar, "p", "M", "A");
    assert!(base.contains("restartPolicy: OnFailure"));
    assert_eq!(base.matches("image: M\n").count(), 2);
    let nft = manifest(Variant::Nftables, "p", "M", "A");
    assert_eq!(
        nft.replace(r#", "--backend", "nftables""#, ""),
        base,
        "nftables adds only the backend flag"
    );
    let tproxy = manifest(Variant::Tproxy, "p", "M", "A");
    assert!(tproxy.contains(r#""-m", "TPROXY""#));
    assert!(tproxy.contains("runAsGroup: 1337") && tproxy.contains("add: [NET_ADMIN]"));
    assert!(!manifest(Variant::NoInit, "p", "M", "A").contains("initContainers"));
    let cni = manifest(Variant::Cni, "p", "M", "A");
    assert!(!cni.contains("initContainers") && !cni.contains("NET_ADMIN"));
}
