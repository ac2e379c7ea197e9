//! The command line: Istio's `istio-iptables` flags, their environment variables and defaults.
//!
//! This module only collects raw text and where it came from (flag, variable or default) into
//! [`Inputs`]; [`crate::config`] validates it. The environment is an explicit input: clap's own
//! reading of the process environment is switched off, so that tests and the CNI plugin decide
//! what environment a run sees.

pub use crate::inputs::{Inputs, Opt, Origin, Raw};
use clap::parser::ValueSource;
use clap::{Command, CommandFactory, Parser};
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

/// Old environment variable names Istio still accepts for some flags; the current name wins.
const ENV_ALIASES: [(Opt, &str); 3] = [
    (Opt::RedirectDns, "ISTIO_META_DNS_CAPTURE"),
    (Opt::DropInvalid, "INVALID_DROP"),
    (Opt::DualStack, "ISTIO_DUAL_STACK"),
];

/// What the command says about one option: how to name it, its variable and its default.
struct OptSpec {
    opt: Opt,
    /// `-b/--istio-inbound-ports` or `--ipv6`.
    flag: String,
    env: Option<String>,
    default: Option<String>,
}

fn specs(command: &Command) -> Vec<OptSpec> {
    Opt::ALL
        .iter()
        .map(|&opt| {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == opt.id())
                .unwrap_or_else(|| panic!("Cli has no argument {}", opt.id()));
            let flag = match (arg.get_short(), arg.get_long()) {
                (Some(s), Some(l)) => format!("-{s}/--{l}"),
                (None, Some(l)) => format!("--{l}"),
                _ => opt.id().to_owned(),
            };
            OptSpec {
                opt,
                flag,
                env: arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                default: arg
                    .get_default_values()
                    .first()
                    .map(|v| v.to_string_lossy().into_owned()),
            }
        })
        .collect()
}

impl Inputs {
    /// Every option at the installer's default (none given on a command line or in `env`);
    /// env-only inputs are read from `env`.
    pub fn defaults(env: Vec<(String, String)>) -> Inputs {
        let mut inputs = Inputs::empty(env);
        for spec in specs(&Cli::command()) {
            if let Some(default) = spec.default {
                inputs.set(spec.opt, default, Origin::Default(spec.flag));
            }
        }
        inputs
    }

    /// Parses `args` (with the program name first) against the environment `env`: a flag beats
    /// its variable (or, failing that, its old name), which beats the default. Clap errors
    /// (unknown flag, missing value, `--help`) are returned as clap errors.
    pub fn parse_from<I, T>(args: I, env: Vec<(String, String)>) -> Result<Inputs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        // Matching through `&mut` keeps the command for the spec lookups without cloning it.
        let mut command = Cli::command().mut_args(|a| a.env(None));
        let matches = match command.try_get_matches_from_mut(&args) {
            Ok(matches) => matches,
            // Help lists each flag's variable: render it from the command that still has them.
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
                return Err(Cli::command()
                    .try_get_matches_from(&args)
                    .expect_err("--help still asks for help"));
            }
            Err(e) => return Err(e),
        };
        let full = Cli::command();
        let mut inputs = Inputs::empty(env);
        for spec in specs(&full) {
            let id = spec.opt.id();
            if matches.value_source(id) == Some(ValueSource::CommandLine) {
                let text = matches.get_one::<String>(id).expect("a given flag").clone();
                inputs.set(spec.opt, text, Origin::Flag(spec.flag));
                continue;
            }
            let variable = spec.env.as_deref().and_then(|name| inputs.env_var(name));
            let alias = || {
                ENV_ALIASES
                    .iter()
                    .find(|(o, _)| *o == spec.opt)
                    .and_then(|(_, name)| inputs.env_var(name))
            };
            if let Some(raw) = variable.or_else(alias) {
                inputs.set(spec.opt, raw.text, raw.origin);
            } else if let Some(default) = spec.default {
                inputs.set(spec.opt, default, Origin::Default(spec.flag));
            }
        }
        Ok(inputs)
    }
}

/// The validated configuration of an installer command line (`args` with the program name
/// first), for the binary's edge: on bad input the error is printed as the installer prints it
/// and the exit status returned (clap's own errors, `--help` included, exit as clap does).
pub fn config_or_exit<I, T>(
    args: I,
    env: Vec<(String, String)>,
) -> Result<crate::config::Config, std::process::ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let inputs = Inputs::parse_from(args, env).unwrap_or_else(|e| e.exit());
    crate::config::Config::from_inputs(&inputs, &crate::config::SystemHost).map_err(|e| {
        eprintln!("meshcap: {e}");
        std::process::ExitCode::from(e.exit_code() as u8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_an_opt_and_every_opt_a_flag() {
        let command = Cli::command();
        let ids: Vec<&str> = command
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .filter(|id| *id != "help" && *id != "version")
            .collect();
        assert_eq!(ids.len(), Opt::ALL.len());
        for opt in Opt::ALL {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == opt.id())
                .unwrap_or_else(|| panic!("{opt:?}"));
            assert_eq!(arg.get_long(), Some(opt.long().as_str()), "{opt:?}");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flag_beats_variable_beats_old_name_beats_default() {
        let e = env(&[
            ("ISTIO_INBOUND_PORTS", "80"),
            ("REDIRECT_DNS", "false"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("INVALID_DROP", "true"),
        ]);
        let inputs = Inputs::parse_from(["meshcap", "-b", "443"], e.clone()).unwrap();
        let b = inputs.get(Opt::InboundPorts).unwrap();
        assert_eq!(
            (b.text.as_str(), b.origin.to_string()),
            ("443", "flag -b/--istio-inbound-ports".into())
        );
        let inputs = Inputs::parse_from(["meshcap"], e).unwrap();
        let b = inputs.get(Opt::InboundPorts).unwrap();
        assert_eq!(b.origin, Origin::Env("ISTIO_INBOUND_PORTS".into()));
        assert_eq!(inputs.get(Opt::RedirectDns).unwrap().text, "false");
        let drop = inputs.get(Opt::DropInvalid).unwrap();
        assert_eq!(drop.origin, Origin::Env("INVALID_DROP".into()));
        let port = inputs.get(Opt::ProxyPort).unwrap();
        assert_eq!(
            port,
            Raw {
                text: "15001".into(),
                origin: Origin::Default("-p/--envoy-port".into())
            }
        );
        assert_eq!(inputs.get(Opt::DnsServers), None);
    }

    #[test]
    fn the_process_environment_is_not_read() {
        // SAFETY: tests of this binary pass their environment explicitly; only clap could read
        // this variable, and it must not.
        unsafe { std::env::set_var("MESHCAP_BACKEND", "nftables") };
        let inputs = Inputs::parse_from(["meshcap"], Vec::new()).unwrap();
        // SAFETY: as above.
        unsafe { std::env::remove_var("MESHCAP_BACKEND") };
        let backend = inputs.get(Opt::Backend).unwrap();
        assert_eq!(backend.text, "iptables");
        assert!(matches!(backend.origin, Origin::Default(_)));
    }

    #[test]
    fn defaults_match_a_bare_command_line() {
        let bare = Inputs::parse_from(["meshcap"], Vec::new()).unwrap();
        let defaults = Inputs::defaults(Vec::new());
        for &opt in Opt::ALL {
            assert_eq!(bare.get(opt), defaults.get(opt), "{opt:?}");
        }
    }

    #[test]
    fn help_still_names_the_variables() {
        let err = Inputs::parse_from(["meshcap", "--help"], Vec::new()).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(err.to_string().contains("ISTIO_INBOUND_PORTS"));
    }
}
