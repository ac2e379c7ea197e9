//! A Kubernetes node for end-to-end tests: Debian's containerd with its CRI plugin, driven over
//! CRI v1 exactly as kubelet drives it (RunPodSandbox, CreateContainer, StartContainer,
//! ExecSync, StopPodSandbox, RemovePodSandbox), in a throwaway "node" network namespace.
//!
//! [`Node::start`] creates
//! * a namespace `meshcap-node-…` (netns-test-harness) in which containerd, its shims and the CNI
//!   plugins run: the pods' bridge ([`GATEWAY`] on [`SUBNET`]) and the host side of every veth
//!   live there, never in the machine's own namespace;
//! * a directory `meshcap-node-<pid>-<n>` in the temporary directory holding everything
//!   containerd writes: its root and state, its gRPC and ttrpc sockets, runc's root, the CNI
//!   `bin_dir` ([`Node::bin_dir`]: Debian's bridge, host-local and loopback, linked) and
//!   `conf_dir` ([`Node::conf_dir`]: one bridge + host-local network, as a node's primary
//!   network, host-local's leases kept in the directory), the pods' network namespaces
//!   (`netns_mounts_under_state_dir`) and logs;
//! * a cgroup parent `/meshcap-node-<pid>-<n>` for the pods ([`Node::run_pod`] puts every pod
//!   below it, as kubelet puts them below `/kubepods`);
//! * the sandbox ("pause") image, built here from Debian's static busybox and `catatonit -P`
//!   and imported with `ctr -n k8s.io images import` (no registry is reachable).
//!
//! Settings this machine needs: `restrict_oom_score_adj` (the sandbox lacks CAP_SYS_RESOURCE,
//! and runc fails to lower its score otherwise), the overlayfs snapshotter, runc with cgroupfs
//! (`SystemdCgroup = false`: no systemd here), the `opt` plugin pointed into the directory (its
//! default is /opt/containerd).
//!
//! What containerd puts outside the directory whatever its configuration, and how it is undone:
//! * the shims' sockets, `/run/containerd/s/<hash>` (the path is fixed in containerd 1.6): each
//!   shim's bundle in the state directory names its socket in a file `address`; teardown removes
//!   exactly those;
//! * libcni's result cache, `/var/lib/cni/results/<network>-<sandbox id>-<interface>` (the CRI
//!   plugin of 1.6 has no setting for it): teardown removes the entries of the node's sandboxes;
//! * mounts (rootfs overlays, /dev/shm, the pods' namespaces) under the directory, and the pods'
//!   cgroups under the parent: teardown unmounts and removes them;
//!
//! Teardown ([`Drop`], also while a test panics): every sandbox is stopped and removed through
//! CRI (the plugins' DEL runs), containerd gets SIGTERM (SIGKILL after a grace), the shims and
//! whatever still runs in the pods' cgroups get SIGKILL, then the mounts, cgroups, sockets, cache
//! entries, the directory and the namespace go. A run killed before its drop leaves its directory
//! behind; the next [`Node::start`] finds it (its pid is gone) and undoes it the same way.
//!
//! Skips: without root, or without containerd, [`Node::start`] reports the test as skipped
//! (`SKIP: test: reason`) and returns `None`; under `MESHCAP_REQUIRE_NETNS=1` it panics instead.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use netns_test_harness::Netns;
use netns_test_harness::skip::Need;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint, Uri};

