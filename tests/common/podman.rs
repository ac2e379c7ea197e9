//! Podman for end-to-end tests: a throwaway "host" network namespace in which Podman runs with
//! its CNI backend, on a bridge network of a documentation range, with images built from local
//! directories (no registry is reachable).
//!
//! [`Podman::new`] creates
//! * a namespace `meshcap-podman-…` (netns-test-harness) that plays the node: the bridge, the
//!   veths and the host side of every pod live there, never in the machine's own namespace;
//! * a temporary directory with a `containers.conf` (named by `CONTAINERS_CONF` for every podman
//!   command the fixture runs) selecting the CNI backend, runc, cgroupfs, the ulimits this kernel
//!   needs, a private events log and a busybox pause image for pods;
//! * a CNI configuration directory with one network ([`Podman::network`]) on [`SUBNET`] whose
//!   configuration list chains `bridge` + `host-local` + the caller's extra plugin stanzas, and an
//!   extra plugin directory ([`Podman::plugin_dir`]) searched after Debian's `/usr/lib/cni`.
//!
//! Podman runs as `nsenter --net=/run/netns/NAME podman --runtime runc --cgroup-manager cgroupfs
//! …` (`ip netns exec` would remount /sys and hide the cgroup mounts runc needs).
//!
//! Dropping the fixture (also while a test panics) removes every pod and container on its
//! networks or started through it, its networks, the images it built or was told about
//! ([`Podman::track_image`]), the namespace and the directory. Podman's storage is the machine's
//! root storage; nothing of a test stays in it.
//!
//! A run killed before the drop leaves its directory behind; the next [`Podman::new`] removes
//! what that run left.
//!
//! Skips: without root, or without podman, [`Podman::new`] reports the test as skipped
//! (`netns_test_harness::skip`: `SKIP: test: reason`) and returns `None`; with
//! `MESHCAP_REQUIRE_NETNS=1` it panics instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use netns_test_harness::Netns;
use netns_test_harness::skip::Need;
use serde_json::{Value, json};

/// The test network's range (documentation, TEST-NET-2) and the bridge's own address in it.
pub const SUBNET: &str = "198.51.100.0/24";
pub const GATEWAY: &str = "198.51.100.1";

/// The global podman flags this machine needs (also set in the containers.conf).
pub const PODMAN_FLAGS: [&str; 4] = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"];

/// `podman run` flags for the limits runc must set on this kernel (the containers.conf sets them
/// as defaults too, which is what `podman kube play` uses).
pub const RUN_FLAGS: [&str; 4] = [
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=4096:4096",
];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The repository of the pause image Podman builds itself (from catatonit).
const PODMANS_PAUSE: &str = "localhost/podman-pause";

/// The network `podman kube play` uses without `--network`.
const KUBE_DEFAULT_NETWORK: &str = "podman-default-kube-network";

/// Reports `test` as skipped (`SKIP: test: reason`, counted by scripts/test.sh) and returns
/// false, or panics under `MESHCAP_REQUIRE_NETNS=1`.
fn skip(test: &str, reason: &str) -> bool {
    netns_test_harness::skip::skip(test, Need::Root, reason);
    false
}

/// Whether Podman tests can run here; prints why not (or panics, see the module).
pub fn available(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return skip(
            test,
            "needs root (network namespaces, podman's root storage)",
        );
    }
    let found = Command::new("podman")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        return skip(
            test,
            "podman is not installed (scripts/setup.sh installs it)",
        );
    }
    true
}

