//! `meshcap cni install|uninstall`: flags, each with an environment variable for a DaemonSet's
//! `env:`.

use crate::config::{Config, HostFacts};
use clap::builder::BoolishValueParser;
use clap::error::ErrorKind;
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};
use serde_json::{Map, Value};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "meshcap cni",
    bin_name = "meshcap cni",
    about = "Put meshcap's chained CNI plugin (meshcap-cni) on a Kubernetes node, or take it off",
    long_about = "Put meshcap's chained CNI plugin (meshcap-cni) on a Kubernetes node, or take it \
        off. Meant for a DaemonSet container that mounts the host's CNI binary and configuration \
        directories (deploy/cni/)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per run: the size of the install variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy meshcap into the CNI binary directory as meshcap-cni, write the plugin's kubeconfig
    /// and add meshcap's stanza as the last plugin of the node's primary network configuration
    /// (the first .conf, .conflist or .json file of the configuration directory; a single
    /// plugin's .conf becomes a .conflist). Running it again changes nothing.
    Install(InstallArgs),
    /// Remove what install added: the stanza (from every network configuration holding it),
    /// the kubeconfig and the binary. A list left with no plugin is removed, and a .conf that
    /// install converted is put back as it was; everything else in the files stays as it is.
    Uninstall(NodePaths),
}

#[derive(Debug, Args)]
pub struct NodePaths {
    /// The host's CNI binary directory, as this container sees it.
    #[arg(
        long,
        env = "MESHCAP_CNI_BIN_DIR",
        value_name = "DIR",
        default_value = "/host/opt/cni/bin"
    )]
    pub cni_bin_dir: PathBuf,

    /// The host's CNI configuration directory, as this container sees it.
    #[arg(
        long,
        env = "MESHCAP_CNI_CONF_DIR",
        value_name = "DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    pub cni_conf_dir: PathBuf,

    /// File name of the plugin's kubeconfig, written into the configuration directory.
    #[arg(
        long,
        env = "MESHCAP_CNI_KUBECONFIG_NAME",
        value_name = "NAME",
        default_value = "meshcap-cni.kubeconfig",
        value_parser = plain_file_name
    )]
    pub kubeconfig_name: String,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub paths: NodePaths,

    /// The same configuration directory as the host sees it: the stanza names the kubeconfig
    /// by this path, since the plugin runs on the host.
    #[arg(
        long,
        env = "MESHCAP_CNI_HOST_CONF_DIR",
        value_name = "DIR",
        default_value = "/etc/cni/net.d",
        value_parser = absolute_path
    )]
    pub host_cni_conf_dir: PathBuf,

    /// The pod's service account directory: token, ca.crt, namespace.
    #[arg(
        long,
        env = "MESHCAP_CNI_SERVICE_ACCOUNT_DIR",
        value_name = "DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    pub service_account_dir: PathBuf,

    /// The API server's address as pods reach it (an IPv6 address is bracketed in the URL).
    #[arg(long, env = "KUBERNETES_SERVICE_HOST", value_name = "HOST", value_parser = non_empty)]
    pub kubernetes_service_host: String,

    /// The API server's port as pods reach it.
    #[arg(long, env = "KUBERNETES_SERVICE_PORT", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub kubernetes_service_port: u16,

    /// Cluster-wide capture options for the stanza's "capture": a JSON object of the
    /// installer's long flag names without dashes and their command-line values, e.g.
    /// '{"backend": "nftables"}'; checked here as the plugin will read them. Pod annotations
    /// still override them.
    #[arg(long, env = "MESHCAP_CNI_CAPTURE", value_name = "JSON", value_parser = capture_object)]
    pub capture: Option<Map<String, Value>>,

    /// Namespaces whose pods the plugin leaves alone (comma-separated; "" for none).
    #[arg(
        long,
        env = "MESHCAP_CNI_EXCLUDE_NAMESPACES",
        value_name = "NS,...",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub exclude_namespaces: Vec<String>,

    /// Ambient mode: the plugin also enrols the pods that carry (or whose namespace carries)
    /// istio.io/dataplane-mode=ambient, through `meshcap ambient agent`'s control socket;
    /// other pods keep the sidecar path. Sets the stanza's "ambient" object.
    #[arg(long, env = "MESHCAP_CNI_AMBIENT", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub ambient: bool,

    /// With --ambient: the node agent's control socket, as the host sees it.
    #[arg(
        long,
        env = "MESHCAP_CNI_AMBIENT_CONTROL_SOCKET",
        value_name = "PATH",
        default_value = crate::ambient::control::DEFAULT_SOCKET,
        value_parser = absolute_path
    )]
    pub ambient_control_socket: PathBuf,

    /// Stay running: put the stanza back when the network configuration is rewritten without
    /// it (or a new primary network appears), rewrite the kubeconfig when the token rotates,
    /// and uninstall on SIGTERM or SIGINT. Without a network configuration yet, wait for one.
    /// Of two watching installers on one node the newer keeps the node: the older stops
    /// writing, says so in its log, and leaves everything installed when it exits.
    #[arg(long, env = "MESHCAP_CNI_WATCH", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub watch: bool,

    /// With --watch: leave everything installed on SIGTERM (Istio's install-cni uninstalls).
    #[arg(long, env = "MESHCAP_CNI_KEEP_ON_EXIT", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub keep_on_exit: bool,

    /// With --watch: also re-check everything this often, in seconds, events or not.
    #[arg(
        long,
        env = "MESHCAP_CNI_RESYNC_SECONDS",
        value_name = "SECONDS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u32).range(1..=86400)
    )]
    pub resync_seconds: u32,
}

