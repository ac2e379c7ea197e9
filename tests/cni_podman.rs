//! meshcap-cni under a real runtime: Podman (its CNI network backend) runs a container on a
//! network whose configuration list chains Debian's bridge + host-local + meshcap-cni. The
//! container gets no capability and no init container; `meshcap proxy` runs in its network
//! namespace as uid 1337, and its metrics show both directions captured. `podman rm` runs DEL;
//! a bad capture value makes `podman run` fail with meshcap's message.
//!
//! Podman runs in a throwaway "host" namespace (tests/common/podman.rs); traffic stays on the
//! test network (198.51.100.0/24).

mod common;

use common::cni::ISTIO_CNI_FLAGS;
use common::in_netns;
use common::podman::{GATEWAY, Podman, RUN_FLAGS};
use serde_json::{Value, json};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const APP_PORT: u16 = 8080;
const UPSTREAM_PORT: u16 = 8081;

/// Podman with meshcap-cni (the test binary under the plugin's name) chained with `capture`.
fn podman(test: &str, capture: Value) -> Option<Podman> {
    let podman = Podman::new(test, &[json!({"type": "meshcap-cni", "capture": capture})])?;
    std::os::unix::fs::symlink(common::MESHCAP, podman.plugin_dir().join("meshcap-cni"))
        .expect("meshcap-cni in the plugin directory");
    Some(podman)
}

/// An image of busybox serving `text` over HTTP on APP_PORT (as its entrypoint).
fn app_image(podman: &Podman, text: &str) -> String {
    let root = podman.busybox_root("app");
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::write(root.join("www/index.html"), text).unwrap();
    let port = APP_PORT.to_string();
    podman.build_image(
        "app",
        &root,
        &["/bin/busybox", "httpd", "-f", "-p", &port, "-h", "/www"],
    )
}

/// `meshcap proxy` as uid/gid 1337 in the container's network namespace; killed on drop.
struct Proxy(Child);