/// Removes what fixtures of test processes that are gone (killed before their drop ran) left:
/// their directory `meshcap-podman-<pid>-<n>` still names their configuration, so a fixture
/// rebuilt around it (in a fresh namespace) finds their pods, containers and `:<pid>-<n>`
/// images and drops them.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("meshcap-podman-") else {
            continue;
        };
        let pid = id.split('-').next().and_then(|p| p.parse::<i32>().ok());
        let alive = |pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if pid.is_none_or(alive) || !entry.path().join("containers.conf").is_file() {
            continue;
        }
        let stale = Podman {
            id: id.to_owned(),
            dir: entry.path(),
            made: Mutex::new(Made::default()),
            pause_built: Mutex::new(false),
            user_defaults: false,
            host: Netns::new("podstale"),
        };
        let listing = stale.run(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        let mut made = stale.made.lock().unwrap();
        made.networks.push(stale.network());
        made.images.extend(
            String::from_utf8_lossy(&listing.stdout)
                .lines()
                .filter(|t| {
                    t.starts_with("localhost/meshcap-test-") && t.ends_with(&format!(":{id}"))
                })
                .map(str::to_owned),
        );
        drop(made);
        drop(stale);
    }
}

/// What the fixture made and must remove.
#[derive(Default)]
struct Made {
    networks: Vec<String>,
    pods: Vec<String>,
    containers: Vec<String>,
    images: Vec<String>,
    /// With Podman's own pause image: the pause images there were before the fixture.
    pause_images_before: Option<Vec<String>>,
}

/// Podman in a throwaway namespace; see the module documentation.
pub struct Podman {
    /// Unique per fixture: `<pid>-<n>`; names of networks and images carry it.
    id: String,
    dir: PathBuf,
    made: Mutex<Made>,
    pause_built: Mutex<bool>,
    /// A user's defaults (see [`Podman::with_user_defaults`]).
    user_defaults: bool,
    // Dropped last (fields drop in order): the namespace outlives the pods inside it.
    host: Netns,
}

impl Podman {
    /// A fixture whose network chains `bridge` + `host-local` + `extra_plugins` (each a CNI
    /// plugin stanza, e.g. `{"type": "meshcap-cni", "capture": {…}}`). `None`: skipped.
    pub fn new(test: &str, extra_plugins: &[Value]) -> Option<Podman> {
        Podman::create(test, extra_plugins, false)
    }

    /// A fixture with a user's defaults, for commands run as a user would type them: pods use
    /// Podman's own pause image (built by Podman from catatonit on first use) instead of the
    /// fixture's busybox one, and the fixture's network is the one `podman kube play` picks
    /// without `--network` (Podman's "podman-default-kube-network", here on [`SUBNET`]). A
    /// pause image Podman builds meanwhile is removed on drop unless it existed before. Pods
    /// on that network are removed only when tracked ([`Podman::track_pod`]): the name is not
    /// the fixture's own.
    pub fn with_user_defaults(test: &str) -> Option<Podman> {
        let podman = Podman::create(test, &[], true)?;
        let before = podman.image_tags(PODMANS_PAUSE);
        podman.made.lock().unwrap().pause_images_before = Some(before);
        Some(podman)
    }