impl Cli {
    /// Parses `args` (`args[0]` is `cni`), including the checks between flags.
    pub fn parse_args(args: Vec<std::ffi::OsString>) -> Result<Cli, clap::Error> {
        let cli = Cli::try_parse_from(args)?;
        if let Command::Install(install) = &cli.command {
            // Checked here, not with clap's `requires`: MESHCAP_CNI_KEEP_ON_EXIT=false would
            // count as given.
            if install.keep_on_exit && !install.watch {
                return Err(Cli::command().error(
                    ErrorKind::MissingRequiredArgument,
                    "--keep-on-exit only applies with --watch",
                ));
            }
        }
        Ok(cli)
    }
}

impl InstallArgs {
    /// The namespaces to exclude, empty items dropped (`""` means none).
    pub fn excluded_namespaces(&self) -> Vec<String> {
        self.exclude_namespaces
            .iter()
            .map(|ns| ns.trim().to_owned())
            .filter(|ns| !ns.is_empty())
            .collect()
    }
}

fn plain_file_name(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains('/') || value == "." || value == ".." {
        return Err("expected a plain file name (no '/')".into());
    }
    if std::path::Path::new(value)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| super::confdir::EXTENSIONS.contains(&e))
    {
        return Err("the runtime would load a .conf, .conflist or .json file as a network".into());
    }
    Ok(value.to_owned())
}

fn absolute_path(value: &str) -> Result<PathBuf, String> {
    match value.starts_with('/') {
        true => Ok(PathBuf::from(value)),
        false => Err("expected an absolute path".into()),
    }
}

fn non_empty(value: &str) -> Result<String, String> {
    match value.trim() {
        "" => Err("expected a host name or address".into()),
        v => Ok(v.to_owned()),
    }
}

fn capture_object(value: &str) -> Result<Map<String, Value>, String> {
    let parsed: Value = serde_json::from_str(value).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(capture) = parsed else {
        return Err("expected a JSON object".into());
    };
    check_capture(&capture)?;
    Ok(capture)
}

