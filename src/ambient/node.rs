//! The node agent's core: enrolling a pod (its rules in its namespace, its addresses in the
//! probe set, its namespace handed to ztunnel) and letting it go again, with the list of
//! enrolled pods kept in a state file so that a restarted agent finds them.
//!
//! Enrolment fails closed: when any step fails (ztunnel absent or refusing included), the steps
//! already done are undone and the error is returned, so the CNI ADD fails and the pod does not
//! start without its rules or without ztunnel.
//!
//! Rules go in with the backend of `--backend` (iptables, or nftables over netlink), and the
//! probe sets are that backend's ([`apply::ProbeSets`]).

use super::apply;
use super::config::{
    AnnotationError, HostConfig, NodeSettings, PodConfig, PodOverrides, ProbeSource,
};
use super::plan::{self, AmbientPlan, probe_set_name};
use super::zds::agent::{Agent, ZdsError};
use super::zds::messages::WorkloadInfo;
use crate::backend::BackendError;
use crate::plan::Family;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// A pod as the CNI plugin describes it at ADD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub service_account: String,
    /// The pod's network namespace (a bind mount or /proc/PID/ns/net).
    pub netns: PathBuf,
    /// The pod's addresses (they go into the probe set).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub annotations: Vec<(String, String)>,
}

