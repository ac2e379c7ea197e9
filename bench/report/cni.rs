//! CNI mode's cost as a share of a pod's network set-up: the `ADD` of Debian's bridge plugin
//! (with host-local) against meshcap-cni's `ADD` chained after it and its `DEL`, each into a
//! fresh pod namespace, every plugin run as a runtime runs it (`nsenter --net=HOST PLUGIN`, the
//! CNI variables, the configuration on stdin); and 20 `ADD`s into 20 namespaces at once against
//! 20 in a row. The meshcap binary is the static release binary `make build` ships.

use crate::Settings;
use crate::apiserver::{ApiServer, CaForm, Credential, Fault};
use crate::standin::Ztunnel;
use crate::stats::{self, Summary};
use netns_test_harness::Netns;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// Debian's containernetworking-plugins.
const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// What one timed plugin command is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// bridge + host-local's ADD (the median of the round's bridge ADDs, one per pod).
    Bridge,
    /// meshcap-cni's ADD after it, with this backend and list length.
    Meshcap { nftables: bool, n: usize },
    /// meshcap-cni's DEL of what that ADD installed (the runtime's DEL runs it first).
    Del { nftables: bool, n: usize },
    /// meshcap-cni's ADD of an ambient pod: the plugin's lookups (pod, namespace), the agent's
    /// rules (iptables) and probe set, the stand-in's ack, the pod's annotation.
    Ambient,
}

impl Step {
    pub fn label(self) -> String {
        let backend = |nftables: bool| {
            if nftables {
                "nftables (netlink)"
            } else {
                "iptables (iptables-restore)"
            }
        };
        match self {
            Step::Bridge => "bridge + host-local".into(),
            Step::Meshcap { nftables, .. } => format!("meshcap-cni, {}", backend(nftables)),
            Step::Del { nftables, .. } => format!("meshcap-cni DEL, {}", backend(nftables)),
            Step::Ambient => "ambient ADD (plugin → agent → rules → stand-in ack)".into(),
        }
    }

    /// The DEL of a meshcap-cni ADD step.
    pub fn del(self) -> Option<Step> {
        match self {
            Step::Meshcap { nftables, n } => Some(Step::Del { nftables, n }),
            _ => None,
        }
    }
}

/// The meshcap-cni steps, in the order a round takes them.
pub const STEPS: [Step; 4] = [
    Step::Meshcap {
        nftables: true,
        n: 0,
    },
    Step::Meshcap {
        nftables: false,
        n: 0,
    },
    Step::Meshcap {
        nftables: true,
        n: 1000,
    },
    Step::Meshcap {
        nftables: false,
        n: 1000,
    },
];

pub struct Series {
    pub step: Step,
    /// (round, seconds).
    pub samples: Vec<(usize, f64)>,
    pub summary: Option<Summary>,
}

/// 20 ADDs at once against 20 in a row, one backend.
pub struct Burst {
    pub nftables: bool,
    pub pods: usize,
    /// Wall time of all ADDs started at once (median over rounds).
    pub parallel: Option<Summary>,
    /// Wall time of the same ADDs one after the other.
    pub sequential: Option<Summary>,
}

pub struct CniBench {
    pub series: Vec<Series>,
    pub bursts: Vec<Burst>,
    pub samples: usize,
    /// Why something is missing.
    pub errors: Vec<String>,
}

impl CniBench {
    pub fn get(&self, step: Step) -> Option<&Series> {
        self.series.iter().find(|s| s.step == step)
    }

    /// A meshcap-cni command's time over bridge's ADD, paired by round.
    pub fn ratio_to_bridge(&self, step: Step) -> Option<Summary> {
        stats::paired(&self.get(step)?.samples, &self.get(Step::Bridge)?.samples)
    }

    /// A DEL step's time over its ADD's, paired by round.
    pub fn del_to_add(&self, add: Step) -> Option<Summary> {
        stats::paired(&self.get(add.del()?)?.samples, &self.get(add)?.samples)
    }
}

/// A node: a throwaway host namespace with a plugin directory and host-local's state.
struct Node {
    host: Netns,
    dir: PathBuf,
    bridge: String,
}

