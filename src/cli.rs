//! The command line: Istio's `istio-iptables` flags, their environment variables and defaults.
//!
//! This module only collects raw text and where it came from (flag, variable or default) into
//! [`Inputs`]; [`crate::config`] validates it. The environment is an explicit input: clap's own
//! reading of the process environment is switched off, so that tests and the CNI plugin decide
//! what environment a run sees.

pub use crate::inputs::{Inputs, Opt, Origin, Raw};
use clap::Parser;
use std::ffi::OsString;

const INBOUND: &str = "Inbound";
const OUTBOUND: &str = "Outbound";
const DNS: &str = "DNS";
const TPROXY: &str = "TPROXY";
const RUN: &str = "Run control";
const LOGGING: &str = "Logging (Istio's flags)";

/// Installs the netfilter rules that send a pod's TCP traffic through its sidecar proxy:
/// a drop-in for Istio's istio-iptables (istio-init), with an iptables-restore backend and a
/// native nftables (netlink) backend.
///
/// The arguments Istio's injector writes run as they are: `meshcap istio-iptables -p 15001 -z
/// 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020
/// --log_output_level=default:info`. The leading word istio-iptables is optional;
/// istio-clean-iptables instead means --cleanup-only.
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
    max_term_width = 100,
    override_usage = "meshcap [istio-iptables | istio-clean-iptables | diff] [OPTIONS]"
)]
pub struct Cli {
    // --- Inbound -------------------------------------------------------------------------
    /// Port the proxy's inbound listener captures on.
    #[arg(allow_hyphen_values = true, short = Opt::InboundCapturePort.short(), long, env = Opt::InboundCapturePort.env(), default_value = Opt::InboundCapturePort.default_text(), help_heading = INBOUND)]
    pub inbound_capture_port: Option<String>,

    /// Inbound tunnel (HBONE) port, never redirected.
    #[arg(allow_hyphen_values = true, short = Opt::InboundTunnelPort.short(), long, env = Opt::InboundTunnelPort.env(), default_value = Opt::InboundTunnelPort.default_text(), help_heading = INBOUND)]
    pub inbound_tunnel_port: Option<String>,

    /// Inbound interception mode: REDIRECT or TPROXY (any case; empty means REDIRECT).
    #[arg(allow_hyphen_values = true, short = Opt::InterceptionMode.short(), long, env = Opt::InterceptionMode.env(), default_value = Opt::InterceptionMode.default_text(), hide_default_value = true, help_heading = INBOUND)]
    pub istio_inbound_interception_mode: Option<String>,

    /// Inbound ports to capture: '*' for all, a list, or "" for none [default: ""].
    #[arg(allow_hyphen_values = true, short = Opt::InboundPorts.short(), long, env = Opt::InboundPorts.env(), default_value = Opt::InboundPorts.default_text(), hide_default_value = true, help_heading = INBOUND)]
    pub istio_inbound_ports: Option<String>,

    /// Inbound ports never captured; used only with -b '*'.
    #[arg(allow_hyphen_values = true, short = Opt::InboundPortsExclude.short(), long, env = Opt::InboundPortsExclude.env(), default_value = Opt::InboundPortsExclude.default_text(), hide_default_value = true, help_heading = INBOUND)]
    pub istio_local_exclude_ports: Option<String>,

    /// Interfaces whose traffic is never captured, inbound or outbound.
    #[arg(allow_hyphen_values = true, short = Opt::ExcludeInterfaces.short(), long, env = Opt::ExcludeInterfaces.env(), default_value = Opt::ExcludeInterfaces.default_text(), hide_default_value = true, help_heading = INBOUND)]
    pub istio_exclude_interfaces: Option<String>,

    /// Interfaces (e.g. KubeVirt VM bridges) whose traffic is treated as outbound.
    #[arg(allow_hyphen_values = true, short = Opt::KubeVirtInterfaces.short(), long, env = Opt::KubeVirtInterfaces.env(), default_value = Opt::KubeVirtInterfaces.default_text(), hide_default_value = true, help_heading = INBOUND)]
    pub kube_virt_interfaces: Option<String>,

    // --- Outbound ------------------------------------------------------------------------
    /// Port the proxy's outbound listener captures on.
    #[arg(allow_hyphen_values = true, short = Opt::ProxyPort.short(), long, env = Opt::ProxyPort.env(), default_value = Opt::ProxyPort.default_text(), help_heading = OUTBOUND)]
    pub envoy_port: Option<String>,