/// Why a pod could not be enrolled or let go.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A bad annotation (the CNI plugin answers with code 7, invalid configuration).
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    #[error("{0}")]
    Rules(#[from] BackendError),
    #[error("{0}")]
    Ztunnel(#[from] ZdsError),
    #[error("network namespace {}: {reason}", path.display())]
    Namespace { path: PathBuf, reason: String },
    #[error("state file {}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    #[error("pod {0} is not enrolled")]
    NotEnrolled(String),
    #[error("pod {uid}'s namespace does not hold its rules: {summary}")]
    Drift { uid: String, summary: String },
}

/// The node agent.
pub struct Node {
    settings: NodeSettings,
    variant: apply::Backend,
    zds: Agent,
    state: PathBuf,
    pods: Mutex<Vec<PodRef>>,
}

impl Node {
    /// Installs the node's probe rule and sets (in the current namespace, the node's), listens
    /// for ztunnel on `zds_socket`, and takes back the pods of the state file in `state_dir`
    /// whose namespaces still exist; with `reconcile`, their rules are applied again.
    pub fn start(
        settings: NodeSettings,
        zds_socket: &Path,
        state_dir: &Path,
        ack_timeout: Duration,
        reconcile: bool,
    ) -> Result<Node, NodeError> {
        let variant = apply::Backend::pick(settings.nftables);
        // nftables matches the kubelet's uid when known (Istio's rule), else any local socket.
        let source = match (variant, settings.kubelet_uid) {
            (apply::Backend::Nftables, Some(uid)) => ProbeSource::Uid(uid),
            _ => ProbeSource::AnyLocalSocket,
        };
        let host = plan::host(&HostConfig::new(&settings, source));
        apply::install(&host, variant)?;
        let zds = Agent::listen(zds_socket, ack_timeout).map_err(|e| NodeError::State {
            path: zds_socket.to_owned(),
            reason: e.to_string(),
        })?;
        let state = state_dir.join("pods.json");
        let node = Node {
            settings,
            variant,
            zds,
            state,
            pods: Mutex::new(Vec::new()),
        };
        for pod in node.read_state()? {
            let Ok(netns) = File::open(&pod.netns) else {
                tracing::info!("pod {} is gone (no {})", pod.uid, pod.netns.display());
                continue;
            };
            if reconcile && let Err(e) = node.reapply(&pod) {
                tracing::warn!("pod {}: rules not re-applied: {e}", pod.uid);
            }
            node.zds.restore(&pod.uid, info(&pod), netns);
            node.lock().push(pod);
        }
        node.write_state()?;
        tracing::info!("{} enrolled pod(s) taken back", node.lock().len());
        Ok(node)
    }

    /// The uids of the enrolled pods.
    pub fn enrolled(&self) -> Vec<String> {
        self.lock().iter().map(|p| p.uid.clone()).collect()
    }

    /// Whether ztunnel is connected (waiting up to `timeout`).
    pub fn ztunnel_connected(&self, timeout: Duration) -> bool {
        self.zds.wait_connected(timeout)
    }

    /// Enrolls a pod: rules in its namespace, addresses in the probe set, namespace to
    /// ztunnel (acknowledged). Everything or nothing.
    pub fn enroll(&self, pod: PodRef) -> Result<(), NodeError> {
        let plan = self.pod_plan(&pod)?;
        // A pod's namespace is never the agent's own (the node's): its rules would capture the
        // node's traffic.
        crate::backend::session::Namespace::open_other(&pod.netns).map_err(|e| {
            NodeError::Namespace {
                path: pod.netns.clone(),
                reason: e.to_string(),
            }
        })?;
        let netns = File::open(&pod.netns).map_err(|e| NodeError::Namespace {
            path: pod.netns.clone(),
            reason: e.to_string(),
        })?;
        let result = self
            .in_pod(&pod.netns, |v| apply::install(&plan, v))
            .and_then(|installed| Ok(installed.map(drop)?))
            .and_then(|()| self.add_probe_addresses(&pod))
            .and_then(|()| Ok(self.zds.add(&pod.uid, info(&pod), netns)?));
        if let Err(e) = result {
            self.undo(&pod, &plan);
            return Err(e);
        }
        let mut pods = self.lock();
        pods.retain(|p| p.uid != pod.uid);
        pods.push(pod);
        drop(pods);
        self.write_state()
    }

    /// Lets a pod go: ztunnel told (if connected), addresses out of the probe set, rules removed
    /// when its namespace still exists. Unknown pods are fine (DEL is idempotent).
    pub fn unenroll(&self, uid: &str) -> Result<(), NodeError> {
        let Some(pod) = self.lock().iter().find(|p| p.uid == uid).cloned() else {
            return Ok(());
        };
        if let Err(e) = self.zds.del(uid) {
            tracing::warn!("ztunnel did not take the removal of {uid}: {e}");
        }
        let plan = self.pod_plan(&pod).unwrap_or_else(|_| self.default_plan());
        self.undo(&pod, &plan);
        self.lock().retain(|p| p.uid != uid);
        self.write_state()
    }

    /// Whether an enrolled pod's namespace holds exactly its rules, routing and sets.
    pub fn check(&self, uid: &str) -> Result<(), NodeError> {
        let Some(pod) = self.lock().iter().find(|p| p.uid == uid).cloned() else {
            return Err(NodeError::NotEnrolled(uid.to_owned()));
        };
        let plan = self.pod_plan(&pod)?;
        let diff = self.in_pod(&pod.netns, |v| apply::drift(&plan, v))??;
        if diff.is_empty() {
            return Ok(());
        }
        let text = diff.to_string();
        let first: Vec<&str> = text.lines().take(3).collect();
        Err(NodeError::Drift {
            uid: uid.to_owned(),
            summary: format!(
                "{} missing, {} extra, {} reordered; {}",
                diff.missing.len(),
                diff.extra.len(),
                diff.reordered.len(),
                first.join("; ")
            ),
        })
    }

    /// Applies a pod's rules again (a no-op when they are in place).
    fn reapply(&self, pod: &PodRef) -> Result<(), NodeError> {
        let plan = self.pod_plan(pod)?;
        self.in_pod(&pod.netns, |v| apply::install(&plan, v))??;
        Ok(())
    }

    fn undo(&self, pod: &PodRef, plan: &AmbientPlan) {
        for addr in &pod.ips {
            let sets = self.variant.probe_sets();
            if let Err(e) = sets.del(&probe_set_name(family(addr)), *addr) {
                tracing::warn!("pod {}: {e}", pod.uid);
            }
        }
        if pod.netns.exists() {
            let cleaned = self
                .in_pod(&pod.netns, |v| apply::clean(plan, v))
                .and_then(|r| Ok(r?));
            if let Err(e) = cleaned {
                tracing::warn!("pod {}: rules not removed: {e}", pod.uid);
            }
        }
    }

    fn add_probe_addresses(&self, pod: &PodRef) -> Result<(), NodeError> {
        for addr in &pod.ips {
            if family(addr) == Family::V6 && !self.settings.ipv6 {
                continue;
            }
            let sets = self.variant.probe_sets();
            sets.add(&probe_set_name(family(addr)), *addr, Some(&pod.uid))?;
        }
        Ok(())
    }

    fn pod_plan(&self, pod: &PodRef) -> Result<AmbientPlan, NodeError> {
        let overrides = PodOverrides::from_annotations(
            pod.annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        Ok(plan::pod(&PodConfig::new(&self.settings, &overrides)))
    }

    fn default_plan(&self) -> AmbientPlan {
        plan::pod(&PodConfig::new(&self.settings, &PodOverrides::default()))
    }

    /// Runs `f` inside the namespace at `path` (iptables-restore and the rtnetlink socket it
    /// opens live there), and comes back.
    fn in_pod<T>(&self, path: &Path, f: impl FnOnce(apply::Backend) -> T) -> Result<T, NodeError> {
        let failed = |e: crate::backend::session::NamespaceError| NodeError::Namespace {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let variant = self.variant;
        crate::backend::session::Namespace::open(path)
            .map_err(failed)?
            .run(|| f(variant))
            .map_err(failed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PodRef>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_state(&self) -> Result<Vec<PodRef>, NodeError> {
        match std::fs::read_to_string(&self.state) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| self.state_error(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.state_error(e.to_string())),
        }
    }

    /// Written to a temporary file and renamed: a crash leaves the old list or the new one.
    fn write_state(&self) -> Result<(), NodeError> {
        let text = serde_json::to_string_pretty(&*self.lock()).expect("pods serialize");
        let dir = self.state.parent().unwrap_or(Path::new("."));
        let tmp = self.state.with_extension("json.tmp");
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &self.state))
            .map_err(|e| self.state_error(e.to_string()))
    }

    fn state_error(&self, reason: String) -> NodeError {
        NodeError::State {
            path: self.state.clone(),
            reason,
        }
    }
}

fn family(addr: &IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

fn info(pod: &PodRef) -> WorkloadInfo {
    WorkloadInfo {
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        service_account: pod.service_account.clone(),
    }
}
