//! The raw inputs of one run: every installer option's text and where it came from.
//!
//! Two front doors fill [`Inputs`]: the command line with its environment ([`crate::cli`]) and
//! the CNI plugin's network configuration with the pod's annotations ([`crate::cni`]). Both hand
//! the same [`Inputs`] to [`crate::config`], which validates it once; values stay text here so
//! that a bad value is reported with the flag, variable, key or annotation that carried it.

/// Declares [`Opt`], one variant per installer option, with its clap id (the field name of
/// [`crate::cli::Cli`]).
macro_rules! options {
    ($($variant:ident = $id:literal,)*) => {
        /// An installer option: one per flag of [`crate::cli::Cli`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Opt {
            $($variant,)*
        }

        impl Opt {
            /// Every option, in declaration order.
            pub const ALL: &'static [Opt] = &[$(Opt::$variant,)*];

            /// The clap id of the option (the field name of [`crate::cli::Cli`]).
            pub fn id(self) -> &'static str {
                match self {
                    $(Opt::$variant => $id,)*
                }
            }
        }
    };
}

options! {
    InboundCapturePort = "inbound_capture_port",
    InboundTunnelPort = "inbound_tunnel_port",
    InterceptionMode = "istio_inbound_interception_mode",
    InboundPorts = "istio_inbound_ports",
    InboundPortsExclude = "istio_local_exclude_ports",
    ExcludeInterfaces = "istio_exclude_interfaces",
    KubeVirtInterfaces = "kube_virt_interfaces",
    ProxyPort = "envoy_port",
    ProxyUid = "proxy_uid",
    ProxyGid = "proxy_gid",
    OutboundCidrs = "istio_service_cidr",
    OutboundCidrsExclude = "istio_service_exclude_cidr",
    OutboundPorts = "istio_outbound_ports",
    OutboundPortsExclude = "istio_local_outbound_ports_exclude",
    RedirectDns = "redirect_dns",
    CaptureAllDns = "capture_all_dns",
    DnsServers = "dns_servers",
    TproxyMark = "istio_inbound_tproxy_mark",
    TproxyRouteTable = "istio_inbound_tproxy_route_table",
    TproxyReturnMarked = "tproxy_return_marked",
    Strict = "strict",
    DryRun = "dry_run",
    Ipv6 = "ipv6",
    Backend = "backend",
    NativeNftables = "native_nftables",
    ForceIptablesBinary = "force_iptables_binary",
    DropInvalid = "drop_invalid",
    DualStack = "dual_stack",
    ProbePort = "iptables_probe_port",
    ProbeTimeout = "probe_timeout",
    SkipRuleApply = "skip_rule_apply",
    RunValidation = "run_validation",
    NetworkNamespace = "network_namespace",
    Reconcile = "reconcile",
    CleanupOnly = "cleanup_only",
    ForceApply = "force_apply",
}

impl Opt {
    /// The long flag name without dashes, e.g. `istio-inbound-ports` (also the option's key in a
    /// CNI network configuration's `"capture"` object).
    pub fn long(self) -> String {
        self.id().replace('_', "-")
    }

    /// The option whose long flag name is `long` (without dashes).
    pub fn from_long(long: &str) -> Option<Opt> {
        Opt::ALL.iter().copied().find(|o| o.long() == long)
    }
}

/// Environment variables that have no flag: Istio reads them from the environment only.
pub const ENV_ONLY: [&str; 4] = [
    "ISTIO_OUTBOUND_OWNER_GROUPS",
    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
    "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
    "ENVOY_USER",
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
    /// A key of the CNI network configuration's `"capture"` object.
    CniKey(String),
    /// A field of the Kubernetes pod, e.g. `annotation traffic.sidecar.istio.io/excludeInboundPorts`.
    Pod(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(name) => write!(f, "flag {name}"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Default(name) => write!(f, "default of {name}"),
            Origin::CniKey(name) => write!(f, "capture key {name:?}"),
            Origin::Pod(field) => write!(f, "pod {field}"),
        }
    }
}

/// A raw value and its origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raw {
    pub text: String,
    pub origin: Origin,
}

/// The raw value of every option that has one, and the environment the env-only inputs are read
/// from. Built by [`crate::cli`] (`Inputs::parse_from`, `Inputs::defaults`) and adjusted by the
/// CNI plugin with [`Inputs::set`].
#[derive(Clone, Debug)]
pub struct Inputs {
    values: Vec<Option<Raw>>,
    env: Vec<(String, String)>,
}