    /// Proxy uid(s), whose traffic is never captured [default: uid of $ENVOY_USER, else 1337].
    #[arg(allow_hyphen_values = true, short = Opt::ProxyUid.short(), long, env = Opt::ProxyUid.env(), default_value = Opt::ProxyUid.default_text(), hide_default_value = true, help_heading = OUTBOUND)]
    pub proxy_uid: Option<String>,

    /// Proxy gid(s), whose traffic is never captured [default: the uid value].
    #[arg(allow_hyphen_values = true, short = Opt::ProxyGid.short(), long, env = Opt::ProxyGid.env(), default_value = Opt::ProxyGid.default_text(), hide_default_value = true, help_heading = OUTBOUND)]
    pub proxy_gid: Option<String>,

    /// Outbound CIDRs to capture: '*' for all, a list, or "" for none [default: ""].
    #[arg(allow_hyphen_values = true, short = Opt::OutboundCidrs.short(), long, env = Opt::OutboundCidrs.env(), default_value = Opt::OutboundCidrs.default_text(), hide_default_value = true, help_heading = OUTBOUND)]
    pub istio_service_cidr: Option<String>,

    /// Outbound CIDRs never captured.
    #[arg(allow_hyphen_values = true, short = Opt::OutboundCidrsExclude.short(), long, env = Opt::OutboundCidrsExclude.env(), default_value = Opt::OutboundCidrsExclude.default_text(), hide_default_value = true, help_heading = OUTBOUND)]
    pub istio_service_exclude_cidr: Option<String>,

    /// Outbound TCP ports always captured, whatever the destination.
    #[arg(allow_hyphen_values = true, short = Opt::OutboundPorts.short(), long, env = Opt::OutboundPorts.env(), default_value = Opt::OutboundPorts.default_text(), hide_default_value = true, help_heading = OUTBOUND)]
    pub istio_outbound_ports: Option<String>,

    /// Outbound ports (TCP and UDP) never captured.
    #[arg(allow_hyphen_values = true, short = Opt::OutboundPortsExclude.short(), long, env = Opt::OutboundPortsExclude.env(), default_value = Opt::OutboundPortsExclude.default_text(), hide_default_value = true, help_heading = OUTBOUND)]
    pub istio_local_outbound_ports_exclude: Option<String>,

    // --- DNS -----------------------------------------------------------------------------
    /// Redirect DNS (port 53) to the agent on 15053 [env alias: ISTIO_META_DNS_CAPTURE].
    #[arg(long, env = Opt::RedirectDns.env(), num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = Opt::RedirectDns.default_text(), help_heading = DNS)]
    pub redirect_dns: Option<String>,

    /// With --redirect-dns: capture DNS to every server, not only those of /etc/resolv.conf.
    #[arg(long, env = Opt::CaptureAllDns.env(), num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = Opt::CaptureAllDns.default_text(), help_heading = DNS)]
    pub capture_all_dns: Option<String>,

    /// DNS servers to capture (IPv4 and IPv6 mixed; "" for none) [default: read /etc/resolv.conf].
    #[arg(allow_hyphen_values = true, long, env = Opt::DnsServers.env(), help_heading = DNS)]
    pub dns_servers: Option<String>,

    // --- TPROXY --------------------------------------------------------------------------
    /// Packet mark of TPROXYed inbound packets.
    #[arg(allow_hyphen_values = true, short = Opt::TproxyMark.short(), long, env = Opt::TproxyMark.env(), default_value = Opt::TproxyMark.default_text(), help_heading = TPROXY)]
    pub istio_inbound_tproxy_mark: Option<String>,

    /// Routing table that delivers marked packets locally.
    #[arg(allow_hyphen_values = true, short = Opt::TproxyRouteTable.short(), long, env = Opt::TproxyRouteTable.env(), default_value = Opt::TproxyRouteTable.default_text(), help_heading = TPROXY)]
    pub istio_inbound_tproxy_route_table: Option<String>,

    /// TPROXY: packets already carrying the TPROXY mark leave over lo uncaptured (nat), so a proxy
    /// running as the proxy uid can connect to the app from the peer's address. Istio runs Envoy
    /// as uid 0 / gid 1337 in TPROXY pods instead and has no such rule (off by default).
    #[arg(long, env = Opt::TproxyReturnMarked.env(), num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = Opt::TproxyReturnMarked.default_text(), help_heading = TPROXY)]
    pub tproxy_return_marked: Option<String>,

