//! The command line: Istio's `istio-iptables` flags, their environment variables and defaults.
//!
//! This module only collects raw text and where it came from (flag, variable or default);
//! [`crate::config`] validates it. Values stay strings here so that a bad value can be reported
//! with the flag or variable that carried it.

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, Parser};
use std::ffi::OsString;

const INBOUND: &str = "Inbound";
const OUTBOUND: &str = "Outbound";
const DNS: &str = "DNS";
const TPROXY: &str = "TPROXY";
const RUN: &str = "Run control";

/// Installs the netfilter rules that send a pod's TCP traffic through its sidecar proxy:
/// a drop-in for Istio's istio-iptables (istio-init), with an iptables-restore backend and a
/// native nftables (netlink) backend.
///
/// Every flag can also be set by the environment variable shown; a flag beats its variable.
/// Lists are comma-separated; empty elements are ignored. Environment-only inputs:
/// ISTIO_OUTBOUND_OWNER_GROUPS (default '*'), ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE,
/// ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR (default 127.0.0.1/32), ENVOY_USER (default istio-proxy).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "meshcap",
    version,
    args_override_self = true,
    max_term_width = 100
)]
pub struct Cli {
    // --- Inbound -------------------------------------------------------------------------
    /// Port the proxy's inbound listener captures on.
    #[arg(allow_hyphen_values = true, short = 'z', long, env = "INBOUND_CAPTURE_PORT", default_value = "15006", help_heading = INBOUND)]
    pub inbound_capture_port: String,

    /// Inbound tunnel (HBONE) port, never redirected.
    #[arg(allow_hyphen_values = true, short = 'e', long, env = "INBOUND_TUNNEL_PORT", default_value = "15008", help_heading = INBOUND)]
    pub inbound_tunnel_port: String,

    /// Inbound interception mode: REDIRECT or TPROXY (any case; empty means REDIRECT).
    #[arg(allow_hyphen_values = true, short = 'm', long, env = "ISTIO_INBOUND_INTERCEPTION_MODE", default_value = "", hide_default_value = true, help_heading = INBOUND)]
    pub istio_inbound_interception_mode: String,

    /// Inbound ports to capture: '*' for all, a list, or "" for none [default: ""].
    #[arg(allow_hyphen_values = true, short = 'b', long, env = "ISTIO_INBOUND_PORTS", default_value = "", hide_default_value = true, help_heading = INBOUND)]
    pub istio_inbound_ports: String,

    /// Inbound ports never captured; used only with -b '*'.
    #[arg(allow_hyphen_values = true, short = 'd', long, env = "ISTIO_LOCAL_EXCLUDE_PORTS", default_value = "", hide_default_value = true, help_heading = INBOUND)]
    pub istio_local_exclude_ports: String,

    /// Interfaces whose traffic is never captured, inbound or outbound.
    #[arg(allow_hyphen_values = true, short = 'c', long, env = "ISTIO_EXCLUDE_INTERFACES", default_value = "", hide_default_value = true, help_heading = INBOUND)]
    pub istio_exclude_interfaces: String,

    /// Interfaces (e.g. KubeVirt VM bridges) whose traffic is treated as outbound.
    #[arg(allow_hyphen_values = true, short = 'k', long, env = "KUBE_VIRT_INTERFACES", default_value = "", hide_default_value = true, help_heading = INBOUND)]
    pub kube_virt_interfaces: String,

    // --- Outbound ------------------------------------------------------------------------
    /// Port the proxy's outbound listener captures on.
    #[arg(allow_hyphen_values = true, short = 'p', long, env = "ENVOY_PORT", default_value = "15001", help_heading = OUTBOUND)]
    pub envoy_port: String,

    /// Proxy uid(s), whose traffic is never captured [default: uid of $ENVOY_USER, else 1337].
    #[arg(allow_hyphen_values = true, short = 'u', long, env = "PROXY_UID", default_value = "", hide_default_value = true, help_heading = OUTBOUND)]
    pub proxy_uid: String,

    /// Proxy gid(s), whose traffic is never captured [default: the uid value].
    #[arg(allow_hyphen_values = true, short = 'g', long, env = "PROXY_GID", default_value = "", hide_default_value = true, help_heading = OUTBOUND)]
    pub proxy_gid: String,

    /// Outbound CIDRs to capture: '*' for all, a list, or "" for none [default: ""].
    #[arg(allow_hyphen_values = true, short = 'i', long, env = "ISTIO_SERVICE_CIDR", default_value = "", hide_default_value = true, help_heading = OUTBOUND)]
    pub istio_service_cidr: String,

    /// Outbound CIDRs never captured.
    #[arg(allow_hyphen_values = true, short = 'x', long, env = "ISTIO_SERVICE_EXCLUDE_CIDR", default_value = "", hide_default_value = true, help_heading = OUTBOUND)]
    pub istio_service_exclude_cidr: String,