/// The pod network (documentation range, TEST-NET-2) and the node's address on it (the bridge).
pub const SUBNET: &str = "198.51.100.0/24";
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// The name of the directories, namespaces and cgroups of a node: `meshcap-node-<pid>-<n>`.
const PREFIX: &str = "meshcap-node-";
/// containerd's namespace for CRI.
const K8S_NAMESPACE: &str = "k8s.io";
/// Where containerd 1.6 puts the shims' sockets, whatever its state directory.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// libcni's default cache of ADD results (containerd's CRI plugin does not move it).
const CNI_RESULTS_DIR: &str = "/var/lib/cni/results";
/// Debian's CNI plugins (containernetworking-plugins).
const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";
/// The sandbox image's tag, in the node's own image store.
pub const PAUSE_IMAGE: &str = "localhost/meshcap-test-pause:node";
/// How long containerd may take to come up or to stop.
const DAEMON_DEADLINE: Duration = Duration::from_secs(60);
/// The deadline of one CRI call (RunPodSandbox includes the whole CNI chain).
const CALL_DEADLINE: Duration = Duration::from_secs(120);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether containerd tests can run here; reports why not (or panics, see the module).
pub fn available(test: &str) -> bool {
    let skip = |reason: &str| {
        netns_test_harness::skip::skip(test, Need::Root, reason);
        false
    };
    if !nix::unistd::geteuid().is_root() {
        return skip("needs root (network namespaces, containerd, mounts, cgroups)");
    }
    for (binary, package) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("containerd-shim-runc-v2", "containerd"),
        ("runc", "runc"),
        ("catatonit", "catatonit"),
        ("busybox", "busybox-static"),
    ] {
        if which(binary).is_none() {
            return skip(&format!(
                "{binary} is not installed (scripts/setup.sh installs {package})"
            ));
        }
    }
    true
}

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

/// A pod as kubelet describes it to RunPodSandbox.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub annotations: HashMap<String, String>,
    pub labels: HashMap<String, String>,
}

impl PodSpec {
    /// A pod `namespace`/`name` with a uid derived from both, no annotations or labels.
    pub fn new(namespace: &str, name: &str) -> PodSpec {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in namespace.bytes().chain([b'/']).chain(name.bytes()) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        PodSpec {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                hash >> 32,
                (hash >> 16) & 0xffff,
                hash & 0xfff,
                (hash >> 20) & 0xfff,
                hash & 0xffff_ffff_ffff
            ),
            annotations: HashMap::new(),
            labels: HashMap::new(),
        }
    }
}

/// A running pod sandbox.
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub spec: PodSpec,
    /// The pod's network namespace (a bind mount under the node's state directory).
    pub netns: PathBuf,
    /// Its address on [`SUBNET`].
    pub ip: Ipv4Addr,
}

/// A container to create in a pod.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Replaces the image's entrypoint when not empty.
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// `runAsUser` and `runAsGroup`.
    pub user: Option<(i64, i64)>,
}

/// containerd on a throwaway node; see the module documentation.
pub struct Node {
    /// `<pid>-<n>`.
    id: String,
    dir: PathBuf,
    containerd: Mutex<Option<Child>>,
    runtime: tokio::runtime::Runtime,
    channel: Mutex<Channel>,
    // Dropped last (fields drop in order): the namespace outlives containerd and the pods.
    host: Netns,
}

