//! The raw inputs of one run: every installer option's text and where it came from.
//!
//! Two front doors fill [`Inputs`]: the command line with its environment ([`crate::cli`]) and
//! the CNI plugin's network configuration with the pod's annotations ([`crate::cni`]). Both hand
//! the same [`Inputs`] to [`crate::config`], which validates it once; values stay text here so
//! that a bad value is reported with the flag, variable, key or annotation that carried it.

/// Declares [`Opt`], one variant per installer option: its clap id (the field name of
/// [`crate::cli::Cli`]), short flag, environment variable and default text (Istio's). The
/// command line's declaration takes these from here, so they are written once.
macro_rules! options {
    ($($variant:ident = $id:literal, $short:expr, $env:literal, $default:expr;)*) => {
        /// An installer option: one per flag of [`crate::cli::Cli`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Opt {
            $($variant,)*
        }

        impl Opt {
            /// Every option, in declaration order.
            pub const ALL: &'static [Opt] = &[$(Opt::$variant,)*];

            /// The clap id of the option (the field name of [`crate::cli::Cli`]).
            pub const fn id(self) -> &'static str {
                match self {
                    $(Opt::$variant => $id,)*
                }
            }

            /// The one-letter flag, if the option has one.
            pub const fn short(self) -> Option<char> {
                match self {
                    $(Opt::$variant => $short,)*
                }
            }

            /// The environment variable that sets the option when no flag does.
            pub const fn env(self) -> &'static str {
                match self {
                    $(Opt::$variant => $env,)*
                }
            }

            /// The value the option has when neither flag nor variable sets it; `None`: none
            /// (the option is decided later, e.g. from /etc/resolv.conf).
            pub const fn default_text(self) -> Option<&'static str> {
                match self {
                    $(Opt::$variant => $default,)*
                }
            }
        }
    };
}