    /// Hardened rules (see SECURITY.md): exempt the proxy by uid only, and let only the proxy
    /// uid use the 127.0.0.6 / ::6 passthrough. Istio's rules (the default) also exempt every
    /// process with the proxy's gid and anyone who binds 127.0.0.6.
    #[arg(long, env = Opt::Strict.env(), num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = Opt::Strict.default_text(), help_heading = OUTBOUND)]
    pub strict: Option<String>,

    // --- Run control ---------------------------------------------------------------------
    /// Print the rules; touch nothing (needs no privileges).
    #[arg(short = Opt::DryRun.short(), long, env = Opt::DryRun.env(), num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = Opt::DryRun.default_text(), help_heading = RUN)]
    pub dry_run: Option<String>,

    /// IPv6 rules: on, off, or auto (on when the pod has a global IPv6 address, as Istio decides).
    #[arg(allow_hyphen_values = true, long, env = Opt::Ipv6.env(), default_value = Opt::Ipv6.default_text(), help_heading = RUN)]
    pub ipv6: Option<String>,

    /// Backend: iptables (iptables-restore) or nftables (native netlink).
    #[arg(allow_hyphen_values = true, long, env = Opt::Backend.env(), default_value = Opt::Backend.default_text(), help_heading = RUN)]
    pub backend: Option<String>,

    /// Same as --backend nftables.
    #[arg(long, env = Opt::NativeNftables.env(), num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = Opt::NativeNftables.default_text(), help_heading = RUN)]
    pub native_nftables: Option<String>,

    /// Use this iptables variant: legacy or nft [default: legacy if it holds rules, else nft].
    #[arg(allow_hyphen_values = true, long, env = Opt::ForceIptablesBinary.env(), help_heading = RUN)]
    pub force_iptables_binary: Option<String>,

    /// Drop packets conntrack finds INVALID instead of letting them reset connections
    /// [env alias: INVALID_DROP].
    #[arg(long, env = Opt::DropInvalid.env(), num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = Opt::DropInvalid.default_text(), help_heading = RUN)]
    pub drop_invalid: Option<String>,

    /// Accepted for compatibility with Istio [env alias: ISTIO_DUAL_STACK].
    #[arg(long, env = Opt::DualStack.env(), num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = Opt::DualStack.default_text(), help_heading = RUN)]
    pub dual_stack: Option<String>,

    /// Port the validation probe uses.
    #[arg(allow_hyphen_values = true, long, env = Opt::ProbePort.env(), default_value = Opt::ProbePort.default_text(), help_heading = RUN)]
    pub iptables_probe_port: Option<String>,

    /// How long the validation probe waits (e.g. 5s, 500ms).
    #[arg(allow_hyphen_values = true, long, env = Opt::ProbeTimeout.env(), default_value = Opt::ProbeTimeout.default_text(), help_heading = RUN)]
    pub probe_timeout: Option<String>,

    /// Build and validate, but do not apply rules.
    #[arg(long, env = Opt::SkipRuleApply.env(), num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = Opt::SkipRuleApply.default_text(), help_heading = RUN)]
    pub skip_rule_apply: Option<String>,

    /// After applying, prove the redirection works with a probe connection.
    #[arg(long, env = Opt::RunValidation.env(), num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = Opt::RunValidation.default_text(), help_heading = RUN)]
    pub run_validation: Option<String>,

    /// Network namespace (a path such as /var/run/netns/NAME) to apply the rules in.
    #[arg(allow_hyphen_values = true, long, env = Opt::NetworkNamespace.env(), help_heading = RUN)]
    pub network_namespace: Option<String>,

    /// When rules of another configuration are present, remove them and apply these.
    #[arg(long, env = Opt::Reconcile.env(), num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = Opt::Reconcile.default_text(), help_heading = RUN)]
    pub reconcile: Option<String>,

    /// Remove meshcap's (and Istio's) rules, apply nothing.
    #[arg(long, env = Opt::CleanupOnly.env(), num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = Opt::CleanupOnly.default_text(), help_heading = RUN)]
    pub cleanup_only: Option<String>,

