//! The pod start latency a user sees: containerd's RunPodSandbox (CRI v1, as kubelet calls it)
//! with meshcap-cni chained after bridge + host-local against the same chain without it, on one
//! node (the tests' containerd node, tests/common/containerd.rs) in one run.
//!
//! Each round creates two sandboxes, one per configuration (which goes first alternates), each
//! timed from the request to the answer, then stops and removes it. Between them the node's
//! configuration list is rewritten and containerd's reload awaited (untimed). With meshcap-cni
//! the plugin looks the pod up in a test API server over TLS on the node's loopback, as in a
//! cluster, and installs Istio's CNI rules with the nftables backend.

use crate::Settings;
use crate::apiserver::{ApiServer, CaForm, Credential, Fault};
use crate::containerd::{Node, PodSpec};
use crate::stats::{self, Summary};
use serde_json::{Value, json};
use std::time::Instant;

/// The target: RunPodSandbox with meshcap-cni at most this many times the time without it.
pub const TARGET: f64 = 1.10;

pub struct PodStart {
    /// (round, seconds) without meshcap-cni.
    pub plain: Vec<(usize, f64)>,
    /// (round, seconds) with meshcap-cni.
    pub meshcap: Vec<(usize, f64)>,
    /// containerd's version line.
    pub containerd: String,
    pub errors: Vec<String>,
}

impl PodStart {
    pub fn ratio(&self) -> Option<Summary> {
        stats::paired(&self.meshcap, &self.plain)
    }
}

/// Writes the node's configuration list, bridge + host-local (+ `meshcap`), and waits until
/// containerd has loaded it.
fn configure(node: &Node, primary: &Value, meshcap: Option<&Value>) {
    let mut list = primary.clone();
    if let Some(stanza) = meshcap {
        list["plugins"]
            .as_array_mut()
            .expect("plugins")
            .push(stanza.clone());
    }
    std::fs::write(
        node.conf_dir().join("10-bridge.conflist"),
        serde_json::to_string_pretty(&list).expect("JSON"),
    )
    .expect("write the configuration list");
    node.await_cni_config("meshcap-cni", meshcap.is_some());
}

fn one_pod(node: &Node, api: &ApiServer, name: &str) -> Result<f64, String> {
    let mut spec = PodSpec::new("default", name);
    spec.annotations.insert(
        "sidecar.istio.io/status".into(),
        "{\"containers\":[\"istio-proxy\"]}".into(),
    );
    api.serve_pod(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": spec.uid,
                     "annotations": spec.annotations},
        "spec": {"containers": [
            {"name": "app", "image": "app"},
            {"name": "istio-proxy", "image": "proxy",
             "securityContext": {"runAsUser": 1337, "runAsGroup": 1337}},
        ]},
    }));
    let start = Instant::now();
    let pod = node.run_pod(&spec).map_err(|e| format!("{name}: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    node.stop_pod(&pod.id).map_err(|e| format!("{name}: {e}"))?;
    node.remove_pod(&pod.id)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(secs)
}

pub fn run(settings: &Settings) -> PodStart {
    let mut result = PodStart {
        plain: Vec::new(),
        meshcap: Vec::new(),
        containerd: crate::sys::output(&["containerd", "--version"])
            .trim()
            .to_owned(),
        errors: Vec::new(),
    };
    let Some(node) = Node::start("bench: pod start") else {
        result
            .errors
            .push("containerd is not available (scripts/setup.sh installs it)".into());
        return result;
    };
    std::os::unix::fs::symlink(&settings.meshcap, node.bin_dir().join("meshcap-cni"))
        .expect("meshcap-cni in the node's bin_dir");
    let api = ApiServer::start_in(node.host(), Fault::None);
    let primary: Value = serde_json::from_str(
        &std::fs::read_to_string(node.conf_dir().join("10-bridge.conflist"))
            .expect("the node's network"),
    )
    .expect("JSON");
    let stanza = json!({
        "type": "meshcap-cni",
        "capture": {"backend": "nftables"},
        "kubernetes": {
            "kubeconfig": api.kubeconfig(CaForm::Data, Credential::Token).display().to_string()
        },
    });
    // One warm-up round (images, the bridge, page cache), then the kept ones.
    'rounds: for r in 0..=settings.samples {
        let order = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for with_meshcap in order {
            configure(&node, &primary, with_meshcap.then_some(&stanza));
            match one_pod(&node, &api, &format!("pod-{r}-{with_meshcap}")) {
                Ok(secs) if r > 0 => {
                    let series = if with_meshcap {
                        &mut result.meshcap
                    } else {
                        &mut result.plain
                    };
                    series.push((r, secs));
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("podstart: round {r} failed: {e}");
                    result.errors.push(e);
                    break 'rounds;
                }
            }
        }
    }
    for (label, series) in [("without", &result.plain), ("with", &result.meshcap)] {
        let secs: Vec<f64> = series.iter().map(|(_, s)| *s).collect();
        if let Some(s) = Summary::of(&secs) {
            eprintln!(
                "podstart: RunPodSandbox {label} meshcap-cni {:>10}",
                stats::fmt_secs(s.median)
            );
        }
    }
    result
}

