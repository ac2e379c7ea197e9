//! `meshcap ambient`'s command line: bad flags and annotations exit 2 naming them, before
//! anything is touched; a namespace that cannot be entered is exit 1. No root needed.

mod ambient_common;

use ambient_common::meshcap;

fn fails(args: &[&str], code: i32, names: &str) {
    let out = meshcap(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(
        stderr.contains(names),
        "{args:?}: {stderr} does not name {names}"
    );
    assert!(out.stdout.is_empty(), "{args:?}");
}

#[test]
fn a_bad_annotation_exits_2_naming_it() {
    for (annotation, key) in [
        (
            "ambient.istio.io/dns-capture=yes",
            "ambient.istio.io/dns-capture",
        ),
        (
            "ambient.istio.io/bypass-inbound-capture=",
            "ambient.istio.io/bypass-inbound-capture",
        ),
        (
            "istio.io/reroute-virtual-interfaces=eth0,a/b",
            "istio.io/reroute-virtual-interfaces",
        ),
        (
            "istio.io/reroute-virtual-interfaces=averyverylongname0",
            "istio.io/reroute-virtual-interfaces",
        ),
    ] {
        fails(
            &["ambient", "pod", "--dry-run", "--annotation", annotation],
            2,
            key,
        );
    }
    fails(
        &["ambient", "pod", "--dry-run", "--annotation", "novalue"],
        2,
        "--annotation",
    );
    // Annotations that do not count are ignored.
    assert!(
        meshcap(&["ambient", "pod", "--dry-run", "--annotation", "x.io/y=z"])
            .status
            .success()
    );
}

#[test]
fn bad_flags_exit_2_naming_them() {
    fails(
        &["ambient", "pod", "--dry-run", "--ambient-ipv6=maybe"],
        2,
        "--ambient-ipv6",
    );
    fails(
        &[
            "ambient",
            "host",
            "--dry-run",
            "--host-probe-snat-ip",
            "::1",
        ],
        2,
        "--host-probe-snat-ip",
    );
    fails(
        &["ambient", "pod", "--dry-run", "--backend", "pf"],
        2,
        "--backend",
    );
    fails(
        &[
            "ambient",
            "pod",
            "--dry-run",
            "--backend",
            "iptables",
            "--native-nftables",
        ],
        2,
        "--native-nftables",
    );
    fails(
        &["ambient", "pod", "--dry-run", "--cleanup"],
        2,
        "--cleanup",
    );
}

#[test]
fn the_environment_sets_the_probe_addresses() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshcap"))
        .args(["ambient", "host", "--dry-run", "--ambient-ipv6"])
        .env("HOST_PROBE_SNAT_IP", "198.51.100.127")
        .env("HOST_PROBE_SNAT_IPV6", "2001:db8::127")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--to-source 198.51.100.127\n"), "{text}");
    assert!(text.contains("--to-source 2001:db8::127\n"), "{text}");
    // A flag beats its variable.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshcap"))
        .args([
            "ambient",
            "host",
            "--dry-run",
            "--host-probe-snat-ip",
            "203.0.113.127",
        ])
        .env("HOST_PROBE_SNAT_IP", "198.51.100.127")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--to-source 203.0.113.127\n"));
}

#[test]
fn the_nftables_install_goes_into_the_named_namespace_or_fails() {
    // A namespace that cannot be entered: exit 1 naming it, and nothing installed anywhere
    // (the work runs only inside the namespace).
    fails(
        &[
            "ambient",
            "pod",
            "--native-nftables",
            "--network-namespace",
            "/nonexistent/netns",
        ],
        1,
        "/nonexistent/netns",
    );
}

#[test]
fn explain_names_ztunnels_ports_and_the_deciding_rule() {
    let out = meshcap(&[
        "explain",
        "--ambient",
        "--ambient-dns-capture",
        "--flow",
        "dir=out dst=198.51.100.10:80",
        "--flow",
        "dir=out dst=198.51.100.10:80 mark=0x539",
        "--flow",
        "dir=in dst=192.0.2.1:8080 src=169.254.7.127",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("verdict:") || l.starts_with("decided by:"))
        .collect();
    assert_eq!(
        lines,
        [
            "verdict: captured-outbound 15001",
            "decided by: output ipv4 nat ISTIO_OUTPUT: -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
            "verdict: direct (ztunnel's own)",
            "decided by: no rule (the chains' policies)",
            "verdict: direct (kubelet probe)",
            "decided by: prerouting ipv4 nat ISTIO_PRERT: -A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT",
        ]
    );
    assert!(
        text.starts_with("rules: ambient plan (iptables spelling)\n"),
        "{text}"
    );
    fails(
        &["explain", "--ambient", "--flow", "dir=out dst=nowhere"],
        2,
        "dst=nowhere",
    );
    fails(
        &[
            "explain",
            "--ambient",
            "--flow",
            "dir=out dst=1.2.3.4:5",
            "--annotation",
            "ambient.istio.io/dns-capture=x",
        ],
        2,
        "ambient.istio.io/dns-capture",
    );
}