    /// Outbound TCP ports always captured, whatever the destination.
    #[arg(allow_hyphen_values = true, short = 'q', long, env = "ISTIO_OUTBOUND_PORTS", default_value = "", hide_default_value = true, help_heading = OUTBOUND)]
    pub istio_outbound_ports: String,

    /// Outbound ports (TCP and UDP) never captured.
    #[arg(allow_hyphen_values = true, short = 'o', long, env = "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", default_value = "", hide_default_value = true, help_heading = OUTBOUND)]
    pub istio_local_outbound_ports_exclude: String,

    // --- DNS -----------------------------------------------------------------------------
    /// Redirect DNS (port 53) to the agent on 15053 [env alias: ISTIO_META_DNS_CAPTURE].
    #[arg(long, env = "REDIRECT_DNS", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", help_heading = DNS)]
    pub redirect_dns: String,

    /// With --redirect-dns: capture DNS to every server, not only those of /etc/resolv.conf.
    #[arg(long, env = "CAPTURE_ALL_DNS", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", help_heading = DNS)]
    pub capture_all_dns: String,

    /// DNS servers to capture (IPv4 and IPv6 mixed; "" for none) [default: read /etc/resolv.conf].
    #[arg(allow_hyphen_values = true, long, env = "MESHCAP_DNS_SERVERS", help_heading = DNS)]
    pub dns_servers: Option<String>,

    // --- TPROXY --------------------------------------------------------------------------
    /// Packet mark of TPROXYed inbound packets.
    #[arg(allow_hyphen_values = true, short = 't', long, env = "ISTIO_INBOUND_TPROXY_MARK", default_value = "1337", help_heading = TPROXY)]
    pub istio_inbound_tproxy_mark: String,

    /// Routing table that delivers marked packets locally.
    #[arg(allow_hyphen_values = true, short = 'r', long, env = "ISTIO_INBOUND_TPROXY_ROUTE_TABLE", default_value = "133", help_heading = TPROXY)]
    pub istio_inbound_tproxy_route_table: String,

    /// TPROXY: packets already carrying the TPROXY mark leave over lo uncaptured (nat), so a proxy
    /// running as the proxy uid can connect to the app from the peer's address. Istio runs Envoy
    /// as uid 0 / gid 1337 in TPROXY pods instead and has no such rule (off by default).
    #[arg(long, env = "MESHCAP_TPROXY_RETURN_MARKED", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", help_heading = TPROXY)]
    pub tproxy_return_marked: String,

    /// Hardened rules (see SECURITY.md): exempt the proxy by uid only, and let only the proxy
    /// uid use the 127.0.0.6 / ::6 passthrough. Istio's rules (the default) also exempt every
    /// process with the proxy's gid and anyone who binds 127.0.0.6.
    #[arg(long, env = "MESHCAP_STRICT", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", help_heading = OUTBOUND)]
    pub strict: String,

    // --- Run control ---------------------------------------------------------------------
    /// Print the rules; touch nothing (needs no privileges).
    #[arg(short = 'n', long, env = "DRY_RUN", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", help_heading = RUN)]
    pub dry_run: String,

    /// IPv6 rules: on, off, or auto (on when the pod has a global IPv6 address, as Istio decides).
    #[arg(allow_hyphen_values = true, long, env = "MESHCAP_IPV6", default_value = "auto", help_heading = RUN)]
    pub ipv6: String,

    /// Backend: iptables (iptables-restore) or nftables (native netlink).
    #[arg(allow_hyphen_values = true, long, env = "MESHCAP_BACKEND", default_value = "iptables", help_heading = RUN)]
    pub backend: String,

    /// Same as --backend nftables.
    #[arg(long, env = "NATIVE_NFTABLES", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", help_heading = RUN)]
    pub native_nftables: String,

    /// Use this iptables variant: legacy or nft [default: legacy if it holds rules, else nft].
    #[arg(allow_hyphen_values = true, long, env = "FORCE_IPTABLES_BINARY", help_heading = RUN)]
    pub force_iptables_binary: Option<String>,

    /// Drop packets conntrack finds INVALID instead of letting them reset connections
    /// [env alias: INVALID_DROP].
    #[arg(long, env = "DROP_INVALID", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", help_heading = RUN)]
    pub drop_invalid: String,

    /// Accepted for compatibility with Istio [env alias: ISTIO_DUAL_STACK].
    #[arg(long, env = "DUAL_STACK", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", help_heading = RUN)]
    pub dual_stack: String,

    /// Port the validation probe uses.
    #[arg(allow_hyphen_values = true, long, env = "IPTABLES_PROBE_PORT", default_value = "15002", help_heading = RUN)]
    pub iptables_probe_port: String,

    /// How long the validation probe waits (e.g. 5s, 500ms).
    #[arg(allow_hyphen_values = true, long, env = "PROBE_TIMEOUT", default_value = "5s", help_heading = RUN)]
    pub probe_timeout: String,

    /// Build and validate, but do not apply rules.
    #[arg(long, env = "SKIP_RULE_APPLY", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", help_heading = RUN)]
    pub skip_rule_apply: String,