/// Reads `capture` as the plugin will (its keys, then every value through the installer's
/// validation), so that a mistake fails this container instead of every pod's ADD on the node.
fn check_capture(capture: &Map<String, Value>) -> Result<(), String> {
    let inputs = crate::cni::capture::inputs(capture).map_err(|e| e.msg)?;
    Config::from_inputs(&inputs, &NoPodYet)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The facts of a pod, which the installer has none of: IPv6 `auto` stays undecided, and what
/// the plugin can never read (the pod's resolv.conf, its user names) is missing here too.
struct NoPodYet;

impl HostFacts for NoPodYet {
    fn pod_is_ipv6(&self, _dual_stack: bool) -> Result<Option<bool>, String> {
        Ok(None)
    }

    fn resolv_conf_nameservers(&self) -> Result<Vec<String>, String> {
        Err("a CNI plugin cannot read the pod's resolv.conf: set \"capture-all-dns\" or \"dns-servers\" with \"redirect-dns\"".into())
    }

    fn uid_of(&self, _user: &str) -> Option<u32> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::parse_args(
            std::iter::once("cni")
                .chain(args.iter().copied())
                .map(Into::into)
                .collect(),
        )
    }

    const REQUIRED: [&str; 5] = [
        "install",
        "--kubernetes-service-host",
        "10.96.0.1",
        "--kubernetes-service-port",
        "443",
    ];

    #[test]
    fn defaults_are_the_daemonset_mounts() {
        let Command::Install(args) = parse(&REQUIRED).unwrap().command else {
            panic!("not install")
        };
        assert_eq!(
            args.paths.cni_conf_dir,
            PathBuf::from("/host/etc/cni/net.d")
        );
        assert_eq!(args.paths.cni_bin_dir, PathBuf::from("/host/opt/cni/bin"));
        assert_eq!(args.host_cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(args.excluded_namespaces(), ["kube-system"]);
        assert_eq!(args.capture, None);
        assert!(!args.watch);
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        for (flag, value) in [
            ("--capture", "[1]"),
            ("--capture", "{"),
            ("--capture", r#"{"backend": "pf"}"#),
            ("--capture", r#"{"istio_service_cidr": "*"}"#),
            ("--capture", r#"{"skip-rule-apply": true}"#),
            ("--capture", r#"{"envoy-port": {"a": 1}}"#),
            ("--capture", r#"{"istio-inbound-ports": "80,x"}"#),
            ("--kubeconfig-name", "a/b"),
            ("--kubeconfig-name", "x.conf"),
            ("--host-cni-conf-dir", "etc/cni"),
            ("--kubernetes-service-port", "0"),
            ("--resync-seconds", "0"),
        ] {
            let mut args = REQUIRED.to_vec();
            args.extend([flag, value]);
            let err = parse(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{flag} {value}");
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
        let err = parse(&[
            "install",
            "--keep-on-exit",
            "--kubernetes-service-host",
            "h",
            "--kubernetes-service-port",
            "1",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--watch"), "{err}");
    }

    #[test]
    fn capture_values_are_read_as_the_plugin_reads_them() {
        let mut args = REQUIRED.to_vec();
        let capture = r#"{"backend": "nftables", "envoy-port": 15001, "istio-local-exclude-ports": [15020, "15021"], "redirect-dns": true, "capture-all-dns": "true"}"#;
        args.extend(["--capture", capture]);
        let Command::Install(args) = parse(&args).unwrap().command else {
            panic!("not install")
        };
        let capture = args.capture.unwrap();
        assert_eq!(capture["backend"], "nftables");
        assert_eq!(capture["envoy-port"], 15001);
        let mut args = REQUIRED.to_vec();
        args.extend(["--capture", r#"{"istio-inbound-ports": "80,x"}"#]);
        let err = parse(&args).unwrap_err().to_string();
        assert!(
            err.contains("\"80,x\"") && err.contains("istio-inbound-ports"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_exclusion_list_means_none() {
        let mut args = REQUIRED.to_vec();
        args.extend(["--exclude-namespaces", ""]);
        let Command::Install(args) = parse(&args).unwrap().command else {
            panic!("not install")
        };
        assert!(args.excluded_namespaces().is_empty());
    }
}