    /// Apply even when the rules seem to be in place already.
    #[arg(long, env = Opt::ForceApply.env(), num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = Opt::ForceApply.default_text(), help_heading = RUN)]
    pub force_apply: Option<String>,

    #[command(flatten)]
    pub log: LogFlags,
}

/// Istio's logging flags, which pilot-agent accepts on every subcommand and Istio's injector
/// passes to the init container; see [`crate::logging`] for what each does here.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFlags {
    /// SCOPE:LEVEL pairs, comma-separated (levels none, error, warn, info, debug): the default
    /// scope's level is meshcap's; other scopes are accepted [default: default:info].
    #[arg(long = "log_output_level", value_name = "SCOPE:LEVEL,...", value_parser = crate::logging::OutputLevels::parse, help_heading = LOGGING)]
    pub log_output_level: Option<crate::logging::OutputLevels>,

    /// Log one JSON object per line (time, level, msg).
    #[arg(long = "log_as_json", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, help_heading = LOGGING)]
    pub log_as_json: Option<bool>,

    /// Scopes whose lines name their source file and line (any scope: all of meshcap's).
    #[arg(long = "log_caller", value_name = "SCOPES", help_heading = LOGGING)]
    pub log_caller: Option<String>,

    /// Where log lines go: stdout, stderr or a file [default: stderr].
    #[arg(long = "log_target", value_name = "TARGET", action = clap::ArgAction::Append, help_heading = LOGGING)]
    pub log_target: Vec<String>,

    /// Accepted for Istio; meshcap logs no stack traces.
    #[arg(long = "log_stacktrace_level", value_name = "SCOPE:LEVEL,...", value_parser = crate::logging::OutputLevels::parse, help_heading = LOGGING)]
    pub log_stacktrace_level: Option<crate::logging::OutputLevels>,

    /// Accepted for Istio; meshcap does not rotate its log.
    #[arg(long = "log_rotate", value_name = "PATH", help_heading = LOGGING)]
    pub log_rotate: Option<String>,

    /// Accepted for Istio (days); meshcap does not rotate its log.
    #[arg(long = "log_rotate_max_age", value_name = "DAYS", help_heading = LOGGING)]
    pub log_rotate_max_age: Option<i64>,

    /// Accepted for Istio (megabytes); meshcap does not rotate its log.
    #[arg(long = "log_rotate_max_size", value_name = "MB", help_heading = LOGGING)]
    pub log_rotate_max_size: Option<i64>,

    /// Accepted for Istio; meshcap does not rotate its log.
    #[arg(long = "log_rotate_max_backups", value_name = "N", help_heading = LOGGING)]
    pub log_rotate_max_backups: Option<i64>,
}

/// A boolean as Go's flag package spells it (`--log_as_json=false`).
fn go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{text:?} is not a boolean")),
    }
}

impl LogFlags {
    /// What these flags make of meshcap's logging.
    pub fn settings(&self) -> crate::logging::Settings {
        let mut settings = crate::logging::Settings::default();
        if let Some(level) = self.log_output_level.and_then(|l| l.own) {
            settings.level = level;
        }
        settings.json = self.log_as_json.unwrap_or(false);
        settings.caller = self.log_caller.as_deref().is_some_and(|s| !s.is_empty());
        if let Some(target) = self.log_target.first() {
            settings.target = crate::logging::Target::parse(target);
        }
        settings
    }
}