    /// After applying, prove the redirection works with a probe connection.
    #[arg(long, env = "RUN_VALIDATION", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", help_heading = RUN)]
    pub run_validation: String,

    /// Network namespace (a path such as /var/run/netns/NAME) to apply the rules in.
    #[arg(allow_hyphen_values = true, long, env = "NETWORK_NAMESPACE", help_heading = RUN)]
    pub network_namespace: Option<String>,

    /// When rules of another configuration are present, remove them and apply these.
    #[arg(long, env = "RECONCILE", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", help_heading = RUN)]
    pub reconcile: String,

    /// Remove meshcap's (and Istio's) rules, apply nothing.
    #[arg(long, env = "CLEANUP_ONLY", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", help_heading = RUN)]
    pub cleanup_only: String,

    /// Apply even when the rules seem to be in place already.
    #[arg(long, env = "FORCE_APPLY", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", help_heading = RUN)]
    pub force_apply: String,
}

/// Environment variables that have no flag (Istio reads them from the environment only), and the
/// old names Istio still accepts for some flags.
const ENV_ONLY: [&str; 4] = [
    "ISTIO_OUTBOUND_OWNER_GROUPS",
    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
    "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
    "ENVOY_USER",
];
const ENV_ALIASES: [(&str, &str); 3] = [
    ("redirect_dns", "ISTIO_META_DNS_CAPTURE"),
    ("drop_invalid", "INVALID_DROP"),
    ("dual_stack", "ISTIO_DUAL_STACK"),
];

/// Where a raw value came from; config errors name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A flag on the command line, e.g. `-b/--istio-inbound-ports`.
    Flag(String),
    /// An environment variable.
    Env(String),
    /// The built-in default.
    Default(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(name) => write!(f, "flag {name}"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Default(name) => write!(f, "default of {name}"),
        }
    }
}

/// A raw value and its origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raw {
    pub text: String,
    pub origin: Origin,
}

/// Parsed command line: the flags' raw values plus where each came from. Config reads every
/// value raw through [`Inputs::get`] (to name the flag or variable in its errors), so the typed
/// [`Cli`] is never extracted: it only defines the command.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The command the arguments were matched against, kept to name flags in errors
    /// (building it again for each lookup would dominate meshcap's start-up time).
    command: clap::Command,
    matches: ArgMatches,
    env: Vec<(String, String)>,
}

impl Inputs {
    /// Parses `args` (with the program name first) against the given environment.
    /// Clap errors (unknown flag, missing value, `--help`) are returned as clap errors.
    pub fn parse_from<I, T>(args: I, env: Vec<(String, String)>) -> Result<Inputs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        // clap reads `env = ...` from the process environment; tests pass their own, so the
        // process environment must agree with `env` (see `with_env` in the tests).
        // Matching through `&mut` keeps the command for later lookups without cloning its ~60
        // arguments (a clone showed in the start-up profile).
        let mut command = Cli::command();
        let matches = command.try_get_matches_from_mut(args)?;
        Ok(Inputs {
            command,
            matches,
            env,
        })
    }

    /// Parses the process's arguments and environment.
    pub fn from_process() -> Result<Inputs, clap::Error> {
        Inputs::parse_from(std::env::args_os(), std::env::vars().collect())
    }

    /// Looks up a variable of the environment this run was given.
    pub fn env_var(&self, name: &str) -> Option<Raw> {
        debug_assert!(ENV_ONLY.contains(&name) || ENV_ALIASES.iter().any(|(_, n)| *n == name));
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| Raw {
                text: v.clone(),
                origin: Origin::Env(name.to_owned()),
            })
    }

    /// The raw value of the argument `id` (a field name of [`Cli`]) and its origin. For
    /// arguments with an old variable name (see `ENV_ALIASES`), that variable is used when
    /// neither the flag nor the current variable is set.
    pub fn get(&self, id: &str) -> Option<Raw> {
        let arg = self
            .command
            .get_arguments()
            .find(|a| a.get_id() == id)
            .unwrap_or_else(|| panic!("no argument {id}"));
        let flag = match (arg.get_short(), arg.get_long()) {
            (Some(s), Some(l)) => format!("-{s}/--{l}"),
            (None, Some(l)) => format!("--{l}"),
            _ => id.to_owned(),
        };
        let env_name = arg
            .get_env()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let source = self.matches.value_source(id);
        if source == Some(ValueSource::DefaultValue) || source.is_none() {
            if let Some((_, alias)) = ENV_ALIASES.iter().find(|(a, _)| *a == id) {
                if let Some(raw) = self.env_var(alias) {
                    return Some(raw);
                }
            }
        }
        let text = self.matches.get_one::<String>(id)?.clone();
        let origin = match source {
            Some(ValueSource::CommandLine) => Origin::Flag(flag),
            Some(ValueSource::EnvVariable) => Origin::Env(env_name),
            _ => Origin::Default(flag),
        };
        Some(Raw { text, origin })
    }
}
