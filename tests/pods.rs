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

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use common::podman::{GATEWAY, Podman};
use netns_test_harness::Process;

const APP_PORT: u16 = 9080;
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
}

/// The `meshcap-cni` stanzas of deploy/meshcap-cni.conflist.
fn deploy_cni_stanzas() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(common::repo().join("deploy/meshcap-cni.conflist")).unwrap();
    let conflist: serde_json::Value = serde_json::from_str(&text).expect("conflist JSON");
    let stanzas: Vec<serde_json::Value> = conflist["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter(|p| p["type"] == "meshcap-cni")
        .cloned()
        .collect();
    assert_eq!(stanzas.len(), 1, "{text}");
    stanzas
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
        "image: docker.io/istio/examples-bookinfo-productpage-v1:1.20.2",
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

/// A file tree serving `/cgi-bin/peer`: the address the connection came from, as busybox httpd
/// tells its CGI scripts.
fn stage_www(root: &Path) {
    let cgi = root.join("www/cgi-bin");
    std::fs::create_dir_all(&cgi).unwrap();
    let script = cgi.join("peer");
    std::fs::write(
        &script,
        "#!/bin/busybox sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A running pod of one variant, with the upstream server the app calls.
struct Pod {
    variant: Variant,
    name: String,
    ip: Ipv4Addr,
    // Dropped before the fixture (fields drop in order).
    _upstream: Process,
    podman: Podman,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// The pods of this file run one after the other: each builds images and starts four
/// containers, and the machine is small.
static ONE_POD_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Pod {
    fn start(test: &str, variant: Variant) -> Option<Pod> {
        let podman = if variant == Variant::Cni {
            let podman = Podman::new(test, &deploy_cni_stanzas())?;
            // The test binary under the plugin's name, where the runtime looks for plugins.
            std::os::unix::fs::symlink(common::MESHCAP, podman.plugin_dir().join("meshcap-cni"))
                .unwrap();
            podman
        } else {
            Podman::new(test, &[])?
        };
        let serial = ONE_POD_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let root = podman.busybox_root("app");
        stage_www(&root);
        let app = podman.build_image(
            "app",
            &root,
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
        let meshcap = podman.image_tag("meshcap");
        let mut build = std::process::Command::new(common::repo().join("deploy/build-image.sh"));
        if variant == Variant::Nftables {
            build.arg("--nftables-only");
        }
        let out = build.arg(&meshcap).arg(common::MESHCAP).output().unwrap();
        assert!(
            out.status.success(),
            "deploy/build-image.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let name = format!(
            "productpage-{}",
            podman.network().trim_start_matches("meshcap-test-")
        );
        let yaml = manifest(variant, &name, &meshcap, &app);
        podman.kube_play_ok("productpage.yaml", &yaml);
        // A Deployment's pod is named after it by podman.
        let pod = podman
            .ok(&[
                "pod",
                "ps",
                "--format",
                "{{.Name}}",
                "--filter",
                &format!("name={name}"),
            ])
            .trim()
            .to_owned();
        assert!(!pod.is_empty(), "no pod for {name}");
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
            let app = self.exec_get(None, "127.0.0.1", APP_PORT, "/cgi-bin/peer");
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
        let mut text = self.podman.ok(&["ps", "-a", "--pod"]);
        for c in ["meshcap-init", "meshcap-proxy", "productpage"] {
            let out = self.podman.run(&["logs", &self.container(c)]);
            text.push_str(&format!(
                "--- {c}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        text
    }

    /// `GET path` on the pod's `port` from the host namespace (outside the pod): the body.
    fn get(&self, port: u16, path: &str) -> Result<String, String> {
        let addr = SocketAddr::new(self.ip.into(), port);
        let path = path.to_owned();
        self.podman
            .host()
            .run(move || common::http_get(addr, &path))
    }

    /// `GET path` on `host:port` from inside the app container (busybox nc), as its own user
    /// (uid 1000) or as `user`: the body. (Debian's static busybox `wget` crashes.)
    fn exec_get(
        &self,
        user: Option<&str>,
        host: &str,
        port: u16,
        path: &str,
    ) -> Result<String, String> {
        let app = self.container("productpage");
        let script = format!(
            "printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 10 {host} {port}"
        );
        let mut args = vec!["exec"];
        if let Some(user) = user {
            args.extend(["--user", user]);
        }
        args.extend([&app, "/bin/busybox", "sh", "-c", &script]);
        let out = self.podman.run(&args);
        let what = format!("GET {host}:{port}{path} in the app as {user:?}");
        if !out.status.success() {
            return Err(format!(
                "{what}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        common::http_body(&what, &String::from_utf8_lossy(&out.stdout))
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
        let seen = self.get(APP_PORT, "/cgi-bin/peer")?;
        let after = self.counters();
        if after.0 != before.0 + 1 {
            return Err(format!(
                "inbound connection not counted by the proxy ({} -> {}); the app saw {seen}",
                before.0, after.0
            ));
        }
        let want = if self.variant == Variant::Tproxy {
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
                .exec_get(user, "127.0.0.1", APP_PORT, "/cgi-bin/peer")
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(seen, "127.0.0.1", "loopback as {user:?}");
            assert_eq!(self.counters(), before, "loopback as {user:?} was captured");
        }
    }

    /// The rules are those of the variant's backend: iptables (nft variant, as the image's plain
    /// `iptables` names are) writes `table ip nat`, the nftables backend its own tables.
    fn check_backend_tables(&self) {
        let infra = self.podman.ok(&[
            "pod",
            "inspect",
            "--format",
            "{{.InfraContainerID}}",
            &self.name,
        ]);
        let sandbox = self.podman.ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
            infra.trim(),
        ]);
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", sandbox.trim()))
            .args(["nft", "list", "tables"])
            .output()
            .unwrap();
        let tables = String::from_utf8_lossy(&out.stdout);
        let nftables = matches!(self.variant, Variant::Nftables | Variant::Cni);
        assert_eq!(
            (
                tables.contains("istio-proxy-nat"),
                tables.contains("table ip nat")
            ),
            (nftables, !nftables),
            "tables in the pod's namespace:\n{tables}"
        );
    }

    /// The init container started exactly once (podman's events for it).
    fn check_init_ran_once(&self) {
        let events = self.podman.events(&self.container("meshcap-init"));
        let starts = events.iter().filter(|e| *e == "start").count();
        assert_eq!(starts, 1, "init container events: {events:?}");
        assert!(events.iter().any(|e| e == "died"), "{events:?}");
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
    if variant != Variant::Cni {
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