impl Cli {
    /// Parses a command line (the program name first) into what it gives: an option's field is
    /// `Some` only when a flag set it. Variables and defaults are [`Inputs`]' business, so
    /// clap's own reading of both is switched off (help still lists them).
    pub fn try_parse_given<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        parse_given(args)
    }

    /// Each installer option with the text its flag gave, if any, and Istio's logging flags.
    pub fn into_parts(self) -> (Vec<(Opt, Option<String>)>, LogFlags) {
        let given = vec![
            (Opt::InboundCapturePort, self.inbound_capture_port),
            (Opt::InboundTunnelPort, self.inbound_tunnel_port),
            (Opt::InterceptionMode, self.istio_inbound_interception_mode),
            (Opt::InboundPorts, self.istio_inbound_ports),
            (Opt::InboundPortsExclude, self.istio_local_exclude_ports),
            (Opt::ExcludeInterfaces, self.istio_exclude_interfaces),
            (Opt::KubeVirtInterfaces, self.kube_virt_interfaces),
            (Opt::ProxyPort, self.envoy_port),
            (Opt::ProxyUid, self.proxy_uid),
            (Opt::ProxyGid, self.proxy_gid),
            (Opt::OutboundCidrs, self.istio_service_cidr),
            (Opt::OutboundCidrsExclude, self.istio_service_exclude_cidr),
            (Opt::OutboundPorts, self.istio_outbound_ports),
            (
                Opt::OutboundPortsExclude,
                self.istio_local_outbound_ports_exclude,
            ),
            (Opt::RedirectDns, self.redirect_dns),
            (Opt::CaptureAllDns, self.capture_all_dns),
            (Opt::DnsServers, self.dns_servers),
            (Opt::TproxyMark, self.istio_inbound_tproxy_mark),
            (Opt::TproxyRouteTable, self.istio_inbound_tproxy_route_table),
            (Opt::TproxyReturnMarked, self.tproxy_return_marked),
            (Opt::Strict, self.strict),
            (Opt::DryRun, self.dry_run),
            (Opt::Ipv6, self.ipv6),
            (Opt::Backend, self.backend),
            (Opt::NativeNftables, self.native_nftables),
            (Opt::ForceIptablesBinary, self.force_iptables_binary),
            (Opt::DropInvalid, self.drop_invalid),
            (Opt::DualStack, self.dual_stack),
            (Opt::ProbePort, self.iptables_probe_port),
            (Opt::ProbeTimeout, self.probe_timeout),
            (Opt::SkipRuleApply, self.skip_rule_apply),
            (Opt::RunValidation, self.run_validation),
            (Opt::NetworkNamespace, self.network_namespace),
            (Opt::Reconcile, self.reconcile),
            (Opt::CleanupOnly, self.cleanup_only),
            (Opt::ForceApply, self.force_apply),
        ];
        (given, self.log)
    }

    /// The installer's inputs of this command line against the environment `env`, and Istio's
    /// logging flags.
    pub fn into_invocation(self, env: Vec<(String, String)>) -> Invocation {
        let (given, log) = self.into_parts();
        Invocation {
            inputs: Inputs::from_flags(given, env),
            log,
        }
    }
}

/// Parses `args` (the program name first) with the declaration of `P`, without clap's reading
/// of environment variables and defaults: what `P` holds is what the command line gave. Help is
/// rendered from the whole declaration, which lists each flag's variable and default.
pub fn parse_given<P, I, T>(args: I) -> Result<P, clap::Error>
where
    P: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // A switch without a value (`--kernel`) keeps its default: false when not given.
    let mut command = P::command().mut_args(|a| {
        let a = a.env(None);
        match a.get_action().takes_values() {
            true => a.default_value(None),
            false => a,
        }
    });
    match command.try_get_matches_from_mut(&args) {
        Ok(matches) => P::from_arg_matches(&matches),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Err(P::command()
            .try_get_matches_from(&args)
            .expect_err("--help still asks for help")),
        Err(e) => Err(e),
    }
}

impl Inputs {
    /// Parses `args` (with the program name first) against the environment `env`: a flag beats
    /// its variable (or, failing that, its old name), which beats the default. Clap errors
    /// (unknown flag, missing value, `--help`) are returned as clap errors.
    pub fn parse_from<I, T>(args: I, env: Vec<(String, String)>) -> Result<Inputs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Invocation::parse_from(args, env).map(|invocation| invocation.inputs)
    }
}

/// An installer command line: the installer's inputs and Istio's logging flags.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub inputs: Inputs,
    pub log: LogFlags,
}

impl Invocation {
    /// See [`Inputs::parse_from`].
    pub fn parse_from<I, T>(args: I, env: Vec<(String, String)>) -> Result<Invocation, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Ok(Cli::try_parse_given(args)?.into_invocation(env))
    }
}

/// The validated configuration of `inputs`, for the binary's edge: on bad input the error is
/// printed as the installer prints it and its exit status returned.
pub fn config_or_exit(inputs: &Inputs) -> Result<crate::config::Config, std::process::ExitCode> {
    crate::config::Config::from_inputs(inputs, &InstallerHost).map_err(|e| {
        eprintln!("meshcap: {e}");
        std::process::ExitCode::from(e.exit_code() as u8)
    })
}

/// The host as the installer sees it: the machine's files, and with `--network-namespace` the
/// pod's addresses read inside that namespace (Istio's `--ipv6 auto` looks at the pod, not at
/// whoever runs the installer).
struct InstallerHost;

