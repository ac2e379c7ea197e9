//! Where a connection goes under a pod's ambient rules, read from the plan (no kernel): the nat
//! rule that decides its first packet, and the verdict named after ztunnel's ports
//! (`captured-inbound 15006`, `direct (ztunnel's own)`, …).
//!
//! The rules are evaluated with iptables' meaning, per family (with nftables and IPv6 off, the
//! rules that name no address also apply to IPv6 packets; see docs/AMBIENT.md).

use super::plan::{AmbientPlan, CONNECTION, Chain, Masked, Op, Rule, Table, ZTUNNEL};
use super::{DNS_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::plan::{Family, Protocol};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Where the first packet of a connection meets the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent by a process of the pod (nat OUTPUT).
    Out,
    /// Arriving on one of the pod's interfaces (nat PREROUTING).
    In,
}

/// The first packet of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub direction: Direction,
    pub protocol: Protocol,
    pub dst: IpAddr,
    pub port: u16,
    /// The source address (it matters for the kubelet's probes).
    pub src: Option<IpAddr>,
    /// Inbound: the interface it arrives on.
    pub in_iface: Option<String>,
    /// Outbound: whether it leaves by lo (loopback, or the pod's own address).
    pub via_lo: bool,
    /// The packet mark (ztunnel's own sockets carry 0x539).
    pub mark: u32,
}

/// Where the connection goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// To one of ztunnel's listeners: outbound (15001), inbound (15006) or DNS (15053).
    Captured { class: &'static str, port: u16 },
    /// Not redirected, and why.
    Direct(&'static str),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Captured { class, port } => write!(f, "{class} {port}"),
            Verdict::Direct("") => f.write_str("direct"),
            Verdict::Direct(why) => write!(f, "direct ({why})"),
        }
    }
}

impl Verdict {
    /// The probe table's class: `captured-outbound`, …, `direct`.
    pub fn class(&self) -> &'static str {
        match self {
            Verdict::Captured { class, .. } => class,
            Verdict::Direct(_) => "direct",
        }
    }
}

/// The verdict and the rule that decided it (`None`: no rule matched).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub verdict: Verdict,
    pub rule: Option<Rule>,
}

fn family(addr: &IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

fn marked(flow: &Flow, m: Masked) -> bool {
    flow.mark & m.mask == m.value
}

/// Whether `rule` matches the flow, and what it does then: `Some(Some(port))` redirect,
/// `Some(None)` accept or return (the chain ends), `None` no match.
fn matches(rule: &Rule, flow: &Flow) -> Option<Option<u16>> {
    use Direction::*;
    let tcp = flow.protocol == Protocol::Tcp;
    let udp = flow.protocol == Protocol::Udp;
    let not_ztunnel = !marked(flow, ZTUNNEL);
    let hit = |cond: bool, redirect: Option<u16>| cond.then_some(redirect);
    match rule {
        Rule::RerouteVirtualInterface { interface, to_port } => hit(
            flow.direction == In && tcp && flow.in_iface.as_deref() == Some(interface.as_str()),
            Some(*to_port),
        ),
        Rule::ReturnVirtualInterface { interface } => hit(
            flow.direction == In && tcp && flow.in_iface.as_deref() == Some(interface.as_str()),
            None,
        ),
        Rule::AcceptProbe { from } => hit(tcp && flow.src == Some(*from), None),
        Rule::AcceptProbeReply { to } => hit(tcp && flow.dst == *to, None),
        Rule::RedirectInbound {
            loopback,
            hbone_port,
            to_port,
        } => hit(
            !loopback.contains(flow.dst) && tcp && flow.port != *hbone_port && not_ztunnel,
            Some(*to_port),
        ),
        Rule::RedirectDnsUdp { to_port } => hit(
            !flow.via_lo && udp && not_ztunnel && flow.port == 53,
            Some(*to_port),
        ),
        Rule::RedirectDnsTcp { loopback, to_port } => hit(
            !loopback.contains(flow.dst) && tcp && flow.port == 53 && not_ztunnel,
            Some(*to_port),
        ),
        Rule::AcceptConnectionMarked => hit(tcp && marked(flow, CONNECTION), None),
        Rule::AcceptLoopback { loopback } => hit(!loopback.contains(flow.dst) && flow.via_lo, None),
        Rule::RedirectOutbound { loopback, to_port } => hit(
            tcp && !loopback.contains(flow.dst) && not_ztunnel,
            Some(*to_port),
        ),
        // Not nat rules of a pod: never the verdict.
        Rule::Jump(_)
        | Rule::SaveZtunnelMark
        | Rule::RestoreConnectionMark
        | Rule::ZoneDnsQuery { .. }
        | Rule::ZoneDnsReply { .. }
        | Rule::SnatProbe { .. } => None,
    }
}

/// The first nat rule of the flow's chain that matches it.
fn decide<'a>(plan: &'a AmbientPlan, flow: &Flow) -> (Option<&'a Rule>, Option<u16>) {
    let chain = match flow.direction {
        Direction::Out => Chain::IstioOutput,
        Direction::In => Chain::IstioPrerouting,
    };
    let rules = plan
        .ops_for(family(&flow.dst))
        .filter(|op: &&Op| op.table == Table::Nat && op.chain == chain);
    for op in rules {
        if let Some(redirect) = matches(&op.rule, flow) {
            return (Some(&op.rule), redirect);
        }
    }
    (None, None)
}