impl Node {
    /// A node whose CNI configuration directory holds one network: bridge + host-local on
    /// [`SUBNET`]. `None`: skipped (see the module).
    pub fn start(test: &str) -> Option<Node> {
        if !available(test) {
            return None;
        }
        remove_stale();
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("{PREFIX}{id}"));
        teardown(&dir, &format!("/{PREFIX}{id}"));
        for sub in ["cni/bin", "cni/net.d", "ipam", "logs", "images"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create the node's directories");
        }
        for plugin in ["bridge", "host-local", "loopback"] {
            std::os::unix::fs::symlink(
                Path::new(DEBIAN_CNI_DIR).join(plugin),
                dir.join("cni/bin").join(plugin),
            )
            .expect("link Debian's CNI plugins into the node's bin_dir");
        }
        std::fs::write(dir.join("config.toml"), containerd_config(&dir, &id))
            .expect("write containerd's config");
        let primary = json!({
            "cniVersion": "1.0.0",
            "name": format!("{PREFIX}{id}"),
            "plugins": [{
                "type": "bridge",
                "bridge": format!("mcn{}", id.replace('-', "x")),
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    // Leases stay in the node's directory, not in /var/lib/cni.
                    "dataDir": dir.join("ipam"),
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY.to_string()}]]
                }
            }]
        });
        std::fs::write(
            dir.join("cni/net.d/10-bridge.conflist"),
            serde_json::to_string_pretty(&primary).expect("JSON"),
        )
        .expect("write the primary network");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let host = Netns::new("node");
        let channel = runtime.block_on(async { lazy_channel(&dir.join("containerd.sock")) });
        let node = Node {
            id,
            dir,
            containerd: Mutex::new(None),
            runtime,
            channel: Mutex::new(channel),
            host,
        };
        node.start_containerd();
        let pause = node.dir.join("images/pause-root");
        std::fs::create_dir_all(pause.join("bin")).expect("pause image root");
        std::fs::copy("/usr/bin/busybox", pause.join("bin/busybox")).expect("copy busybox");
        std::fs::copy(
            which("catatonit").expect("catatonit"),
            pause.join("bin/catatonit"),
        )
        .expect("copy catatonit");
        node.import_image(PAUSE_IMAGE, &pause, &["/bin/catatonit", "-P"]);
        Some(node)
    }

    /// The namespace playing the node: the bridge ([`GATEWAY`]) is there once a pod exists.
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// The node's directory (removed on drop); callers may stage files in it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's CNI `bin_dir`, as a node's /opt/cni/bin.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("cni/bin")
    }

    /// containerd's CNI `conf_dir`, as a node's /etc/cni/net.d.
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }

    /// The name of the primary network (the conflist's `name`).
    pub fn network(&self) -> String {
        format!("{PREFIX}{}", self.id)
    }

    /// The cgroup every pod of the node is placed below (cgroupfs syntax).
    pub fn cgroup_parent(&self) -> String {
        format!("/{PREFIX}{}", self.id)
    }

    /// Whether any cgroup hierarchy still holds the node's cgroup parent.
    pub fn cgroups_left(cgroup_parent: &str) -> bool {
        !cgroups_below(cgroup_parent).is_empty()
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// containerd's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The last warnings and errors of containerd's log (for failure messages).
    pub fn log_errors(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("level=error") || l.contains("level=warning"))
            .collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    fn start_containerd(&self) {
        let log = std::fs::File::create(self.dir.join("containerd.log")).expect("containerd log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.host.path().display()))
            .arg("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        // nsenter execs containerd: this pid is containerd's (the sweep of a killed run uses it).
        std::fs::write(self.dir.join("containerd.pid"), child.id().to_string())
            .expect("containerd.pid");
        *self.containerd.lock().unwrap() = Some(child);
        *self.channel.lock().unwrap() = self
            .runtime
            .block_on(async { lazy_channel(&self.socket()) });
        let deadline = Instant::now() + DAEMON_DEADLINE;
        loop {
            let ready = self
                .call(|mut c| async move { c.status(cri::StatusRequest { verbose: false }).await })
                .ok()
                .and_then(|s| s.status)
                .is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "RuntimeReady" && c.status)
                });
            if ready {
                return;
            }
            if let Some(status) = self
                .containerd
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("containerd exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not become ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops containerd (SIGTERM; SIGKILL after a grace period). Pods keep running: their shims
    /// are separate processes.
    pub fn stop_containerd(&self) {
        if let Some(child) = self.containerd.lock().unwrap().take() {
            stop_process(child);
        }
    }

    /// SIGKILL to containerd, as a crash.
    pub fn kill_containerd(&self) {
        if let Some(mut child) = self.containerd.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops containerd and starts it again with the same configuration and state.
    pub fn restart_containerd(&self) {
        self.stop_containerd();
        self.start_containerd();
    }

    /// Runs one CRI call on the runtime service; the gRPC status on failure.
    pub fn call<T, F, Fut>(&self, f: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = RuntimeServiceClient::new(self.channel.lock().unwrap().clone());
        self.runtime.block_on(async {
            match tokio::time::timeout(CALL_DEADLINE, f(client)).await {
                Ok(result) => result.map(tonic::Response::into_inner),
                Err(_) => Err(tonic::Status::deadline_exceeded("the test's deadline")),
            }
        })
    }

    /// The image service's images (their tags).
    pub fn images(&self) -> Vec<String> {
        let client = ImageServiceClient::new(self.channel.lock().unwrap().clone());
        self.runtime
            .block_on(async move {
                let mut c = client;
                c.list_images(cri::ListImagesRequest { filter: None }).await
            })
            .map(|r| {
                r.into_inner()
                    .images
                    .into_iter()
                    .flat_map(|i| i.repo_tags)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Builds an image holding exactly the tree `root` with `entrypoint` as an OCI archive
    /// (written by hand: one uncompressed layer, no registry, no build tool) and imports it as
    /// `tag` with `ctr -n k8s.io images import`.
    pub fn import_image(&self, tag: &str, root: &Path, entrypoint: &[&str]) {
        let name: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let work = self.dir.join("images").join(&name);
        let blobs = work.join("layout/blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("image layout");
        let layer = work.join("layer.tar");
        run_ok(Command::new("tar").args([
            "-C",
            &root.display().to_string(),
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--sort=name",
            "-cf",
            &layer.display().to_string(),
            ".",
        ]));
        let blob = |path: &Path| -> Value {
            let digest = run_ok(Command::new("sha256sum").arg(path));
            let digest = digest.split_whitespace().next().expect("digest").to_owned();
            let size = std::fs::metadata(path).expect("blob").len();
            std::fs::rename(path, blobs.join(&digest)).expect("move the blob");
            json!({"digest": format!("sha256:{digest}"), "size": size})
        };
        let layer = blob(&layer);
        let config_path = work.join("config.json");
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
        });
        std::fs::write(&config_path, config.to_string()).expect("image config");
        let config = blob(&config_path);
        let manifest_path = work.join("manifest.json");
        let with_type = |mut d: Value, media: &str| {
            d["mediaType"] = json!(media);
            d
        };
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": with_type(config, "application/vnd.oci.image.config.v1+json"),
            "layers": [with_type(layer, "application/vnd.oci.image.layer.v1.tar")],
        });
        std::fs::write(&manifest_path, manifest.to_string()).expect("image manifest");
        let mut manifest = with_type(
            blob(&manifest_path),
            "application/vnd.oci.image.manifest.v1+json",
        );
        // containerd's importer names the image after this annotation.
        manifest["annotations"] = json!({"io.containerd.image.name": tag});
        manifest["platform"] = json!({"architecture": "amd64", "os": "linux"});
        std::fs::write(
            work.join("layout/index.json"),
            json!({"schemaVersion": 2, "manifests": [manifest]}).to_string(),
        )
        .expect("image index");
        std::fs::write(
            work.join("layout/oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("oci-layout");
        let archive = work.join("image.tar");
        run_ok(Command::new("tar").args([
            "-C",
            &work.join("layout").display().to_string(),
            "-cf",
            &archive.display().to_string(),
            ".",
        ]));
        run_ok(
            Command::new("ctr")
                .arg("--address")
                .arg(self.socket())
                .args(["-n", K8S_NAMESPACE, "images", "import"])
                .arg(&archive),
        );
        let _ = std::fs::remove_dir_all(&work);
        // The CRI plugin learns of the image from containerd's events.
        let deadline = Instant::now() + DAEMON_DEADLINE;
        while !self.images().iter().any(|t| t == tag) {
            assert!(Instant::now() < deadline, "{tag} not seen by CRI");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// meshcap's image, as `make image` builds `localhost/meshcap:dev` (deploy/stage-rootfs.sh,
    /// nftables only), from the test binary with its debug information stripped; imported as
    /// `tag`.
    pub fn import_meshcap_image(&self, tag: &str) {
        let root = self.dir.join("images/meshcap-root");
        run_ok(
            Command::new("sh")
                .arg(super::repo().join("deploy/stage-rootfs.sh"))
                .arg("--nftables-only")
                .arg(&root)
                .arg(super::MESHCAP),
        );
        run_ok(
            Command::new("strip")
                .arg("--strip-debug")
                .arg(root.join("usr/local/bin/meshcap")),
        );
        self.import_image(tag, &root, &["/usr/local/bin/meshcap"]);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// An image of Debian's static busybox alone (/bin/busybox), with these files added
    /// (path in the image, content) and `entrypoint`; imported as `tag`.
    pub fn import_busybox_image(&self, tag: &str, files: &[(&str, &str)], entrypoint: &[&str]) {
        let root = self.dir.join("images/busybox-root");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bin")).expect("busybox root");
        std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
        for (path, content) in files {
            let file = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().expect("parent")).expect("image dirs");
            std::fs::write(&file, content).expect("image file");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        self.import_image(tag, &root, entrypoint);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// The PodSandboxConfig kubelet sends for `spec`.
    pub fn sandbox_config(&self, spec: &PodSpec) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            hostname: spec.name.clone(),
            log_directory: self
                .dir
                .join(format!(
                    "logs/{}_{}_{}",
                    spec.namespace, spec.name, spec.uid
                ))
                .display()
                .to_string(),
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/{PREFIX}{}/pod{}", self.id, spec.uid),
                security_context: Some(cri::LinuxSandboxSecurityContext::default()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox as kubelet calls it; on success the sandbox's namespace and address.
    pub fn run_pod(&self, spec: &PodSpec) -> Result<Pod, tonic::Status> {
        let config = self.sandbox_config(spec);
        let id = self
            .call(|mut c| async move {
                c.run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
            })?
            .pod_sandbox_id;
        let status = self.call(|mut c| {
            let id = id.clone();
            async move {
                c.pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose: true,
                })
                .await
            }
        })?;
        let ip = status
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        let info: Value = serde_json::from_str(status.info.get("info").expect("verbose info"))
            .expect("sandbox info is JSON");
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .expect("the sandbox's namespaces")
            .iter()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .expect("the sandbox's network namespace path")
            .to_owned();
        Ok(Pod {
            id,
            spec: spec.clone(),
            netns: netns.into(),
            ip: ip
                .parse()
                .unwrap_or_else(|_| panic!("the sandbox's address {ip:?}")),
        })
    }

    /// CreateContainer then StartContainer in `pod`; the container's id.
    pub fn start_container(
        &self,
        pod: &Pod,
        spec: &ContainerSpec,
    ) -> Result<String, tonic::Status> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            log_path: format!("{}/0.log", spec.name),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    run_as_user: spec.user.map(|(u, _)| cri::Int64Value { value: u }),
                    run_as_group: spec.user.map(|(_, g)| cri::Int64Value { value: g }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sandbox_config = self.sandbox_config(&pod.spec);
        let sandbox = pod.id.clone();
        let id = self
            .call(|mut c| async move {
                c.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sandbox,
                    config: Some(config),
                    sandbox_config: Some(sandbox_config),
                })
                .await
            })?
            .container_id;
        let started = id.clone();
        self.call(|mut c| async move {
            c.start_container(cri::StartContainerRequest {
                container_id: started,
            })
            .await
        })?;
        Ok(id)
    }

    /// Waits until container `id` has exited (as an init container does); its exit code and the
    /// log it wrote.
    pub fn wait_container(&self, id: &str) -> (i32, String) {
        let deadline = Instant::now() + DAEMON_DEADLINE;
        loop {
            let request = cri::ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            };
            let status = self
                .call(|mut c| async move { c.container_status(request).await })
                .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
                .status
                .expect("a container status");
            if status.state == cri::ContainerState::ContainerExited as i32 {
                let log = std::fs::read_to_string(&status.log_path).unwrap_or_default();
                return (status.exit_code, log);
            }
            assert!(Instant::now() < deadline, "container {id} did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// ExecSync in a container: its exit code, stdout and stderr.
    pub fn exec(&self, container: &str, cmd: &[&str]) -> (i32, String, String) {
        let request = cri::ExecSyncRequest {
            container_id: container.to_owned(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        };
        let out = self
            .call(|mut c| async move { c.exec_sync(request).await })
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"));
        (
            out.exit_code,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// StopPodSandbox (the first CNI DEL, with the namespace).
    pub fn stop_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let id = id.to_owned();
        self.call(|mut c| async move {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    /// RemovePodSandbox (the second CNI DEL, without a namespace).
    pub fn remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let id = id.to_owned();
        self.call(|mut c| async move {
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    /// The ids of the sandboxes containerd knows, ready or not.
    pub fn sandboxes(&self) -> Vec<String> {
        self.call(|mut c| async move {
            c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await
        })
        .map(|r| r.items.into_iter().map(|s| s.id).collect())
        .unwrap_or_else(|e| panic!("ListPodSandbox: {e}"))
    }

    /// Whether sandbox `id` is ready (running with its network).
    pub fn sandbox_ready(&self, id: &str) -> bool {
        let id = id.to_owned();
        self.call(|mut c| async move {
            c.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: false,
            })
            .await
        })
        .ok()
        .and_then(|s| s.status)
        .is_some_and(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
    }

    /// The CNI configuration the CRI plugin has loaded (its Status, verbose: `cniconfig`).
    pub fn loaded_cni_config(&self) -> String {
        self.call(|mut c| async move { c.status(cri::StatusRequest { verbose: true }).await })
            .map(|s| s.info.get("cniconfig").cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Waits until the CRI plugin's loaded CNI configuration does (or does not) mention
    /// `needle`: containerd reloads the directory on its own when a file changes.
    pub fn await_cni_config(&self, needle: &str, present: bool) {
        let deadline = Instant::now() + DAEMON_DEADLINE;
        while self.loaded_cni_config().contains(needle) != present {
            assert!(
                Instant::now() < deadline,
                "containerd's CNI configuration {} {needle}:\n{}",
                if present { "never held" } else { "still holds" },
                self.loaded_cni_config()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Mounts containerd left under the node's directory (pods' namespaces, rootfs, shm).
    pub fn mounts(&self) -> Vec<String> {
        mounts_under(&self.dir)
    }

    /// Links in the node's namespace other than lo and the bridge (the pods' veths).
    pub fn veths(&self) -> Vec<String> {
        self.host
            .exec_ok(&["ip", "-o", "link", "show", "type", "veth"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Stops and removes every sandbox containerd knows (best effort, for teardown).
    fn remove_all_pods(&self) {
        let ids = match self.call(|mut c| async move {
            c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await
        }) {
            Ok(list) => list.items.into_iter().map(|s| s.id).collect::<Vec<_>>(),
            Err(_) => return,
        };
        for id in ids {
            let _ = self.stop_pod(&id);
            let _ = self.remove_pod(&id);
        }
    }
}

impl Drop for Node {
    /// Never panics (it may run while a test unwinds); see the module for the order.
    fn drop(&mut self) {
        if self.containerd.lock().map(|c| c.is_some()).unwrap_or(false) {
            self.remove_all_pods();
        }
        if let Ok(mut child) = self.containerd.lock() {
            if let Some(child) = child.take() {
                stop_process(child);
            }
        }
        teardown(&self.dir, &format!("/{PREFIX}{}", self.id));
        // `host` drops after this: what still runs in it is killed, the namespace deleted.
    }
}

/// A channel to containerd's socket that connects on first use (and again after a restart).
fn lazy_channel(socket: &Path) -> Channel {
    let socket = socket.to_owned();
    Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
}

fn containerd_config(dir: &Path, id: &str) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
# Snapshotters that cannot work here, and tracing.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
        Root = "{d}/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
# node {id}
"#
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// SIGTERM, then SIGKILL after a grace period.
fn stop_process(mut child: Child) {
    use nix::sys::signal::{Signal, kill};
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Undoes a node whose directory is `dir` and cgroup parent `cgroup` (see the module): kills
/// its containerd and shims and what runs in its pods, unmounts, removes cgroups, the shims'
/// sockets, the CNI cache entries and the directory. Best effort, never panics.
fn teardown(dir: &Path, cgroup: &str) {
    // containerd (if still running) and its shims: their command lines name a file in the
    // directory (containerd's config, the shims' `-address`). The slash keeps node 1 from
    // matching node 10.
    let dir_text = format!("{}/", dir.display());
    for pid in processes_mentioning(&dir_text) {
        kill9(pid);
    }
    for _ in 0..50 {
        let mut left = false;
        for pid in cgroup_processes(cgroup) {
            kill9(pid);
            left = true;
        }
        if !left && processes_mentioning(&dir_text).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..3 {
        let mut mounts = mounts_under(dir);
        if mounts.is_empty() {
            break;
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            // Lazily: a mount still busy goes as soon as its last user does.
            let _ = Command::new("umount")
                .args(["--lazy", &m])
                .stderr(Stdio::null())
                .status();
        }
    }
    remove_cgroups(cgroup);
    // The shims' sockets, named in their bundles (state/io.containerd.runtime.v2.task/NS/ID).
    let bundles = dir.join("state/io.containerd.runtime.v2.task");
    for ns in read_dir_paths(&bundles) {
        for bundle in read_dir_paths(&ns) {
            if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
                let socket = address.trim().trim_start_matches("unix://");
                if socket.starts_with(SHIM_SOCKET_DIR) {
                    let _ = std::fs::remove_file(socket);
                }
            }
        }
    }
    // libcni's cached results of the node's sandboxes.
    let sandboxes: Vec<String> =
        read_dir_paths(&dir.join("root/io.containerd.grpc.v1.cri/sandboxes"))
            .iter()
            .chain(read_dir_paths(&dir.join("state/io.containerd.grpc.v1.cri/sandboxes")).iter())
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
    for entry in read_dir_paths(Path::new(CNI_RESULTS_DIR)) {
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if sandboxes.iter().any(|id| name.contains(&format!("-{id}-"))) {
            let _ = std::fs::remove_file(&entry);
        }
    }
    // The shims' socket directory and libcni's cache, when they were made for this node and are
    // now empty (remove_dir fails on a directory that holds anything; both are made again on
    // demand).
    for made in [SHIM_SOCKET_DIR, CNI_RESULTS_DIR] {
        let _ = std::fs::remove_dir(made);
        let _ = std::fs::remove_dir(Path::new(made).parent().expect("parent"));
    }
    if mounts_under(dir).is_empty() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Undoes the nodes of test processes that are gone (killed before their drop ran).
pub fn remove_stale() {
    let alive = |name: &str| -> bool {
        name.strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
            .is_none_or(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
    };
    for entry in read_dir_paths(&std::env::temp_dir()) {
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(PREFIX) && !alive(&name) {
            teardown(&entry, &format!("/{name}"));
        }
    }
    // Cgroup parents whose directory is already gone.
    for root in cgroup_roots() {
        for entry in read_dir_paths(&root) {
            let name = entry
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with(PREFIX) && !alive(&name) {
                for pid in cgroup_processes(&format!("/{name}")) {
                    kill9(pid);
                }
                remove_cgroups(&format!("/{name}"));
            }
        }
    }
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn read_dir_paths(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Processes (not this one) whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    read_dir_paths(Path::new("/proc"))
        .into_iter()
        .filter_map(|p| {
            let pid: i32 = p.file_name()?.to_str()?.parse().ok()?;
            let cmdline = std::fs::read(p.join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (pid != me && cmdline.contains(needle)).then_some(pid)
        })
        .collect()
}

/// The mount points at or under `dir`, from this process's mount table.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounted cgroup hierarchies: /sys/fs/cgroup itself (v2) or each controller's (v1).
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.procs").exists() {
        return vec![base.to_owned()];
    }
    let mut roots: Vec<PathBuf> = read_dir_paths(base)
        .into_iter()
        .filter(|p| p.join("cgroup.procs").exists())
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    roots.sort();
    roots.dedup();
    roots
}

/// Every cgroup at or below `cgroup` in every hierarchy, deepest first.
fn cgroups_below(cgroup: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for sub in read_dir_paths(dir) {
            if sub.is_dir() {
                walk(&sub, out);
            }
        }
        out.push(dir.to_owned());
    }
    let mut out = Vec::new();
    for root in cgroup_roots() {
        let top = root.join(cgroup.trim_start_matches('/'));
        if top.is_dir() {
            walk(&top, &mut out);
        }
    }
    out
}

fn cgroup_processes(cgroup: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = cgroups_below(cgroup)
        .iter()
        .filter_map(|c| std::fs::read_to_string(c.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn remove_cgroups(cgroup: &str) {
    for _ in 0..20 {
        let left = cgroups_below(cgroup);
        if left.is_empty() {
            return;
        }
        for c in left {
            let _ = std::fs::remove_dir(&c);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Output helper for failure messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
