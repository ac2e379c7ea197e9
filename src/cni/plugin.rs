//! The plugin's commands: what `ADD`, `CHECK`, `DEL`, `STATUS` and `GC` do with the pod's
//! namespace, through the same config, plan and backends as the installer.

use super::capture;
use super::env::{CniEnv, Command};
use super::k8s::{self, Decision, K8sError, KubernetesConfig};
use super::spec::{self, CniError, NetConf, code};
use crate::backend::{self, Applied, Firewall};
use crate::config::{Config, ConfigError, HostFacts, SystemHost};
use crate::inputs::{Inputs, Opt, Origin};
use crate::plan::Plan;
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
    // Everything that can be refused is checked before the pod's namespace is touched.
    let result = spec::pass_through(conf.prev_result.as_ref(), &conf.cni_version)?;
    let Some((inputs, _)) = pod_inputs(env, conf, Lookup::Required)? else {
        return Ok(result);
    };
    if let Some(file) = &conf.dry_run_file {
        check_writable_dir(file)?;
    }
    let netns = env.netns.as_deref().expect("ADD requires CNI_NETNS");
    enter(netns)?;
    // IPv6 `auto` is decided here, from the pod's own addresses.
    let config = configure(&inputs)?;
    let plan = crate::plan::build(&config.capture);
    let backend = backend::select(&config.run);
    if let Some(file) = &conf.dry_run_file {
        std::fs::write(file, backend.render(&plan)).map_err(|e| {
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
    let applied = backend.apply(&plan).map_err(|e| {
        CniError::new(
            code::OTHER,
            "cannot install the capture rules in the pod's namespace",
        )
        .with_details(e.to_string())
    })?;
    let what = match applied {
        Applied::Installed => "rules installed",
        Applied::AlreadyInPlace => "rules already in place",
        Applied::Replaced => "rules of another configuration replaced",
    };
    tracing::info!(container = %env.container_id, netns = %netns.display(), backend = ?config.run.backend, "{what}");
    Ok(result)
}

fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let Some((inputs, _)) = pod_inputs(env, conf, Lookup::Required)? else {
        return Ok(());
    };
    let netns = env.netns.as_deref().expect("CHECK requires CNI_NETNS");
    enter(netns)?;
    let config = configure(&inputs)?;
    let plan = crate::plan::build(&config.capture);
    let backend = backend::select(&config.run);
    let diff = backend::drift(&*backend, &plan).map_err(|e| {
        CniError::new(code::OTHER, "cannot read the rules of the pod's namespace")
            .with_details(e.to_string())
    })?;
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
    let Some(netns) = env.netns.as_deref().filter(|p| p.exists()) else {
        tracing::info!(container = %env.container_id, "namespace gone: nothing to remove");
        return Ok(());
    };
    let Some((inputs, settings)) = pod_inputs(env, conf, Lookup::BestEffort)? else {
        return Ok(());
    };
    if let Err(e) = backend::enter_namespace(netns) {
        // A namespace file whose bind mount is gone is an empty file: nothing left to clean.
        tracing::info!(container = %env.container_id, "{e}: nothing to remove");
        return Ok(());
    }
    let (inputs, settings) = match (configure(&inputs), settings) {
        (Ok(_), _) | (Err(_), Settings::StanzaOnly) => (inputs, settings),
        // The pod's settings are invalid (an ADD that failed on them installed nothing, or an
        // annotation was edited since): a DEL that failed on them would keep the sandbox from
        // ever being removed. Clean as for a pod that is gone.
        (Err(e), Settings::Known) => {
            tracing::warn!(container = %env.container_id, "{e}: removing the rules of the stanza's settings, and any TPROXY routing");
            (capture::inputs(&conf.capture)?, Settings::StanzaOnly)
        }
    };
    let config = configure(&inputs)?;
    let plan = crate::plan::build(&config.capture);
    clean(&*backend::select(&config.run), &plan)?;
    if settings == Settings::StanzaOnly {
        clean_tproxy_routing(&inputs)?;
    }
    backend::remove_namespace_lock().map_err(|e| {
        CniError::new(code::OTHER, "cannot remove the namespace's lock file")
            .with_details(e.to_string())
    })?;
    tracing::info!(container = %env.container_id, netns = %netns.display(), "rules removed");
    Ok(())
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

/// The installer inputs for the pod: Istio's CNI defaults, the stanza's `capture`, and, when the
/// stanza has `"kubernetes"` and `CNI_ARGS` names the pod, the pod's annotations and
/// `istio-proxy` container. `None` when Istio's plugin would leave the pod alone.
fn pod_inputs(
    env: &CniEnv,
    conf: &NetConf,
    lookup: Lookup,
) -> Result<Option<(Inputs, Settings)>, CniError> {
    let mut inputs = capture::inputs(&conf.capture)?;
    let Some(kubernetes) = &conf.kubernetes else {
        return Ok(Some((inputs, Settings::Known)));
    };
    let kubernetes: KubernetesConfig = serde_json::from_value(kubernetes.clone()).map_err(|e| {
        CniError::new(code::INVALID_CONFIG, "invalid \"kubernetes\" object")
            .with_details(e.to_string())
    })?;
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
/// that are absent is no error.
fn clean_tproxy_routing(inputs: &Inputs) -> Result<(), CniError> {
    let mut tproxy = inputs.clone();
    tproxy.set(
        Opt::InterceptionMode,
        "TPROXY",
        Origin::Default("TPROXY, which a pod that is gone may have had".into()),
    );
    let config = match configure(&tproxy) {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!("{e}: TPROXY's routing not removed");
            return Ok(());
        }
    };
    let plan = crate::plan::build(&config.capture);
    backend::routing::clean(&plan.routing).map_err(|e| {
        CniError::new(
            code::OTHER,
            "cannot remove TPROXY's routing from the pod's namespace",
        )
        .with_details(e.to_string())
    })
}

fn k8s_error(e: K8sError) -> CniError {
    CniError::new(e.cni_code(), e.to_string())
}

fn clean(backend: &dyn Firewall, plan: &Plan) -> Result<(), CniError> {
    backend.clean(plan).map_err(|e| {
        CniError::new(
            code::OTHER,
            "cannot remove the rules from the pod's namespace",
        )
        .with_details(e.to_string())
    })
}

fn enter(netns: &Path) -> Result<(), CniError> {
    backend::enter_namespace(netns)
        .map_err(|e| CniError::new(code::INVALID_ENVIRONMENT, format!("CNI_NETNS: {e}")))
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