impl Node {
    fn new(settings: &Settings, tag: &str) -> Node {
        let dir = settings.scratch.join(format!("cni-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).expect("cni scratch");
        std::os::unix::fs::symlink(&settings.meshcap, dir.join("bin/meshcap-cni"))
            .expect("meshcap-cni symlink");
        Node {
            host: Netns::new("cnibench"),
            bridge: format!("mcbb{}", std::process::id() % 100_000),
            dir,
        }
    }

    fn bridge_conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "bridge",
            "bridge": self.bridge, "isGateway": true,
            "ipam": {"type": "host-local", "subnet": "198.51.100.0/24",
                     "dataDir": self.dir.join("ipam").display().to_string()}
        })
    }

    fn command(&self, plugin: &Path, pod: &Netns, container: &str, cmd: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.host.path().display()))
            .arg(plugin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_PATH",
                format!("{}:{DEBIAN_CNI_DIR}", self.dir.join("bin").display()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn spawn(
        &self,
        plugin: &Path,
        pod: &Netns,
        id: &str,
        cmd: &str,
        conf: &Value,
    ) -> std::process::Child {
        let mut child = self
            .command(plugin, pod, id, cmd)
            .spawn()
            .expect("spawn nsenter");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("plugin stdin");
        child
    }

    /// Runs one plugin command; its output and wall time.
    fn timed(
        &self,
        plugin: &Path,
        pod: &Netns,
        id: &str,
        cmd: &str,
        conf: &Value,
    ) -> Result<(Value, f64), String> {
        let start = Instant::now();
        let out = self.spawn(plugin, pod, id, cmd, conf).wait_with_output();
        let secs = start.elapsed().as_secs_f64();
        let out = out.map_err(|e| e.to_string())?;
        parse(&out, plugin).map(|v| (v, secs))
    }

    fn bridge_add(&self, pod: &Netns, id: &str) -> Result<(Value, f64), String> {
        let plugin = Path::new(DEBIAN_CNI_DIR).join("bridge");
        self.timed(&plugin, pod, id, "ADD", &self.bridge_conf())
    }

    fn meshcap_conf(nftables: bool, n: usize, prev: &Value) -> Value {
        let mut capture = json!({"backend": if nftables { "nftables" } else { "iptables" }});
        if n > 0 {
            capture["istio-local-exclude-ports"] = json!(stats::ports(n, None).join(","));
            capture["istio-service-exclude-cidr"] = json!(stats::cidrs(n, None).join(","));
        }
        json!({"cniVersion": "1.0.0", "name": "bench", "type": "meshcap-cni",
               "capture": capture, "prevResult": prev})
    }

    fn meshcap(&self) -> PathBuf {
        self.dir.join("bin/meshcap-cni")
    }
}

fn parse(out: &Output, plugin: &Path) -> Result<Value, String> {
    if !out.status.success() {
        return Err(format!(
            "{} failed: {} {}",
            plugin.display(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if out.stdout.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{}: {e}", plugin.display()))
}

/// One round: a fresh node, a warm-up ADD (the bridge device exists afterwards, as on a node
/// that runs pods), then per step a fresh pod: bridge's ADD, meshcap-cni's ADD, both timed, a
/// CHECK (untimed) and meshcap-cni's DEL, timed.
/// An ambient ADD that fails is kept in `soft` and leaves the round's other steps measured.
fn round(
    settings: &Settings,
    r: usize,
    soft: &mut Vec<String>,
) -> Result<Vec<(Step, f64)>, String> {
    let node = Node::new(settings, &format!("round{r}"));
    let warm = Netns::new("cnibench");
    node.bridge_add(&warm, "warm")?;
    let mut got = Vec::new();
    let mut bridge = Vec::new();
    for (i, step) in STEPS.into_iter().enumerate() {
        let Step::Meshcap { nftables, n } = step else {
            unreachable!()
        };
        let pod = Netns::new("cnibench");
        let id = format!("pod{i}");
        let (prev, secs) = node.bridge_add(&pod, &id)?;
        bridge.push(secs);
        let conf = Node::meshcap_conf(nftables, n, &prev);
        let (_, secs) = node.timed(&node.meshcap(), &pod, &id, "ADD", &conf)?;
        node.timed(&node.meshcap(), &pod, &id, "CHECK", &conf)
            .map_err(|e| format!("{}: the installed rules do not check: {e}", step.label()))?;
        got.push((step, secs));
        let mut del_conf = conf.clone();
        del_conf.as_object_mut().expect("conf").remove("prevResult");
        let (_, secs) = node.timed(&node.meshcap(), &pod, &id, "DEL", &del_conf)?;
        got.push((step.del().expect("a meshcap step"), secs));
    }
    match ambient_add(&node, r) {
        Ok(secs) => got.push((Step::Ambient, secs)),
        Err(e) => {
            eprintln!("cni: round {r}: {e}");
            if !soft.contains(&e) {
                soft.push(e);
            }
        }
    }
    got.push((
        Step::Bridge,
        Summary::of(&bridge).expect("bridge samples").median,
    ));
    Ok(got)
}

/// The ambient pod's namespace and name in the bench's API server.
const AMBIENT_NS: &str = "bench";
const AMBIENT_POD: &str = "ambient-0";

/// One ambient ADD on `node`: an API server on its loopback serving the pod and its
/// `istio.io/dataplane-mode=ambient` namespace, the agent in its namespace, the ztunnel stand-in
/// connected; a fresh pod with bridge's ADD (untimed), meshcap-cni's ADD (timed), its DEL
/// (untimed). Everything stops before this returns.
fn ambient_add(node: &Node, r: usize) -> Result<f64, String> {
    let api = ApiServer::start_in(&node.host, Fault::None);
    api.serve_namespace(AMBIENT_NS, json!({"istio.io/dataplane-mode": "ambient"}));
    let uid = format!("00000000-0000-4000-8000-{r:012}");
    api.serve_pod(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": AMBIENT_POD, "namespace": AMBIENT_NS, "uid": uid},
        "spec": {"containers": [{"name": "app"}]},
    }));
    let kubeconfig = api.kubeconfig(CaForm::Data, Credential::Token);
    let dir = node.dir.join("ambient");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (zds, control) = (dir.join("ztunnel.sock"), dir.join("ambient.sock"));
    let meshcap = std::fs::read_link(node.meshcap()).map_err(|e| e.to_string())?;
    let agent = node.host.spawn(
        &[
            meshcap.to_str().expect("a UTF-8 path"),
            "ambient",
            "agent",
            "--zds-socket",
            zds.to_str().expect("a UTF-8 path"),
            "--control-socket",
            control.to_str().expect("a UTF-8 path"),
            "--state-dir",
            dir.join("state").to_str().expect("a UTF-8 path"),
        ],
        None,
    );
    let ztunnel = Ztunnel::start(zds);
    let result = (|| {
        for _ in 0..500 {
            if control.exists() && !ztunnel.log().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if ztunnel.log().is_empty() {
            return Err("the ambient agent did not start or ztunnel did not connect".to_owned());
        }
        let pod = Netns::new("cnibench");
        let id = "ambient";
        let (prev, _) = node.bridge_add(&pod, id)?;
        let conf = json!({"cniVersion": "1.0.0", "name": "bench", "type": "meshcap-cni",
            "kubernetes": {"kubeconfig": kubeconfig.display().to_string()},
            "ambient": {"enabled": true, "control_socket": control.display().to_string()},
            "prevResult": prev});
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={AMBIENT_NS};K8S_POD_NAME={AMBIENT_POD};K8S_POD_UID={uid}"
        );
        let run = |cmd: &str, conf: &Value| {
            let mut command = node.command(&node.meshcap(), &pod, id, cmd);
            command.env("CNI_ARGS", &args);
            let start = Instant::now();
            let mut child = command.spawn().map_err(|e| e.to_string())?;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(conf.to_string().as_bytes())
                .map_err(|e| e.to_string())?;
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            let secs = start.elapsed().as_secs_f64();
            parse(&out, &node.meshcap()).map(|_| secs)
        };
        let secs = run("ADD", &conf)?;
        if ztunnel.log().last() != Some(&format!("add {uid}")) {
            return Err(format!(
                "ztunnel was not given the pod: {:?}",
                ztunnel.log()
            ));
        }
        let mut del = conf.clone();
        del.as_object_mut().expect("conf").remove("prevResult");
        run("DEL", &del)?;
        Ok(secs)
    })();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let out = agent.wait();
    drop(ztunnel);
    match result {
        Ok(secs) if out.status.success() => Ok(secs),
        Ok(_) => Err(format!(
            "the ambient agent failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("ambient ADD: {e}")),
    }
}

/// `pods` meshcap-cni ADDs started at once, then as many one after the other (fresh pods each),
/// every one checked; the two wall times.
fn burst(settings: &Settings, nftables: bool, pods: usize, r: usize) -> Result<(f64, f64), String> {
    let node = Node::new(settings, &format!("burst{r}{nftables}"));
    let mut walls = Vec::new();
    for at_once in [true, false] {
        let namespaces: Vec<Netns> = (0..pods).map(|_| Netns::new("cniburst")).collect();
        let mut confs = Vec::new();
        for (i, pod) in namespaces.iter().enumerate() {
            let (prev, _) = node.bridge_add(pod, &format!("b{at_once}{i}"))?;
            confs.push(Node::meshcap_conf(nftables, 0, &prev));
        }
        let start = Instant::now();
        if at_once {
            let children: Vec<_> = namespaces
                .iter()
                .zip(&confs)
                .enumerate()
                .map(|(i, (pod, conf))| {
                    node.spawn(&node.meshcap(), pod, &format!("b{at_once}{i}"), "ADD", conf)
                })
                .collect();
            for child in children {
                let out = child.wait_with_output().map_err(|e| e.to_string())?;
                parse(&out, &node.meshcap())?;
            }
        } else {
            for (i, (pod, conf)) in namespaces.iter().zip(&confs).enumerate() {
                let out = node
                    .spawn(&node.meshcap(), pod, &format!("b{at_once}{i}"), "ADD", conf)
                    .wait_with_output()
                    .map_err(|e| e.to_string())?;
                parse(&out, &node.meshcap())?;
            }
        }
        walls.push(start.elapsed().as_secs_f64());
        for (i, (pod, conf)) in namespaces.iter().zip(&confs).enumerate() {
            node.timed(
                &node.meshcap(),
                pod,
                &format!("b{at_once}{i}"),
                "CHECK",
                conf,
            )
            .map_err(|e| format!("pod {i} of {pods} has incomplete rules: {e}"))?;
        }
    }
    Ok((walls[0], walls[1]))
}

pub fn run(settings: &Settings) -> CniBench {
    let mut errors = Vec::new();
    let mut samples: Vec<(Step, Vec<(usize, f64)>)> = std::iter::once(Step::Bridge)
        .chain(STEPS)
        .chain(STEPS.iter().filter_map(|s| s.del()))
        .chain(std::iter::once(Step::Ambient))
        .map(|s| (s, Vec::new()))
        .collect();
    // One warm-up round, then the kept ones.
    for r in 0..=settings.samples {
        match round(settings, r, &mut errors) {
            Ok(got) if r > 0 => {
                for (step, secs) in got {
                    let slot = samples.iter_mut().find(|(s, _)| *s == step).expect("step");
                    slot.1.push((r, secs));
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("cni: round {r} failed: {e}");
                errors.push(e);
                break;
            }
        }
    }
    let series = samples
        .into_iter()
        .map(|(step, samples)| {
            let secs: Vec<f64> = samples.iter().map(|(_, s)| *s).collect();
            let summary = Summary::of(&secs);
            if let Some(sm) = summary {
                let n = match step {
                    Step::Meshcap { n, .. } | Step::Del { n, .. } => n,
                    Step::Bridge | Step::Ambient => 0,
                };
                eprintln!(
                    "cni: N={n:>4} {:<42} {:>10}",
                    step.label(),
                    stats::fmt_secs(sm.median)
                );
            }
            Series {
                step,
                samples,
                summary,
            }
        })
        .collect();

    let pods = 20;
    let rounds = if settings.quick { 1 } else { 3 };
    let mut bursts = Vec::new();
    for nftables in [true, false] {
        let (mut par, mut seq) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            match burst(settings, nftables, pods, r) {
                Ok((p, s)) => {
                    par.push(p);
                    seq.push(s);
                }
                Err(e) => {
                    eprintln!("cni: burst failed: {e}");
                    errors.push(e);
                    break;
                }
            }
        }
        bursts.push(Burst {
            nftables,
            pods,
            parallel: Summary::of(&par),
            sequential: Summary::of(&seq),
        });
    }
    CniBench {
        series,
        bursts,
        samples: settings.samples,
        errors,
    }
}

/// The report's section.
/// meshcap-cni's ADD (nftables, Istio's CNI defaults) at most this share of bridge's ADD.
pub const ADD_TARGET: f64 = 0.25;
/// meshcap-cni's DEL at most this share of its ADD.
pub const DEL_TARGET: f64 = 1.0;
/// The step both targets are about: nftables, Istio's CNI defaults (N=0).
pub const DEFAULTS: Step = Step::Meshcap {
    nftables: true,
    n: 0,
};

pub fn section(cni: &CniBench) -> String {
    let cell = |step: Step| match cni.get(step).and_then(|s| s.summary) {
        Some(s) => format!(
            "{} ({} – {})",
            stats::fmt_secs(s.median),
            stats::fmt_secs(s.min),
            stats::fmt_secs(s.max)
        ),
        None => "—".into(),
    };
    let ratio = |step: Step| cni.ratio_to_bridge(step).map(|s| s.median);
    let ratio_cell = |step: Step| match ratio(step) {
        Some(r) => format!("{r:.2}×"),
        None => "—".into(),
    };
    let mut out =
        String::from("## CNI mode: meshcap-cni's ADD and DEL against the bridge plugin's ADD\n\n");
    out.push_str(&format!(
        "What a pod's network set-up costs with and without meshcap-cni chained after Debian's \
         `bridge` plugin (with `host-local`). Each sample is a fresh pod namespace; every plugin \
         runs as a runtime runs it (`nsenter --net=HOST PLUGIN`, the CNI variables, the \
         configuration on stdin, meshcap-cni with bridge's result as `prevResult`), and each \
         meshcap-cni ADD is followed by a CHECK that the rules are complete (not timed), then \
         by meshcap-cni's DEL (timed). meshcap-cni is the static release binary. Medians of {} \
         rounds (min – max); ratios are taken within a round. N = that many excluded inbound \
         ports and as many excluded CIDRs in the stanza's `capture`.\n\n",
        cni.samples
    ));
    out.push_str("| command | N | time | ÷ bridge's ADD |\n|---|---:|---:|---:|\n");
    out.push_str(&format!(
        "| {} ADD | – | {} | 1 |\n",
        Step::Bridge.label(),
        cell(Step::Bridge)
    ));
    for step in STEPS {
        let Step::Meshcap { n, .. } = step else {
            continue;
        };
        for (what, step) in [("ADD", step), ("DEL", step.del().expect("meshcap step"))] {
            let label = match step {
                Step::Del { .. } => step.label(),
                _ => format!("{} {what}", step.label()),
            };
            out.push_str(&format!(
                "| {label} | {n} | {} | {} |\n",
                cell(step),
                ratio_cell(step)
            ));
        }
    }
    out.push_str(&format!(
        "| {} | – | {} | {} |\n",
        Step::Ambient.label(),
        cell(Step::Ambient),
        ratio_cell(Step::Ambient)
    ));
    out.push_str(
        "\nThe ambient row: an ambient pod's ADD in the same round (pod and namespace served by a \
         TLS API server on the node's loopback, `meshcap ambient agent` in the node's namespace \
         with the iptables backend, the tests' ztunnel stand-in connected); the plugin returns \
         once the agent has the rules in and the stand-in's ack, and the pod annotated.\n",
    );
    out.push_str(&format!(
        "\nTargets: {}; {}.\n\n",
        add_target(cni).1,
        del_target(cni).1
    ));
    out.push_str(
        "Pods started together: meshcap-cni ADDs into that many fresh pod namespaces (bridge's \
         ADDs done before, untimed), all started at once against one after the other; wall \
         time, median of the rounds; every pod's rules checked afterwards.\n\n\
         | backend | pods | at once | in a row | at once ÷ in a row |\n|---|---:|---:|---:|---:|\n",
    );
    for b in &cni.bursts {
        let (p, s) = (b.parallel.map(|s| s.median), b.sequential.map(|s| s.median));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            if b.nftables {
                "nftables (netlink)"
            } else {
                "iptables (iptables-restore)"
            },
            b.pods,
            p.map_or("—".into(), stats::fmt_secs),
            s.map_or("—".into(), stats::fmt_secs),
            match (p, s) {
                (Some(p), Some(s)) => format!("{:.2}", p / s),
                _ => "—".into(),
            }
        ));
    }
    for e in &cni.errors {
        out.push_str(&format!("\nNot measured: {e}\n"));
    }
    out
}

fn verdict(r: Option<f64>, limit: f64) -> (Option<bool>, String) {
    match r {
        Some(r) if r <= limit => (Some(true), format!("**met** ({r:.2}× ≤ {limit}×)")),
        Some(r) => (Some(false), format!("**not met** ({r:.2}× > {limit}×)")),
        None => (None, "not measured".into()),
    }
}

/// (met, text) of "ADD (nftables, Istio's CNI defaults) ≤ 0.25× bridge's ADD".
pub fn add_target(cni: &CniBench) -> (Option<bool>, String) {
    let (met, v) = verdict(cni.ratio_to_bridge(DEFAULTS).map(|s| s.median), ADD_TARGET);
    (
        met,
        format!(
            "meshcap-cni's ADD (nftables, Istio's CNI defaults) at most {ADD_TARGET}× bridge's \
             ADD: {v}"
        ),
    )
}

/// (met, text) of "DEL no slower than ADD" (nftables, Istio's CNI defaults).
pub fn del_target(cni: &CniBench) -> (Option<bool>, String) {
    let (met, v) = verdict(cni.del_to_add(DEFAULTS).map(|s| s.median), DEL_TARGET);
    (met, format!("its DEL at most {DEL_TARGET}× its ADD: {v}"))
}