impl Inputs {
    /// Inputs with no option set, reading env-only inputs from `env`.
    pub fn empty(env: Vec<(String, String)>) -> Inputs {
        Inputs {
            values: vec![None; Opt::ALL.len()],
            env,
        }
    }

    /// The raw value of `opt` and its origin; `None` when it has neither value nor default.
    pub fn get(&self, opt: Opt) -> Option<Raw> {
        self.values[opt as usize].clone()
    }

    /// Sets the raw value of `opt`, replacing any earlier one.
    pub fn set(&mut self, opt: Opt, text: impl Into<String>, origin: Origin) {
        self.values[opt as usize] = Some(Raw {
            text: text.into(),
            origin,
        });
    }

    /// Looks up a variable of the environment this run was given.
    pub fn env_var(&self, name: &str) -> Option<Raw> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| Raw {
                text: v.clone(),
                origin: Origin::Env(name.to_owned()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_round_trip() {
        for &opt in Opt::ALL {
            assert_eq!(Opt::from_long(&opt.long()), Some(opt));
        }
        assert_eq!(
            Opt::from_long("istio-service-cidr"),
            Some(Opt::OutboundCidrs)
        );
        assert_eq!(Opt::from_long("istio_service_cidr"), None);
    }

    #[test]
    fn set_replaces_and_get_reads() {
        let mut inputs = Inputs::empty(vec![("ENVOY_USER".into(), "envoy".into())]);
        assert_eq!(inputs.get(Opt::ProxyPort), None);
        inputs.set(Opt::ProxyPort, "1", Origin::Default("x".into()));
        inputs.set(Opt::ProxyPort, "2", Origin::CniKey("envoy-port".into()));
        let raw = inputs.get(Opt::ProxyPort).unwrap();
        assert_eq!(raw.text, "2");
        assert_eq!(raw.origin.to_string(), "capture key \"envoy-port\"");
        assert_eq!(inputs.env_var("ENVOY_USER").unwrap().text, "envoy");
    }
}

/// The most of a value an error message repeats: a hostile value (a 1 MB annotation, a huge
/// CNI_ARGS) must not come back whole on stdout and again in the logs.
pub const QUOTE_LIMIT: usize = 200;

/// `text` as an error message quotes it (Rust string syntax), cut after [`QUOTE_LIMIT`]
/// characters with an ellipsis and the whole length. Every error that repeats a value it was
/// given goes through this (or [`shortened`]).
pub fn quoted(text: &str) -> Shortened<'_> {
    Shortened { text, quote: true }
}

/// As [`quoted`], without the quotes: for text that is not one value (a server's message, a
/// JSON value).
pub fn shortened(text: &str) -> Shortened<'_> {
    Shortened { text, quote: false }
}

/// A value as an error message shows it; see [`quoted`].
pub struct Shortened<'a> {
    text: &'a str,
    quote: bool,
}

impl std::fmt::Display for Shortened<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (shown, cut) = match self.text.char_indices().nth(QUOTE_LIMIT) {
            Some((at, _)) => (&self.text[..at], true),
            None => (self.text, false),
        };
        match (self.quote, cut) {
            (true, false) => write!(f, "{shown:?}"),
            (false, false) => f.write_str(shown),
            (true, true) => {
                let quoted = format!("{shown:?}");
                let open = &quoted[..quoted.len() - 1];
                write!(f, "{open}…\" ({} bytes)", self.text.len())
            }
            (false, true) => write!(f, "{shown}… ({} bytes)", self.text.len()),
        }
    }
}

#[cfg(test)]
mod quote_tests {
    use super::{QUOTE_LIMIT, quoted, shortened};

    #[test]
    fn short_values_are_quoted_whole() {
        assert_eq!(quoted("eth0").to_string(), "\"eth0\"");
        assert_eq!(quoted("a\"b").to_string(), "\"a\\\"b\"");
        assert_eq!(shortened("HTTP 503").to_string(), "HTTP 503");
    }

    #[test]
    fn long_values_are_cut_with_an_ellipsis_and_their_length() {
        let huge = "x".repeat(1 << 20);
        let shown = quoted(&huge).to_string();
        assert_eq!(
            shown,
            format!("\"{}…\" ({} bytes)", "x".repeat(QUOTE_LIMIT), 1 << 20)
        );
        assert!(shortened(&huge).to_string().ends_with("… (1048576 bytes)"));
        // Cut on a character boundary.
        let wide = "é".repeat(1000);
        assert!(
            quoted(&wide)
                .to_string()
                .starts_with(&format!("\"{}", "é".repeat(QUOTE_LIMIT)))
        );
    }
}
