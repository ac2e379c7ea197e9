//! The plugin's commands: what `ADD`, `CHECK`, `DEL`, `STATUS` and `GC` do with the pod's
//! namespace, through the same config, plan and backends as the installer.

use super::ambient;
use super::capture;
use super::env::{CniEnv, Command};
use super::k8s::{self, Decision, K8sError, KubernetesConfig, Pod, PodRef};
use super::spec::{self, CniError, NetConf, code};
use crate::backend::session::{self, Namespace, NamespaceError, Session, SessionError, Waits};
use crate::backend::{Applied, BackendError};
use crate::config::{Config, ConfigError, HostFacts, SystemHost};
use crate::inputs::{Inputs, Opt, Origin};
use crate::plan::{Plan, RoutingStep};
use serde_json::Value;
use std::path::Path;

/// Runs one invocation: `Ok(Some(json))` is printed on stdout, `Ok(None)` prints nothing.
pub fn run(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(spec::version_info(&spec::requested_version(stdin))));
    }
    let conf = NetConf::decode(stdin)?;
    spec::check_supported(&conf.cni_version)?;
    let needs = |minimum: &str| {
        if spec::at_least(&conf.cni_version, minimum) {
            Ok(())
        } else {
            Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {} does not allow {}: it needs {minimum} or later",
                    conf.cni_version,
                    env.command.name()
                ),
            ))
        }
    };
    match env.command {
        Command::Version => unreachable!("answered above"),
        Command::Add => add(env, &conf).map(Some),
        Command::Check => {
            needs("0.4.0")?;
            check(env, &conf).map(|()| None)
        }
        Command::Del => del(env, &conf).map(|()| None),
        // Ready whenever it can run: it keeps no daemon and no state of its own.
        Command::Status => needs("1.1.0").map(|()| None),
        // Nothing of meshcap outlives a pod's namespace.
        Command::Gc => needs("1.1.0").map(|()| None),
    }
}

fn add(env: &CniEnv, conf: &NetConf) -> Result<Value, CniError> {
    // Everything that can be refused is checked before the pod's namespace is touched; the pod
    // lookup runs in the plugin's own namespace.
    let result = spec::pass_through(conf.prev_result.as_ref(), &conf.cni_version)?;
    let ambient = ambient::settings(conf)?;
    // An enrolled pod is the ambient agent's; the sidecar path leaves it alone.
    let enrol = |kubernetes: &KubernetesConfig, pod_ref: &PodRef, pod: &Pod| match &ambient {
        Some(settings) => ambient::add(env, conf, settings, kubernetes, pod_ref, pod),
        None => Ok(false),
    };
    let Some((inputs, _)) = pod_inputs(env, conf, Lookup::Required, &enrol)? else {
        return Ok(result);
    };
    if let Some(file) = &conf.dry_run_file {
        check_writable_dir(file)?;
    }
    let netns = env.netns.as_deref().expect("ADD requires CNI_NETNS");
    let ns = pod_namespace(netns)?;
    // IPv6 `auto` is decided here, from the pod's own addresses.
    let config = ns.run(|| configure(&inputs)).map_err(namespace_error)??;
    let plan = crate::plan::build(&config.capture);
    if let Some(file) = &conf.dry_run_file {
        std::fs::write(file, session::render(&config.run, &plan)).map_err(|e| {
            CniError::new(
                code::OTHER,
                format!("cannot write dry_run_file {}", file.display()),
            )
            .with_details(e.to_string())
        })?;
        tracing::info!(container = %env.container_id, file = %file.display(), "dry run: rules written, none installed");
        return Ok(result);
    }
    // Fail closed: any error here fails the ADD, so the pod never starts without its rules.
    let failed = "cannot install the capture rules in the pod's namespace";
    let session = open_session(ns, &config, plan, failed)?;
    let applied = session.apply().map_err(|e| session_error(e, failed))?;
    let what = match applied {
        Applied::Installed => "rules installed",
        Applied::AlreadyInPlace => "rules already in place",
        Applied::Replaced => "rules of another configuration replaced",
    };
    tracing::info!(container = %env.container_id, netns = %netns.display(), backend = ?config.run.backend, "{what}");
    Ok(result)
}

fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let ambient = ambient::settings(conf)?;
    // An enrolled pod's rules are the agent's to compare.
    let checked = |kubernetes: &KubernetesConfig, pod_ref: &PodRef, pod: &Pod| match &ambient {
        Some(settings) => ambient::check(env, settings, kubernetes, pod_ref, pod),
        None => Ok(false),
    };
    let Some((inputs, _)) = pod_inputs(env, conf, Lookup::Required, &checked)? else {
        return Ok(());
    };
    let netns = env.netns.as_deref().expect("CHECK requires CNI_NETNS");
    let ns = pod_namespace(netns)?;
    let config = ns.run(|| configure(&inputs)).map_err(namespace_error)??;
    let plan = crate::plan::build(&config.capture);
    let failed = "cannot read the rules of the pod's namespace";
    let diff = open_session(ns, &config, plan, failed)?
        .drift()
        .map_err(|e| session_error(e, failed))?;
    if diff.is_empty() {
        return Ok(());
    }
    let text = diff.to_string();
    tracing::debug!("drift:\n{text}");
    let first: Vec<&str> = text.lines().take(3).collect();
    Err(CniError::new(
        code::OTHER,
        "the pod's namespace does not hold meshcap's rules for this configuration",
    )
    .with_details(format!(
        "{} missing, {} extra, {} reordered; {}",
        diff.missing.len(),
        diff.extra.len(),
        diff.reordered.len(),
        first.join("; ")
    )))
}

fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    // Ambient first: the agent lets the pod go even when its namespace is gone already.
    if let (Some(settings), Some(kubernetes)) = (ambient::settings(conf)?, kubernetes(conf)?) {
        ambient::del(env, &settings, &kubernetes);
    }
    let Some(netns) = env.netns.as_deref().filter(|p| p.exists()) else {
        tracing::info!(container = %env.container_id, "namespace gone: nothing to remove");
        return Ok(());
    };
    let Some((inputs, settings)) = pod_inputs(env, conf, Lookup::BestEffort, &not_ambient)? else {
        return Ok(());
    };
    let ns = pod_namespace(netns)?;
    // The configuration is decided inside (IPv6 `auto`); TPROXY's routing is the stanza's
    // (mark and table), whichever mode the pod that is gone had.
    let decided = ns.run(|| {
        let (config, settings, inputs) = match configure(&inputs) {
            Ok(config) => (config, settings, inputs),
            // The pod's settings do not validate (an annotation edited after the ADD): the ADD
            // did not use these. Remove whatever is there, as when they are unknown, rather
            // than fail every DEL of the pod.
            Err(e) if settings == Settings::Known && conf.kubernetes.is_some() => {
                tracing::warn!(container = %env.container_id, "{}: removing the rules of any settings", e.msg);
                let stanza = capture::inputs(&conf.capture)?;
                (configure(&stanza)?, Settings::StanzaOnly, stanza)
            }
            Err(e) => return Err(e),
        };
        let routing = match settings {
            Settings::Known => Vec::new(),
            Settings::StanzaOnly => tproxy_routing(&inputs),
        };
        Ok::<_, CniError>((config, settings, routing))
    });
    let (config, settings, tproxy) = match decided {
        Ok(decided) => decided?,
        // A namespace file whose bind mount is gone is an empty file: nothing left to clean.
        Err(e) => {
            tracing::info!(container = %env.container_id, "{e}: nothing to remove");
            return Ok(());
        }
    };
    let plan = crate::plan::build(&config.capture);
    let failed = "cannot remove the rules from the pod's namespace";
    let session = open_session(ns, &config, plan, failed)?;
    match settings {
        Settings::Known => session.clean(),
        // The pod's settings are unknown: every rule of meshcap's and Istio's shapes goes.
        Settings::StanzaOnly => session.clean_any(&tproxy),
    }
    .map_err(|e| session_error(e, failed))?;
    tracing::info!(container = %env.container_id, netns = %netns.display(), "rules removed");
    Ok(())
}