/// The report's section.
pub fn section(p: &PodStart) -> String {
    let cell = |series: &[(usize, f64)]| {
        let secs: Vec<f64> = series.iter().map(|(_, s)| *s).collect();
        match Summary::of(&secs) {
            Some(s) => format!(
                "{} ({} – {})",
                stats::fmt_secs(s.median),
                stats::fmt_secs(s.min),
                stats::fmt_secs(s.max)
            ),
            None => "—".into(),
        }
    };
    let ratio = p.ratio().map(|s| s.median);
    let mut out = String::from("## Pod start: containerd's RunPodSandbox with meshcap-cni\n\n");
    out.push_str(&format!(
        "The pod start latency a user sees: RunPodSandbox over CRI v1, as kubelet calls it, on a \
         node of the test suite ({}, its CRI plugin, runc, overlayfs, in a throwaway network \
         namespace), with the node's network (`bridge` + `host-local`) alone and with \
         `meshcap-cni` chained after it (the pod looked up in a test API server over TLS on \
         the node's loopback, Istio's CNI rules installed with the nftables backend). Both in \
         the same run on the same containerd; each round times one sandbox of each (the order \
         alternates; containerd reloads the configuration in between, untimed), then stops and \
         removes them. Medians of {} rounds (min – max); the ratio is taken within a round.\n\n",
        if p.containerd.is_empty() {
            "containerd"
        } else {
            &p.containerd
        },
        p.plain.len().min(p.meshcap.len())
    ));
    out.push_str("| RunPodSandbox | time | ÷ without |\n|---|---:|---:|\n");
    out.push_str(&format!(
        "| bridge + host-local | {} | 1 |\n",
        cell(&p.plain)
    ));
    out.push_str(&format!(
        "| bridge + host-local + meshcap-cni | {} | {} |\n",
        cell(&p.meshcap),
        ratio.map_or("—".into(), |r| format!("{r:.2}×"))
    ));
    out.push_str(&format!(
        "\nTarget: at most {TARGET}× the pod start without meshcap-cni: {}.\n",
        match ratio {
            Some(r) if r <= TARGET => format!("**met** ({r:.2}× ≤ {TARGET}×)"),
            Some(r) => format!("**not met** ({r:.2}× > {TARGET}×)"),
            None => "not measured".into(),
        }
    ));
    for e in &p.errors {
        out.push_str(&format!("\nNot measured: {e}\n"));
    }
    out
}

/// The section from fixed samples (`cargo test --bench report`): 80 ms without, 84 ms with.
pub fn check() {
    let p = PodStart {
        plain: (1..=5).map(|r| (r, 0.080)).collect(),
        meshcap: (1..=5).map(|r| (r, 0.084)).collect(),
        containerd: "containerd github.com/containerd/containerd 1.6.20~ds1".into(),
        errors: vec![],
    };
    let text = section(&p);
    for want in [
        "| bridge + host-local | 80.00 ms (80.00 ms – 80.00 ms) | 1 |",
        "| bridge + host-local + meshcap-cni | 84.00 ms (84.00 ms – 84.00 ms) | 1.05× |",
        "**met** (1.05× ≤ 1.1×)",
        "1.6.20",
    ] {
        assert!(
            text.contains(want),
            "the pod start section lacks {want:?}:\n{text}"
        );
    }
}