impl crate::config::HostFacts for InstallerHost {
    fn pod_is_ipv6(&self, dual_stack: bool) -> Result<Option<bool>, String> {
        crate::config::SystemHost.pod_is_ipv6(dual_stack)
    }

    fn pod_is_ipv6_in(
        &self,
        dual_stack: bool,
        network_namespace: Option<&std::path::Path>,
    ) -> Result<Option<bool>, String> {
        let Some(path) = network_namespace else {
            return self.pod_is_ipv6(dual_stack);
        };
        let ns = crate::backend::session::Namespace::open(path).map_err(|e| e.to_string())?;
        ns.run(|| self.pod_is_ipv6(dual_stack))
            .map_err(|e| e.to_string())?
    }

    fn resolv_conf_nameservers(&self) -> Result<Vec<String>, String> {
        crate::config::SystemHost.resolv_conf_nameservers()
    }

    fn uid_of(&self, user: &str) -> Option<u32> {
        crate::config::SystemHost.uid_of(user)
    }
}

/// An installer command line (`args` with the program name first) parsed and validated, with
/// Istio's logging flags: clap's own errors (`--help` included) exit as clap does, a bad value
/// as [`config_or_exit`] says.
pub fn installer_or_exit<I, T>(
    args: I,
    env: Vec<(String, String)>,
) -> Result<(crate::config::Config, LogFlags), std::process::ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let invocation = Invocation::parse_from(args, env).unwrap_or_else(|e| e.exit());
    config_or_exit(&invocation.inputs).map(|config| (config, invocation.log))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_an_opt_and_every_opt_a_flag() {
        let command = Cli::command();
        let ids: Vec<&str> = command
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .filter(|id| *id != "help" && *id != "version" && !id.starts_with("log_"))
            .collect();
        let given: Vec<Opt> = Cli::try_parse_given(["meshcap"])
            .unwrap()
            .into_parts()
            .0
            .into_iter()
            .map(|(opt, _)| opt)
            .collect();
        assert_eq!(
            given,
            Opt::ALL,
            "into_parts lists every option once, in order"
        );
        assert_eq!(ids, Opt::ALL.iter().map(|o| o.id()).collect::<Vec<_>>());
        for &opt in Opt::ALL {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == opt.id())
                .unwrap_or_else(|| panic!("{opt:?}"));
            assert_eq!(arg.get_long(), Some(opt.long().as_str()), "{opt:?}");
            assert_eq!(arg.get_short(), opt.short(), "{opt:?}");
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(opt.env()),
                "{opt:?}"
            );
        }
    }

    #[test]
    fn istios_logging_flags_map_onto_meshcaps_logging() {
        use crate::logging::{Settings, Target};
        use tracing::level_filters::LevelFilter;
        let parse = |args: &[&str]| {
            let argv = std::iter::once("meshcap").chain(args.iter().copied());
            Invocation::parse_from(argv, Vec::new()).map(|i| i.log.settings())
        };
        assert_eq!(parse(&[]).unwrap(), Settings::default());
        let settings = parse(&[
            "--log_output_level=ads:debug,default:warn",
            "--log_as_json",
            "--log_caller=default",
            "--log_target",
            "stdout",
            "--log_target=/dev/null",
            "--log_stacktrace_level=default:none",
            "--log_rotate=/var/log/x",
            "--log_rotate_max_age=30",
            "--log_rotate_max_size=104857600",
            "--log_rotate_max_backups=1000",
        ])
        .unwrap();
        assert_eq!(
            settings,
            Settings {
                level: LevelFilter::WARN,
                json: true,
                caller: true,
                target: Target::Stdout,
            }
        );
        assert!(!parse(&["--log_as_json=false"]).unwrap().json);
        for bad in [
            "--log_output_level=default:loud",
            "--log_as_json=maybe",
            "--log_rotate_max_age=soon",
        ] {
            let err = parse(&[bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn a_field_is_set_only_by_its_flag() {
        let cli = Cli::try_parse_given(["meshcap", "-b", "443", "--dry-run"]).unwrap();
        assert_eq!(cli.istio_inbound_ports.as_deref(), Some("443"));
        assert_eq!(cli.dry_run.as_deref(), Some("true"));
        assert_eq!(
            cli.envoy_port, None,
            "no default in the parsed command line"
        );
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
