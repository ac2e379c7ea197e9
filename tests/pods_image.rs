//! The images of `make image` (deploy/build-image.sh): the full one holds exactly the
//! filesystem the registry-based Dockerfile's final stage produces from the same staged root,
//! and the nftables-only one holds no iptables at all yet installs rules with `--backend
//! nftables` (a dry run inside the image's own filesystem).

mod common;

use std::path::Path;
use std::process::Command;

use common::podman::Podman;

/// Builds `tag` with deploy/build-image.sh from the test binary.
fn build_image(podman: &Podman, tag: &str, nftables_only: bool) {
    podman.track_image(tag);
    let mut cmd = Command::new(common::repo().join("deploy/build-image.sh"));
    if nftables_only {
        cmd.arg("--nftables-only");
    }
    let out = cmd.arg(tag).arg(common::MESHCAP).output().unwrap();
    assert!(
        out.status.success(),
        "deploy/build-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every path of the image with its type, mode, owner, size, link target and content digest.
fn tree(podman: &Podman, tag: &str) -> Vec<String> {
    let mount = podman.ok(&["image", "mount", tag]);
    let mount = mount.trim();
    let listing = Command::new("sh")
        .arg("-c")
        .arg(
            "cd \"$1\" && find . -printf '%p %y %m %U:%G %s %l\\n' | sort && \
             find . -type f -exec sha256sum {} + | sort -k 2",
        )
        .args(["sh", mount])
        .output()
        .unwrap();
    podman.ok(&["image", "unmount", tag]);
    assert!(listing.status.success());
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The Dockerfile's last stage (from its last `FROM` on).
fn dockerfile_final_stage() -> String {
    let text = std::fs::read_to_string(common::repo().join("Dockerfile")).unwrap();
    let start = text.rfind("\nFROM ").expect("a FROM line") + 1;
    let stage = text[start..].to_owned();
    assert!(stage.starts_with("FROM scratch\n"), "{stage}");
    stage
}

#[test]
fn make_image_holds_what_the_dockerfiles_final_stage_holds() {
    let Some(podman) = Podman::new("pods_image_same", &[]) else {
        return;
    };
    let ours = podman.image_tag("dev");
    build_image(&podman, &ours, false);

    // The Dockerfile's build stage leaves the staged root at /rootfs (its RUN line, which
    // needs the registry's Rust image, is replaced by the same script run here); its final
    // stage is used verbatim.
    let context = podman.dir().join("build-stage");
    let out = Command::new("sh")
        .arg(common::repo().join("deploy/stage-rootfs.sh"))
        .arg(context.join("rootfs"))
        .arg(common::MESHCAP)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let build_stage = podman.build_image("build-stage", &context, &["/bin/false"]);
    let dockerfile = podman.dir().join("Dockerfile.final");
    std::fs::write(
        &dockerfile,
        format!("FROM {build_stage} AS build\n{}", dockerfile_final_stage()),
    )
    .unwrap();
    let theirs = podman.image_tag("dockerfile");
    let empty = podman.dir().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    podman.ok(&[
        "build",
        "--quiet",
        "--layers=false",
        "-f",
        &dockerfile.display().to_string(),
        "-t",
        &theirs,
        &empty.display().to_string(),
    ]);

    let (a, b) = (tree(&podman, &ours), tree(&podman, &theirs));
    assert!(
        a.iter()
            .any(|l| l.starts_with("./usr/local/bin/meshcap f 755 0:0 "))
    );
    assert_eq!(a, b, "make image and the Dockerfile's final stage differ");
    let entrypoint = |tag: &str| {
        podman.ok(&[
            "image",
            "inspect",
            "--format",
            "{{.Config.Entrypoint}}",
            tag,
        ])
    };
    assert_eq!(entrypoint(&ours), entrypoint(&theirs));
}

#[test]
fn nftables_only_image_has_no_iptables_and_runs_the_nftables_backend() {
    let Some(podman) = Podman::new("pods_image_nft", &[]) else {
        return;
    };
    let tag = podman.image_tag("dev-nft");
    build_image(&podman, &tag, true);
    let tree = tree(&podman, &tag);
    let iptables: Vec<&String> = tree
        .iter()
        .filter(|l| {
            ["iptables", "xtables", "libip4tc", "libip6tc"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    assert!(iptables.is_empty(), "{iptables:#?}");
    assert!(
        tree.iter()
            .any(|l| l.starts_with("./usr/local/bin/meshcap f "))
    );

    // The image's own filesystem alone renders the nftables rules.
    let mount = podman.ok(&["image", "mount", &tag]);
    let mut argv = vec!["/usr/local/bin/meshcap"];
    argv.extend(netns_test_harness::ISTIO_DEFAULT_ARGS);
    argv.extend(["--backend", "nftables", "--ipv6", "off", "--dry-run"]);
    let out = Command::new("chroot")
        .arg(Path::new(mount.trim()))
        .args(&argv)
        .output()
        .unwrap();
    podman.ok(&["image", "unmount", &tag]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("istio-proxy-nat"),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}