/// Where `flow` goes under `plan`.
pub fn explain(plan: &AmbientPlan, flow: &Flow) -> Explanation {
    let (rule, redirect) = decide(plan, flow);
    let verdict = match redirect {
        Some(port) => Verdict::Captured {
            class: match port {
                OUTBOUND_PORT => "captured-outbound",
                INBOUND_PLAINTEXT_PORT => "captured-inbound",
                DNS_PORT => "captured-dns",
                _ => "captured",
            },
            port,
        },
        None => Verdict::Direct(match rule {
            Some(Rule::AcceptProbe { .. }) => "kubelet probe",
            Some(Rule::AcceptProbeReply { .. }) => "reply to a kubelet probe",
            Some(Rule::AcceptConnectionMarked) => "ztunnel's connection",
            Some(Rule::AcceptLoopback { .. }) => "by lo",
            Some(Rule::ReturnVirtualInterface { .. }) => "virtual interface",
            _ if flow.mark != 0 && {
                // Would it be captured without the mark? Then the mark is why it is not.
                let unmarked = Flow {
                    mark: 0,
                    ..flow.clone()
                };
                decide(plan, &unmarked).1.is_some()
            } =>
            {
                "ztunnel's own"
            }
            _ => "",
        }),
    };
    Explanation {
        verdict,
        rule: rule.cloned(),
    }
}

impl FromStr for Flow {
    type Err = String;

    /// `out|in tcp|udp DST:PORT [from SRC] [on IFACE] [via lo] [mark N]`, IPv6 as `[ADDR]:PORT`.
    fn from_str(text: &str) -> Result<Flow, String> {
        let bad = |why: &str| format!("flow {text:?}: {why}");
        let words: Vec<&str> = text.split_whitespace().collect();
        let [direction, protocol, dst, rest @ ..] = words.as_slice() else {
            return Err(bad("expected DIRECTION PROTOCOL DST:PORT"));
        };
        let direction = match *direction {
            "out" => Direction::Out,
            "in" => Direction::In,
            _ => return Err(bad("the direction is out or in")),
        };
        let protocol = match *protocol {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(bad("the protocol is tcp or udp")),
        };
        let dst: std::net::SocketAddr = dst.parse().map_err(|_| bad("DST:PORT"))?;
        let mut flow = Flow {
            direction,
            protocol,
            dst: dst.ip(),
            port: dst.port(),
            src: None,
            in_iface: None,
            via_lo: dst.ip().is_loopback(),
            mark: 0,
        };
        let mut words = rest.iter();
        while let Some(word) = words.next() {
            let mut value = || {
                words
                    .next()
                    .ok_or_else(|| bad(&format!("{word} needs a value")))
            };
            match *word {
                "from" => flow.src = Some(value()?.parse().map_err(|_| bad("from ADDRESS"))?),
                "on" => flow.in_iface = Some(value()?.to_string()),
                "via" if value()? == &"lo" => flow.via_lo = true,
                "mark" => {
                    let v = value()?;
                    flow.mark = match v.strip_prefix("0x") {
                        Some(hex) => u32::from_str_radix(hex, 16),
                        None => v.parse(),
                    }
                    .map_err(|_| bad("mark NUMBER"))?
                }
                other => return Err(bad(&format!("unknown word {other:?}"))),
            }
        }
        Ok(flow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ambient::config::{NodeSettings, PodConfig, PodOverrides};
    use crate::ambient::plan;

    fn verdict(plan: &AmbientPlan, flow: &str) -> String {
        explain(plan, &flow.parse().unwrap()).verdict.to_string()
    }

    #[test]
    fn verdicts_name_ztunnels_ports() {
        let plan = plan::pod(&PodConfig::new(
            &NodeSettings {
                dns_capture: true,
                ipv6: true,
                ..NodeSettings::default()
            },
            &PodOverrides {
                virtual_interfaces: vec!["virt0".into()],
                ..PodOverrides::default()
            },
        ));
        for (flow, want) in [
            ("out tcp 198.51.100.10:80", "captured-outbound 15001"),
            ("out tcp [2001:db8:1::10]:80", "captured-outbound 15001"),
            (
                "out tcp 198.51.100.10:80 mark 0x539",
                "direct (ztunnel's own)",
            ),
            ("out tcp 127.0.0.1:8080", "direct"),
            ("out tcp 192.0.2.1:8080 via lo", "direct (by lo)"),
            ("out udp 192.0.2.53:53", "captured-dns 15053"),
            ("out udp 127.0.0.53:53", "direct (by lo)"),
            ("out tcp 127.0.0.53:53", "captured-dns 15053"),
            ("out udp 192.0.2.53:53 mark 0x539", "direct (ztunnel's own)"),
            ("in tcp 192.0.2.1:8080 on net0", "captured-inbound 15006"),
            ("in tcp 192.0.2.1:15008 on net0", "direct"),
            (
                "in tcp 192.0.2.1:8080 from 169.254.7.127",
                "direct (kubelet probe)",
            ),
            (
                "in tcp 198.51.100.10:80 on virt0",
                "captured-outbound 15001",
            ),
            ("in tcp 198.51.100.10:80 on virt1", "captured-inbound 15006"),
            (
                "out tcp 169.254.7.127:4000",
                "direct (reply to a kubelet probe)",
            ),
        ] {
            assert_eq!(verdict(&plan, flow), want, "{flow}");
        }
    }

    #[test]
    fn a_bad_flow_says_why() {
        for flow in [
            "sideways tcp 1.2.3.4:5",
            "out icmp 1.2.3.4:5",
            "out tcp 1.2.3.4",
            "out tcp 1.2.3.4:5 mark x",
        ] {
            assert!(flow.parse::<Flow>().is_err(), "{flow}");
        }
    }
}