/// The pod's namespace; never the plugin's own (a CNI_NETNS of /proc/self/ns/net would
/// otherwise install the pod's rules on the node).
fn pod_namespace(netns: &Path) -> Result<Namespace, CniError> {
    Namespace::open_other(netns).map_err(namespace_error)
}

fn namespace_error(e: NamespaceError) -> CniError {
    CniError::new(code::INVALID_ENVIRONMENT, format!("CNI_NETNS: {e}"))
}

/// A session on the pod's namespace with the plugin's bounded waits ([`Waits::PLUGIN`]).
fn open_session(
    ns: Namespace,
    config: &Config,
    plan: Plan,
    failed: &str,
) -> Result<Session, CniError> {
    Session::open(ns, &config.run, plan, Waits::PLUGIN).map_err(|e| session_error(e, failed))
}

/// A session's failure as the plugin reports it: a lock that stayed held is code 11 (try again
/// later: the runtime retries), naming the lock.
fn session_error(e: SessionError, failed: &str) -> CniError {
    match e {
        SessionError::Namespace(e) => namespace_error(e),
        SessionError::Backend(e @ BackendError::Busy { .. }) => {
            CniError::new(code::TRY_AGAIN_LATER, format!("{failed}: {e}"))
        }
        SessionError::Backend(e) => CniError::new(code::OTHER, failed).with_details(e.to_string()),
    }
}

/// Whose settings [`pod_inputs`] gives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settings {
    /// The pod's (or the stanza's alone when there is no pod lookup): exactly what ADD used.
    Known,
    /// The stanza's alone because the pod's lookup failed (DEL of a pod that is gone).
    StanzaOnly,
}

/// Whether a command must learn the pod's settings from the API server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// ADD and CHECK: without the pod's settings the rules could be wrong; fail instead.
    Required,
    /// DEL: the pod may be gone already; the rules are removed whatever their settings were.
    BestEffort,
}

/// Asked of each looked-up pod before the sidecar decision: `Ok(true)` when ambient mode took
/// the pod (the sidecar path leaves it alone).
type AmbientStep<'a> = dyn Fn(&KubernetesConfig, &PodRef, &Pod) -> Result<bool, CniError> + 'a;

/// DEL: no enrolment.
fn not_ambient(_: &KubernetesConfig, _: &PodRef, _: &Pod) -> Result<bool, CniError> {
    Ok(false)
}

/// The stanza's `"kubernetes"` object, if any.
fn kubernetes(conf: &NetConf) -> Result<Option<KubernetesConfig>, CniError> {
    conf.kubernetes
        .as_ref()
        .map(|k| {
            serde_json::from_value(k.clone()).map_err(|e| {
                CniError::new(code::INVALID_CONFIG, "invalid \"kubernetes\" object")
                    .with_details(e.to_string())
            })
        })
        .transpose()
}

