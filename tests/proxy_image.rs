//! What can be checked of the container image without a container engine: the runtime stage's
//! filesystem, laid out by deploy/stage-rootfs.sh exactly as the Dockerfile's build stage does,
//! holds every library `ldd meshcap` lists, and meshcap and both iptables variants run in it
//! (chroot, so nothing of the host's filesystem helps them).

mod common;

use common::{MESHCAP, repo, text};
use std::path::PathBuf;
use std::process::Command;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd`; panics with its output unless it succeeds; returns its stdout then stderr.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        text(&out)
    );
    text(&out)
}

#[test]
fn dockerfile_runs_the_readme_build_and_stages_the_rootfs() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    for want in [
        "RUN make build",
        "sh deploy/stage-rootfs.sh /rootfs target/x86_64-unknown-linux-gnu/release/meshcap",
        "FROM scratch",
        "COPY --from=build /rootfs/ /",
        "ENTRYPOINT [\"/usr/local/bin/meshcap\"]",
    ] {
        assert!(dockerfile.contains(want), "Dockerfile lacks {want:?}");
    }
    // The runtime stage copies nothing but the staged root.
    let copies: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY"))
        .collect();
    assert_eq!(copies, ["COPY . .", "COPY --from=build /rootfs/ /"]);
}

#[test]
fn staged_rootfs_holds_meshcap_iptables_and_their_libraries() {
    if !netns_test_harness::require_root("staged_rootfs_holds_meshcap_iptables_and_their_libraries")
    {
        return; // chroot needs root
    }
    let dir = TempDir(std::env::temp_dir().join(format!("meshcap-rootfs-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    run_ok(
        Command::new("sh")
            .arg(repo().join("deploy/stage-rootfs.sh"))
            .arg(&dir.0)
            .arg(MESHCAP),
    );

    // Every library the binary links is there.
    let ldd = run_ok(Command::new("ldd").arg(MESHCAP));
    for line in ldd.lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .unwrap_or_default();
        if !path.is_empty() {
            let staged = dir.0.join(path.trim_start_matches('/'));
            assert!(staged.exists(), "{path} (from ldd) not staged");
        }
    }

    // Inside the staged root alone: meshcap renders Istio's rules, both iptables variants run.
    let chroot = |argv: &[&str]| run_ok(Command::new("chroot").arg(&dir.0).args(argv));
    let mut argv = vec!["/usr/local/bin/meshcap"];
    argv.extend(netns_test_harness::ISTIO_DEFAULT_ARGS);
    argv.extend(["--ipv6", "off", "--dry-run"]);
    let rules = chroot(&argv);
    assert!(
        rules.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"),
        "{rules}"
    );
    let help = chroot(&["/usr/local/bin/meshcap", "proxy", "--help"]);
    assert!(help.contains("--inbound-capture-port"), "{help}");
    for (variant, says) in [("nft", "(nf_tables)"), ("legacy", "(legacy)")] {
        for cmd in ["iptables", "ip6tables", "iptables-save", "iptables-restore"] {
            let name = match cmd.split_once('-') {
                Some((base, verb)) => format!("/usr/sbin/{base}-{variant}-{verb}"),
                None => format!("/usr/sbin/{cmd}-{variant}"),
            };
            let out = chroot(&[&name, "--version"]);
            assert!(out.contains(says), "{name}: {out}");
        }
    }
    // An extension loads (owner match, as the rules use it).
    let owner = chroot(&["/usr/sbin/iptables-nft", "-m", "owner", "--help"]);
    assert!(owner.contains("--uid-owner"), "{owner}");
}