impl Proxy {
    fn start(netns: &Path) -> Proxy {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args([
                "setpriv",
                "--reuid",
                "1337",
                "--regid",
                "1337",
                "--clear-groups",
            ])
            .arg(common::MESHCAP)
            .arg("proxy")
            .spawn()
            .expect("start meshcap proxy");
        let proxy = Proxy(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let metrics: SocketAddr = "127.0.0.1:15021".parse().unwrap();
        while in_netns(netns, move || {
            TcpStream::connect_timeout(&metrics, Duration::from_secs(1))
        })
        .is_err()
        {
            assert!(Instant::now() < deadline, "meshcap proxy did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        proxy
    }

    /// (inbound, outbound) connections the proxy counted, from its metrics.
    fn counters(netns: &Path) -> (u64, u64) {
        common::proxy_connections_in(netns)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn podman_run_is_captured_both_ways_and_rm_removes_the_rules() {
    for backend in ["iptables", "nftables"] {
        let test = "podman_run_is_captured_both_ways_and_rm_removes_the_rules";
        let Some(podman) = podman(test, json!({"backend": backend})) else {
            return;
        };
        let app = app_image(&podman, "app");
        let name = format!("cni-{backend}-{}", std::process::id());
        podman.track_container(&name);
        let mut run = vec!["run", "-d", "--name", &name, "--user", "1000:1000"];
        run.extend(RUN_FLAGS);
        run.push(&app);
        podman.ok(&run);
        let netns = PathBuf::from(
            podman
                .ok(&[
                    "inspect",
                    "--format",
                    "{{.NetworkSettings.SandboxKey}}",
                    &name,
                ])
                .trim(),
        );
        let ip = podman.container_ip(&name);

        // The container's namespace holds exactly Istio's CNI rules, from the runtime's ADD.
        let ns_arg = netns.display().to_string();
        let mut diff = vec!["diff"];
        diff.extend(ISTIO_CNI_FLAGS);
        diff.extend(["--backend", backend, "--network-namespace", &ns_arg]);
        let out = podman
            .host()
            .exec(&[&[common::MESHCAP][..], &diff[..]].concat());
        assert!(
            out.status.success(),
            "{backend}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let proxy = Proxy::start(&netns);
        let upstream_root = podman.busybox_root("upstream");
        std::fs::create_dir_all(upstream_root.join("www")).unwrap();
        std::fs::write(upstream_root.join("www/index.html"), "upstream").unwrap();
        let _upstream = podman.host().spawn(
            &[
                "/usr/bin/busybox",
                "httpd",
                "-f",
                "-p",
                &format!("{GATEWAY}:{UPSTREAM_PORT}"),
                "-h",
                &upstream_root.join("www").display().to_string(),
            ],
            None,
        );

        // Inbound from the bridge side, through the proxy's 15006.
        let before = Proxy::counters(&netns);
        let addr = SocketAddr::new(ip.into(), APP_PORT);
        let deadline = Instant::now() + Duration::from_secs(20);
        let got = loop {
            match podman.host().run(move || common::http_get(addr, "/")) {
                Ok(body) => break body,
                Err(e) => assert!(Instant::now() < deadline, "{backend}: inbound: {e}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(got, "app");
        let after = Proxy::counters(&netns);
        assert!(
            after.0 > before.0,
            "{backend}: inbound not captured ({before:?} -> {after:?})"
        );

        // The app's own outbound TCP (uid 1000), through the proxy's 15001.
        let script = format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 10 {GATEWAY} {UPSTREAM_PORT}"
        );
        let before = Proxy::counters(&netns);
        let out = podman.ok(&["exec", &name, "/bin/busybox", "sh", "-c", &script]);
        assert_eq!(
            common::http_body("GET upstream", &out).ok().as_deref(),
            Some("upstream"),
            "{backend}: {out:?}"
        );
        let after = Proxy::counters(&netns);
        assert_eq!(after.1, before.1 + 1, "{backend}: outbound not captured");
        drop(proxy);

        // podman rm: the runtime's DEL. The namespace is gone. (meshcap's lock was an abstract
        // socket of the namespace: no file to remove; see tests/namespace_session.rs.)
        podman.ok(&["rm", "-f", &name]);
        assert!(
            !netns.exists(),
            "{backend}: the container's namespace outlived it"
        );
    }
}

#[test]
fn a_bad_capture_value_fails_podman_run_with_meshcaps_message() {
    let test = "a_bad_capture_value_fails_podman_run_with_meshcaps_message";
    let Some(podman) = podman(test, json!({"envoy-port": "70000"})) else {
        return;
    };
    let app = app_image(&podman, "app");
    let name = format!("cni-bad-{}", std::process::id());
    podman.track_container(&name);
    let mut run = vec!["run", "-d", "--name", &name];
    run.extend(RUN_FLAGS);
    run.push(&app);
    let out = podman.run(&run);
    assert!(
        !out.status.success(),
        "podman run must fail: the pod would start without rules"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"invalid value \"70000\" for capture key \"envoy-port\""#)
            || stderr.contains(r#"invalid value "70000" for capture key "envoy-port""#),
        "meshcap's message is not shown: {stderr}"
    );
    let running = podman.ok(&[
        "ps",
        "--filter",
        &format!("name={name}"),
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(running.trim(), "", "the container must not run");
}

/// The README's way to try CNI mode: `scripts/try-cni.sh` runs as written, with each backend,
/// and leaves nothing behind.
#[test]
fn the_readme_try_cni_script_works() {
    let test = "the_readme_try_cni_script_works";
    if !common::podman::available(test) {
        return;
    }
    for backend in ["nftables", "iptables"] {
        let out = Command::new(common::repo().join("scripts/try-cni.sh"))
            .arg(backend)
            .env("MESHCAP_BIN", common::MESHCAP)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run scripts/try-cni.sh");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{backend}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for want in [
            "in sync: the kernel holds exactly the planned rules",
            "the container's namespace and its rules are gone",
        ] {
            assert!(text.contains(want), "{backend}: no {want:?} in\n{text}");
        }
        let rules = if backend == "nftables" {
            "redirect to :15001"
        } else {
            "--to-ports 15001"
        };
        assert!(
            text.contains(rules),
            "{backend}: the rules are not shown:\n{text}"
        );
    }
}
