//! The Podman fixture itself (tests/common/podman.rs): a pod of a busybox image comes up on the
//! test network inside the throwaway host namespace, is reachable from there, runs its init
//! container once, and nothing of it is left afterwards, also when the test panics.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::podman::{GATEWAY, Podman};

/// What of a fixture Podman and the kernel still know: pods, containers and images whose name
/// holds one of `needles`, and the namespaces at `namespaces` (names or /run/netns paths).
fn leftovers(needles: &[String], namespaces: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    let listing = |args: &[&str]| -> String {
        let out = std::process::Command::new("podman")
            .args(args)
            .output()
            .expect("run podman");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (what, args) in [
        ("pod", &["pod", "ps", "--format", "{{.Name}}"][..]),
        ("container", &["ps", "-a", "--format", "{{.Names}}"]),
        ("image", &["images", "--format", "{{.Repository}}:{{.Tag}}"]),
    ] {
        for line in listing(args).lines() {
            if needles.iter().any(|n| line.contains(n.as_str())) {
                left.push(format!("{what} {line}"));
            }
        }
    }
    for namespace in namespaces {
        if std::path::Path::new("/run/netns").join(namespace).exists() {
            left.push(format!("namespace {namespace}"));
        }
    }
    left
}

fn pod_yaml(image: &str, name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: OnFailure
  initContainers:
  - name: init
    image: {image}
    command: ["/bin/busybox", "true"]
  containers:
  - name: web
    image: {image}
    command: ["/bin/busybox", "nc", "-ll", "-p", "8080", "-e", "/bin/busybox", "echo", "hello from the pod"]
    securityContext:
      runAsUser: 1000
"#
    )
}

/// The name under /run/netns of the pod's network namespace (Podman's, not the fixture's).
fn pod_namespace(podman: &Podman, pod: &str) -> String {
    let infra = podman.ok(&["pod", "inspect", "--format", "{{.InfraContainerID}}", pod]);
    let key = podman.ok(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.SandboxKey}}",
        infra.trim(),
    ]);
    let name = key.trim().rsplit('/').next().unwrap_or_default().to_owned();
    assert!(
        std::path::Path::new("/run/netns").join(&name).exists(),
        "pod namespace {key:?}"
    );
    name
}

fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// Retries `fetch` while the pod's listener comes up.
fn fetch_until_up(podman: &Podman, addr: SocketAddr) -> String {
    podman.host().run(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match fetch(addr) {
                Ok(text) if !text.is_empty() => return text,
                result if Instant::now() > deadline => panic!("{addr}: {result:?}"),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    })
}

#[test]
fn a_pod_runs_in_the_throwaway_namespace_and_nothing_is_left() {
    let Some(podman) = Podman::new("pods_fixture", &[]) else {
        return;
    };
    let namespace = podman.host().name().to_owned();
    let network = podman.network();
    let image = podman.busybox_image("fixture", &["/bin/busybox"]);
    let pod = format!("fixture-{}", std::process::id());
    podman.kube_play_ok("pod.yaml", &pod_yaml(&image, &pod));

    let ip = podman.pod_ip(&pod);
    let sandbox = pod_namespace(&podman, &pod);
    assert!(
        ip.to_string().starts_with("198.51.100."),
        "pod address {ip} outside the test range"
    );
    let text = fetch_until_up(&podman, SocketAddr::new(ip.into(), 8080));
    assert_eq!(text.trim(), "hello from the pod");
    // The bridge is in the throwaway namespace, not in the machine's.
    let addrs = podman.host().exec_ok(&["ip", "-4", "-o", "addr"]);
    assert!(addrs.contains(GATEWAY), "{addrs}");
    let init = podman.events(&format!("{pod}-init"));
    assert_eq!(
        init.iter().filter(|s| *s == "start").count(),
        1,
        "init container events: {init:?}"
    );

    let id_part = network.trim_start_matches("meshcap-test-").to_owned();
    drop(podman);
    assert_eq!(
        leftovers(&[id_part, pod], &[namespace, sandbox]),
        Vec::<String>::new()
    );
}

#[test]
fn nothing_is_left_when_the_test_panics() {
    if !common::podman::available("pods_fixture_panic") {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let podman = Podman::new("pods_fixture_panic", &[]).expect("available");
        let image = podman.busybox_image("panic", &["/bin/busybox"]);
        let pod = format!("panic-{}", std::process::id());
        podman.kube_play_ok("pod.yaml", &pod_yaml(&image, &pod));
        tx.send((
            vec![
                podman
                    .network()
                    .trim_start_matches("meshcap-test-")
                    .to_owned(),
                pod.clone(),
            ],
            vec![
                podman.host().name().to_owned(),
                pod_namespace(&podman, &pod),
            ],
        ))
        .unwrap();
        panic!("the test fails with the pod running");
    });
    assert!(result.is_err());
    let (needles, namespaces) = rx.recv().expect("the fixture came up");
    assert_eq!(leftovers(&needles, &namespaces), Vec::<String>::new());
}