    fn create(test: &str, extra_plugins: &[Value], user_defaults: bool) -> Option<Podman> {
        if !available(test) {
            return None;
        }
        remove_stale();
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("meshcap-podman-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["net", "plugins", "cni-data"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create the fixture's directories");
        }
        let podman = Podman {
            host: Netns::new("podman"),
            made: Mutex::new(Made::default()),
            pause_built: Mutex::new(false),
            user_defaults,
            id,
            dir,
        };
        let network = podman.network();
        std::fs::write(
            podman.dir.join("containers.conf"),
            podman.containers_conf(&network),
        )
        .expect("write containers.conf");
        podman.add_network(&network, extra_plugins);
        Some(podman)
    }

    /// The namespace playing the node: the bridge ([`GATEWAY`]) is there; a test reaches pods
    /// from it (`host().thread(…)`, `host().exec(…)`).
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// The name of the network made by [`Podman::new`] (also Podman's default network here).
    pub fn network(&self) -> String {
        match self.user_defaults {
            true => KUBE_DEFAULT_NETWORK.to_owned(),
            false => format!("meshcap-test-{}", self.id),
        }
    }

    /// The fixture's temporary directory (removed on drop); callers may stage files in it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The extra CNI plugin directory (after `/usr/lib/cni`): put `meshcap-cni` here.
    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.join("plugins")
    }

    /// Adds a network `name` on [`SUBNET`] (in its own bridge, so only one such network should
    /// hold running containers at a time) chaining `bridge` + `host-local` + `extra_plugins`.
    pub fn add_network(&self, name: &str, extra_plugins: &[Value]) {
        let n = self.made.lock().unwrap().networks.len();
        let data = self.dir.join("cni-data");
        let mut plugins = vec![json!({
            "type": "bridge",
            "bridge": format!("mcbr{n}"),
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                // Address leases stay in the fixture's directory, not in /var/lib/cni.
                "dataDir": data,
                "routes": [{"dst": "0.0.0.0/0"}],
                "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]]
            }
        })];
        plugins.extend(extra_plugins.iter().cloned());
        let conflist = json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins});
        std::fs::write(
            self.dir.join("net").join(format!("{name}.conflist")),
            serde_json::to_string_pretty(&conflist).expect("conflist JSON"),
        )
        .expect("write the conflist");
        self.made.lock().unwrap().networks.push(name.to_owned());
    }

    fn containers_conf(&self, network: &str) -> String {
        let q = |p: PathBuf| format!("{:?}", p.display().to_string());
        format!(
            "[containers]\n\
             default_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
             \n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [\"/usr/lib/cni\", {plugins}]\n\
             network_config_dir = {net}\n\
             default_network = {network:?}\n\
             \n\
             [engine]\n\
             runtime = \"runc\"\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = {events}\n\
             {pause}",
            plugins = q(self.plugin_dir()),
            net = q(self.dir.join("net")),
            events = q(self.dir.join("events.log")),
            pause = match self.user_defaults {
                true => String::new(),
                false => format!("infra_image = {:?}\n", self.pause_tag()),
            },
        )
    }

    /// `podman <PODMAN_FLAGS> args…` inside the host namespace with the fixture's configuration.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.host.path().display()))
            .arg("podman")
            .args(PODMAN_FLAGS)
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs podman; returns its output whatever its status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("spawn podman {args:?}: {e}"))
    }

    /// Runs podman; panics with its output unless it succeeds. Returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {}: {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the shell script `script` (`sh -ec`) in `dir`, in the host namespace, where a plain
    /// `podman` uses the fixture's configuration; returns its output whatever its status.
    pub fn shell(&self, script: &str, dir: &Path) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.host.path().display()))
            .args(["sh", "-ec", script])
            .current_dir(dir)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("spawn sh")
    }

    /// Removes `name` (a container started with `podman run --name`) on drop.
    pub fn track_container(&self, name: &str) {
        self.made.lock().unwrap().containers.push(name.to_owned());
    }

    /// The tags of the images in the storage whose repository is `repository`
    /// (`localhost/meshcap`), as `repository:tag`; none when podman fails (never panics: the
    /// drop uses it).
    pub fn image_tags(&self, repository: &str) -> Vec<String> {
        let out = self.run(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|t| t.split_once(':').is_some_and(|(r, _)| r == repository))
            .map(str::to_owned)
            .collect()
    }

    /// Removes the pod `name` (and its containers) on drop.
    pub fn track_pod(&self, name: &str) {
        self.made.lock().unwrap().pods.push(name.to_owned());
    }

    /// The names of the pods whose name contains `name`; none when podman fails.
    pub fn pods_named(&self, name: &str) -> Vec<String> {
        let filter = format!("name={name}");
        let out = self.run(&["pod", "ps", "--format", "{{.Name}}", "--filter", &filter]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Removes the image `tag` on drop (an image built outside [`Podman::build_image`]).
    pub fn track_image(&self, tag: &str) {
        self.made.lock().unwrap().images.push(tag.to_owned());
    }

    /// A fresh image tag `localhost/meshcap-test-NAME:<pid>-<n>`, removed on drop.
    pub fn image_tag(&self, name: &str) -> String {
        let tag = format!("localhost/meshcap-test-{name}:{}", self.id);
        self.track_image(&tag);
        tag
    }

    /// Builds an image holding exactly the tree `root` (on `scratch`), with `entrypoint`, and
    /// returns its tag (see [`Podman::image_tag`]).
    pub fn build_image(&self, name: &str, root: &Path, entrypoint: &[&str]) -> String {
        let tag = self.image_tag(name);
        self.build(&tag, root, entrypoint);
        tag
    }

    /// Builds an image of `busybox` (Debian's static one) alone, at /bin/busybox, with
    /// `entrypoint`; returns its tag.
    pub fn busybox_image(&self, name: &str, entrypoint: &[&str]) -> String {
        let root = self.busybox_root(name);
        self.build_image(name, &root, entrypoint)
    }

    /// A directory `NAME-root` in the fixture's directory holding /bin/busybox; callers may add
    /// files before building an image of it.
    pub fn busybox_root(&self, name: &str) -> PathBuf {
        let root = self.dir.join(format!("{name}-root"));
        std::fs::create_dir_all(root.join("bin")).expect("create the image root");
        std::fs::copy("/usr/bin/busybox", root.join("bin/busybox"))
            .expect("copy /usr/bin/busybox (busybox-static)");
        root
    }

    fn build(&self, tag: &str, root: &Path, entrypoint: &[&str]) {
        let containerfile = self
            .dir
            .join(format!("Containerfile.{}", self.made_count()));
        std::fs::write(
            &containerfile,
            format!(
                "FROM scratch\nCOPY . /\nENTRYPOINT {}\n",
                serde_json::to_string(entrypoint).expect("JSON")
            ),
        )
        .expect("write the Containerfile");
        let file = containerfile.display().to_string();
        let root = root.display().to_string();
        // --layers=false: no intermediate images to leave behind.
        self.ok(&[
            "build",
            "--quiet",
            "--layers=false",
            "-f",
            &file,
            "-t",
            tag,
            &root,
        ]);
    }

    fn made_count(&self) -> usize {
        self.made.lock().unwrap().images.len()
    }

    fn pause_tag(&self) -> String {
        format!("localhost/meshcap-test-pause:{}", self.id)
    }

    /// The pods' infra ("pause") image, built once per fixture from Debian's static busybox and
    /// removed with it (Podman's own, built from catatonit, would stay in the storage; see
    /// [`Podman::with_user_defaults`] for a fixture that uses it).
    fn ensure_pause_image(&self) {
        let mut built = self.pause_built.lock().unwrap();
        if !*built && !self.user_defaults {
            let tag = self.pause_tag();
            self.track_image(&tag);
            let root = self.busybox_root("pause");
            self.build(&tag, &root, &["/bin/busybox", "sleep", "2147483647"]);
            *built = true;
        }
    }

    /// `podman kube play --network NETWORK` of `yaml` (written to the fixture's directory as
    /// `file_name`). Returns podman's output whatever its status; the pods it created are
    /// removed on drop in any case.
    pub fn kube_play(&self, file_name: &str, yaml: &str) -> Output {
        self.ensure_pause_image();
        let file = self.dir.join(file_name);
        std::fs::write(&file, yaml).expect("write the kube file");
        let network = self.network();
        let out = self.run(&[
            "kube",
            "play",
            "--network",
            &network,
            &file.display().to_string(),
        ]);
        // Output: "Pod:\n<id>\nContainer:\n<id>…"; the pod ids are tracked for removal.
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim() == "Pod:"
                && let Some(id) = lines.next()
            {
                self.made.lock().unwrap().pods.push(id.trim().to_owned());
            }
        }
        out
    }

    /// [`Podman::kube_play`], panicking unless it succeeds.
    pub fn kube_play_ok(&self, file_name: &str, yaml: &str) {
        let out = self.kube_play(file_name, yaml);
        assert!(
            out.status.success(),
            "podman kube play {file_name}: {}\n{}{}\n{yaml}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The IPv4 address of a pod (its infra container) on the fixture's network.
    pub fn pod_ip(&self, pod: &str) -> std::net::Ipv4Addr {
        let infra = self.ok(&["pod", "inspect", "--format", "{{.InfraContainerID}}", pod]);
        self.container_ip(infra.trim())
    }

    /// The IPv4 address of a container on the fixture's network.
    pub fn container_ip(&self, container: &str) -> std::net::Ipv4Addr {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks {:?}).IPAddress}}}}",
            self.network()
        );
        let ip = self.ok(&["inspect", "--format", &format, container]);
        ip.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{container} has no address on the network: {ip:?}"))
    }

    /// The events Podman logged for the container `name` (e.g. `["init", "start", "died", …]`),
    /// also after it was removed. From the fixture's private events log.
    pub fn events(&self, name: &str) -> Vec<String> {
        self.event_fields(name, None, "{{.Status}}")
    }

    /// The exit codes of the container `name`'s runs (its `died` events), also after it was
    /// removed.
    pub fn exit_codes(&self, name: &str) -> Vec<i64> {
        self.event_fields(name, Some("died"), "{{.ContainerExitCode}}")
            .iter()
            .map(|code| code.parse().expect("an exit code"))
            .collect()
    }

    /// `format` of each event of the container `name` (only `event` events with `Some`).
    fn event_fields(&self, name: &str, event: Option<&str>, format: &str) -> Vec<String> {
        let mut args = vec![
            "events".to_owned(),
            "--stream=false".to_owned(),
            "--filter".to_owned(),
            format!("container={name}"),
        ];
        if let Some(event) = event {
            args.extend(["--filter".to_owned(), format!("event={event}")]);
        }
        args.extend(["--format".to_owned(), format.to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&args)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Ids of the pods and containers attached to one of the fixture's networks.
    fn attached(&self, networks: &[String]) -> (Vec<String>, Vec<String>) {
        let ids = |args: &[&str]| -> Vec<String> {
            let out = self.run(args);
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let (mut pods, mut containers) = (Vec::new(), Vec::new());
        for network in networks {
            let filter = format!("network={network}");
            pods.extend(ids(&["pod", "ps", "-q", "--no-trunc", "--filter", &filter]));
            containers.extend(ids(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter]));
        }
        (pods, containers)
    }
}

/// The app of the pod tests: a file tree serving `/cgi-bin/peer` (the address the connection
/// came from, as busybox httpd tells its CGI scripts) under `/www`.
pub fn stage_www(root: &Path) {
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

/// The `meshcap-cni` stanzas of deploy/meshcap-cni.conflist (exactly one).
pub fn deploy_cni_stanzas() -> Vec<Value> {
    let text = std::fs::read_to_string(super::repo().join("deploy/meshcap-cni.conflist")).unwrap();
    let conflist: Value = serde_json::from_str(&text).expect("conflist JSON");
    let stanzas: Vec<Value> = conflist["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter(|p| p["type"] == "meshcap-cni")
        .cloned()
        .collect();
    assert_eq!(stanzas.len(), 1, "{text}");
    stanzas
}

impl Podman {
    /// A fixture whose network chains meshcap-cni with the stanza of
    /// deploy/meshcap-cni.conflist, the test binary under the plugin's name in the plugin
    /// directory. `None`: skipped.
    pub fn with_meshcap_cni(test: &str) -> Option<Podman> {
        let podman = Podman::new(test, &deploy_cni_stanzas())?;
        std::os::unix::fs::symlink(super::MESHCAP, podman.plugin_dir().join("meshcap-cni"))
            .unwrap();
        Some(podman)
    }

    /// The app image of the pod tests: busybox httpd serving [`stage_www`]'s tree on `port`.
    /// Returns its tag and the staged root (whose `www` an upstream server may serve too).
    pub fn app_image(&self, port: u16) -> (String, PathBuf) {
        let root = self.busybox_root("app");
        stage_www(&root);
        let port = port.to_string();
        let tag = self.build_image(
            "app",
            &root,
            &["/bin/busybox", "httpd", "-f", "-p", &port, "-h", "/www"],
        );
        (tag, root)
    }

    /// meshcap's image, built from the test binary by deploy/build-image.sh (what `make image`
    /// runs), the nftables-only one with `nftables_only`; returns its tag.
    pub fn meshcap_image(&self, nftables_only: bool) -> String {
        let tag = self.image_tag("meshcap");
        let mut build = Command::new(super::repo().join("deploy/build-image.sh"));
        if nftables_only {
            build.arg("--nftables-only");
        }
        let out = build.arg(&tag).arg(super::MESHCAP).output().unwrap();
        assert!(
            out.status.success(),
            "deploy/build-image.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tag
    }

    /// The name of the one pod whose name contains `name` (a Deployment's pod is named after it).
    pub fn pod_named(&self, name: &str) -> String {
        let pod = self
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
        pod
    }

    /// The path of the network namespace of `pod` (its infra container's sandbox).
    pub fn pod_netns(&self, pod: &str) -> String {
        let infra = self.ok(&["pod", "inspect", "--format", "{{.InfraContainerID}}", pod]);
        self.ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
            infra.trim(),
        ])
        .trim()
        .to_owned()
    }

    /// `GET path` on `addr` from the host namespace (outside every pod): the body.
    pub fn get_from_host(&self, addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
        let path = path.to_owned();
        self.host().run(move || super::http_get(addr, &path))
    }

    /// `GET path` on `host:port` from inside `container` (busybox nc), as its own user or as
    /// `user`: the body. (Debian's static busybox `wget` crashes.)
    pub fn exec_get(
        &self,
        container: &str,
        user: Option<&str>,
        host: &str,
        port: u16,
        path: &str,
    ) -> Result<String, String> {
        let script = format!(
            "printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 10 {host} {port}"
        );
        let mut args = vec!["exec"];
        if let Some(user) = user {
            args.extend(["--user", user]);
        }
        args.extend([container, "/bin/busybox", "sh", "-c", &script]);
        let out = self.run(&args);
        let what = format!("GET {host}:{port}{path} in {container} as {user:?}");
        if !out.status.success() {
            return Err(format!(
                "{what}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        super::http_body(&what, &String::from_utf8_lossy(&out.stdout))
    }

    /// The logs of the containers `names` and the pod listing, for failure messages.
    pub fn logs(&self, names: &[String]) -> String {
        let mut text = self.ok(&["ps", "-a", "--pod"]);
        for name in names {
            let out = self.run(&["logs", name]);
            text.push_str(&format!(
                "--- {name}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        text
    }
}

impl Drop for Podman {
    /// Never panics (it may run while a test unwinds); everything is best effort and ordered:
    /// pods and containers, networks, images; then the namespace and the directory.
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap_or_else(|e| e.into_inner()));
        // A network name that is not the fixture's own may hold others' pods.
        let own: Vec<String> = made
            .networks
            .iter()
            .filter(|n| n.as_str() != KUBE_DEFAULT_NETWORK)
            .cloned()
            .collect();
        let (mut pods, mut containers) = self.attached(&own);
        pods.extend(made.pods);
        containers.extend(made.containers);
        let quiet = |args: &[&str]| {
            let _ = self
                .command(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        for pod in &pods {
            quiet(&["pod", "rm", "--force", "--ignore", "--time", "0", pod]);
        }
        for container in &containers {
            quiet(&["rm", "--force", "--ignore", "--time", "0", container]);
        }
        // The default network cannot be removed through podman; its file goes with the directory.
        let default = self.network();
        for network in made.networks.iter().filter(|n| **n != default) {
            quiet(&["network", "rm", "--force", network]);
        }
        let mut images = made.images;
        if let Some(before) = made.pause_images_before {
            let now = self.image_tags(PODMANS_PAUSE);
            images.extend(now.into_iter().filter(|t| !before.contains(t)));
        }
        for image in &images {
            quiet(&["rmi", "--force", "--ignore", image]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // `host` drops after this: what still runs in it is killed, the namespace deleted.
    }
}