/// The installer inputs for the pod: Istio's CNI defaults, the stanza's `capture`, and, when the
/// stanza has `"kubernetes"` and `CNI_ARGS` names the pod, the pod's annotations and
/// `istio-proxy` container. `None` when Istio's plugin would leave the pod alone, or when
/// `ambient` took it.
fn pod_inputs(
    env: &CniEnv,
    conf: &NetConf,
    lookup: Lookup,
    ambient: &AmbientStep<'_>,
) -> Result<Option<(Inputs, Settings)>, CniError> {
    let mut inputs = capture::inputs(&conf.capture)?;
    let Some(kubernetes) = kubernetes(conf)? else {
        return Ok(Some((inputs, Settings::Known)));
    };
    let Some(pod) = k8s::pod_from_cni_args(&env.args).map_err(k8s_error)? else {
        // Istio's plugin acts only on pods a kubelet names.
        tracing::info!(container = %env.container_id, "skipped: CNI_ARGS names no Kubernetes pod (K8S_POD_NAMESPACE, K8S_POD_NAME)");
        return Ok(None);
    };
    let name = format!("{}/{}", pod.namespace, pod.name);
    if let Some(reason) = k8s::namespace_excluded(&pod.namespace, &kubernetes.exclude_namespaces) {
        tracing::info!(pod = %name, "skipped: {reason}");
        return Ok(None);
    }
    let found = match k8s::fetch_pod(&kubernetes.kubeconfig, &pod, &k8s::RetryPolicy::default()) {
        Ok(found) => found,
        Err(e) if lookup == Lookup::BestEffort => {
            tracing::warn!(pod = %name, "{e}: removing the rules of the stanza's settings, and any TPROXY routing");
            return Ok(Some((inputs, Settings::StanzaOnly)));
        }
        Err(e) => return Err(k8s_error(e)),
    };
    if ambient(&kubernetes, &pod, &found)? {
        return Ok(None);
    }
    match k8s::sidecar_decision(&found, &kubernetes.exclude_namespaces) {
        Decision::Skip { reason } => {
            tracing::info!(pod = %name, "skipped: {reason}");
            Ok(None)
        }
        Decision::Capture(settings) => {
            for setting in settings {
                let opt =
                    Opt::from_long(setting.flag).expect("the Istio mapping names installer flags");
                inputs.set(opt, setting.value, Origin::Pod(setting.source));
            }
            Ok(Some((inputs, Settings::Known)))
        }
    }
}

/// After DEL cleaned with the stanza's settings because the pod's are unknown: the pod's
/// annotations may have chosen TPROXY, whose fwmark rule and local route the netfilter cleanup
/// does not cover (mark and table are the stanza's, no annotation sets them). Removing steps
/// that are absent is no error. Runs inside the pod's namespace (IPv6 `auto`).
fn tproxy_routing(inputs: &Inputs) -> Vec<RoutingStep> {
    let mut tproxy = inputs.clone();
    tproxy.set(
        Opt::InterceptionMode,
        "TPROXY",
        Origin::Default("TPROXY, which a pod that is gone may have had".into()),
    );
    match configure(&tproxy) {
        Ok(config) => crate::plan::build(&config.capture).routing,
        Err(e) => {
            tracing::warn!("{e}: TPROXY's routing not removed");
            Vec::new()
        }
    }
}

fn k8s_error(e: K8sError) -> CniError {
    CniError::new(e.cni_code(), e.to_string())
}

/// The installer's validation, on the plugin's inputs: a bad value is an invalid network
/// configuration naming the key (or annotation) and the value.
fn configure(inputs: &Inputs) -> Result<Config, CniError> {
    Config::from_inputs(inputs, &PodHost).map_err(|e| {
        let code = match e {
            ConfigError::Host { .. } => code::OTHER,
            _ => code::INVALID_CONFIG,
        };
        CniError::new(code, e.to_string())
    })
}

/// The facts of the pod's namespace, entered before the configuration is built. The node's
/// files are not the pod's: its resolv.conf and users are the container image's.
struct PodHost;

impl HostFacts for PodHost {
    fn pod_is_ipv6(&self, dual_stack: bool) -> Result<Option<bool>, String> {
        SystemHost.pod_is_ipv6(dual_stack)
    }

    fn resolv_conf_nameservers(&self) -> Result<Vec<String>, String> {
        Err(
            "the pod's resolv.conf is not readable from a CNI plugin: set capture key \
             \"capture-all-dns\" or \"dns-servers\" with \"redirect-dns\""
                .into(),
        )
    }

    fn uid_of(&self, _user: &str) -> Option<u32> {
        None
    }
}

/// Fails with code 7 unless `file`'s directory exists.
fn check_writable_dir(file: &Path) -> Result<(), CniError> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if dir.is_dir() {
        return Ok(());
    }
    Err(CniError::new(
        code::INVALID_CONFIG,
        format!(
            "dry_run_file {}: directory {} does not exist",
            file.display(),
            dir.display()
        ),
    ))
}