options! {
    InboundCapturePort = "inbound_capture_port", Some('z'), "INBOUND_CAPTURE_PORT", Some("15006");
    InboundTunnelPort = "inbound_tunnel_port", Some('e'), "INBOUND_TUNNEL_PORT", Some("15008");
    InterceptionMode = "istio_inbound_interception_mode", Some('m'), "ISTIO_INBOUND_INTERCEPTION_MODE", Some("");
    InboundPorts = "istio_inbound_ports", Some('b'), "ISTIO_INBOUND_PORTS", Some("");
    InboundPortsExclude = "istio_local_exclude_ports", Some('d'), "ISTIO_LOCAL_EXCLUDE_PORTS", Some("");
    ExcludeInterfaces = "istio_exclude_interfaces", Some('c'), "ISTIO_EXCLUDE_INTERFACES", Some("");
    KubeVirtInterfaces = "kube_virt_interfaces", Some('k'), "KUBE_VIRT_INTERFACES", Some("");
    ProxyPort = "envoy_port", Some('p'), "ENVOY_PORT", Some("15001");
    ProxyUid = "proxy_uid", Some('u'), "PROXY_UID", Some("");
    ProxyGid = "proxy_gid", Some('g'), "PROXY_GID", Some("");
    OutboundCidrs = "istio_service_cidr", Some('i'), "ISTIO_SERVICE_CIDR", Some("");
    OutboundCidrsExclude = "istio_service_exclude_cidr", Some('x'), "ISTIO_SERVICE_EXCLUDE_CIDR", Some("");
    OutboundPorts = "istio_outbound_ports", Some('q'), "ISTIO_OUTBOUND_PORTS", Some("");
    OutboundPortsExclude = "istio_local_outbound_ports_exclude", Some('o'), "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", Some("");
    RedirectDns = "redirect_dns", None, "REDIRECT_DNS", Some("false");
    CaptureAllDns = "capture_all_dns", None, "CAPTURE_ALL_DNS", Some("false");
    DnsServers = "dns_servers", None, "MESHCAP_DNS_SERVERS", None;
    TproxyMark = "istio_inbound_tproxy_mark", Some('t'), "ISTIO_INBOUND_TPROXY_MARK", Some("1337");
    TproxyRouteTable = "istio_inbound_tproxy_route_table", Some('r'), "ISTIO_INBOUND_TPROXY_ROUTE_TABLE", Some("133");
    TproxyReturnMarked = "tproxy_return_marked", None, "MESHCAP_TPROXY_RETURN_MARKED", Some("false");
    Strict = "strict", None, "MESHCAP_STRICT", Some("false");
    DryRun = "dry_run", Some('n'), "DRY_RUN", Some("false");
    Ipv6 = "ipv6", None, "MESHCAP_IPV6", Some("auto");
    Backend = "backend", None, "MESHCAP_BACKEND", Some("iptables");
    NativeNftables = "native_nftables", None, "NATIVE_NFTABLES", Some("false");
    ForceIptablesBinary = "force_iptables_binary", None, "FORCE_IPTABLES_BINARY", None;
    DropInvalid = "drop_invalid", None, "DROP_INVALID", Some("false");
    DualStack = "dual_stack", None, "DUAL_STACK", Some("false");
    ProbePort = "iptables_probe_port", None, "IPTABLES_PROBE_PORT", Some("15002");
    ProbeTimeout = "probe_timeout", None, "PROBE_TIMEOUT", Some("5s");
    SkipRuleApply = "skip_rule_apply", None, "SKIP_RULE_APPLY", Some("false");
    RunValidation = "run_validation", None, "RUN_VALIDATION", Some("false");
    NetworkNamespace = "network_namespace", None, "NETWORK_NAMESPACE", None;
    Reconcile = "reconcile", None, "RECONCILE", Some("false");
    CleanupOnly = "cleanup_only", None, "CLEANUP_ONLY", Some("false");
    ForceApply = "force_apply", None, "FORCE_APPLY", Some("false");
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

    /// How messages name the flag: `-b/--istio-inbound-ports`, or `--ipv6`.
    pub fn flag(self) -> String {
        match self.short() {
            Some(short) => format!("-{short}/--{}", self.long()),
            None => format!("--{}", self.long()),
        }
    }

    /// The old environment variable name Istio still accepts for the option, if any; the
    /// current name wins.
    pub fn env_alias(self) -> Option<&'static str> {
        match self {
            Opt::RedirectDns => Some("ISTIO_META_DNS_CAPTURE"),
            Opt::DropInvalid => Some("INVALID_DROP"),
            Opt::DualStack => Some("ISTIO_DUAL_STACK"),
            _ => None,
        }
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
    /// Every option at the installer's default (none given on a command line or in `env`);
    /// env-only inputs are read from `env`.
    pub fn defaults(env: Vec<(String, String)>) -> Inputs {
        Inputs::from_flags(Opt::ALL.iter().map(|&opt| (opt, None)), Vec::new()).with_env(env)
    }

    /// The options of a command line: `given` holds each option's text if a flag gave it; a
    /// flag beats its variable in `env` (or, failing that, its old name), which beats the
    /// default.
    pub fn from_flags(
        given: impl IntoIterator<Item = (Opt, Option<String>)>,
        env: Vec<(String, String)>,
    ) -> Inputs {
        let mut inputs = Inputs::empty(env);
        for (opt, flag) in given {
            let variable = inputs
                .env_var(opt.env())
                .or_else(|| opt.env_alias().and_then(|old| inputs.env_var(old)));
            if let Some(text) = flag {
                inputs.set(opt, text, Origin::Flag(opt.flag()));
            } else if let Some(raw) = variable {
                inputs.set(opt, raw.text, raw.origin);
            } else if let Some(default) = opt.default_text() {
                inputs.set(opt, default, Origin::Default(opt.flag()));
            }
        }
        inputs
    }

    /// The same values, with env-only inputs read from `env`.
    fn with_env(mut self, env: Vec<(String, String)>) -> Inputs {
        self.env = env;
        self
    }

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
