//! How a plan is spelled in iptables syntax: Istio's restore text (what meshcap writes), and
//! iptables-save's canonical form of the same rules (what the kernel reads back as).

use crate::backend::address::ntop;
use crate::backend::host::proto_name;
use crate::plan::{
    Chain, CtState, Family, FamilyPlan, GroupRef, Match, Position, Protocol, Rule, RuleOp, Table,
    Target,
};

pub fn table_name(table: Table) -> &'static str {
    match table {
        Table::Mangle => "mangle",
        Table::Nat => "nat",
        Table::Raw => "raw",
    }
}

pub fn chain_name(chain: Chain) -> &'static str {
    match chain {
        Chain::Prerouting => "PREROUTING",
        Chain::Output => "OUTPUT",
        Chain::Inbound => "ISTIO_INBOUND",
        Chain::Redirect => "ISTIO_REDIRECT",
        Chain::InRedirect => "ISTIO_IN_REDIRECT",
        Chain::IstioOutput => "ISTIO_OUTPUT",
        Chain::OutputDns => "ISTIO_OUTPUT_DNS",
        Chain::Divert => "ISTIO_DIVERT",
        Chain::Tproxy => "ISTIO_TPROXY",
        Chain::Drop => "ISTIO_DROP",
    }
}

fn bang(negated: bool) -> &'static str {
    if negated { "! " } else { "" }
}

fn ct_states(states: &[CtState]) -> String {
    states
        .iter()
        .map(|s| match s {
            CtState::Invalid => "INVALID",
            CtState::Related => "RELATED",
            CtState::Established => "ESTABLISHED",
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Istio's restore text for one family: tables in filter, mangle, nat, raw order; in each, `-N`
/// for every chain in the order of its first rule, then every rule operation in plan order.
pub fn restore_text(plan: &FamilyPlan) -> String {
    let mut out = String::new();
    for table in plan.tables() {
        out.push_str(&format!("* {}\n", table_name(table)));
        for chain in plan.chains(table) {
            out.push_str(&format!("-N {}\n", chain_name(chain)));
        }
        for op in plan.ops.iter().filter(|op| op.table == table) {
            out.push_str(&istio_command(op));
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// One rule operation as Istio writes it: `-A CHAIN …` or `-I CHAIN N …`.
pub fn istio_command(op: &RuleOp) -> String {
    let mut words = match op.position {
        Position::Append => vec!["-A".to_owned(), chain_name(op.chain).to_owned()],
        Position::Insert(n) => vec![
            "-I".to_owned(),
            chain_name(op.chain).to_owned(),
            n.to_string(),
        ],
    };
    let udp = op.rule.matches.contains(&Match::Protocol(Protocol::Udp));
    for m in &op.rule.matches {
        words.push(istio_match(m));
    }
    words.push(target(&op.rule.target, udp, Spelling::Istio));
    words.join(" ")
}

fn istio_match(m: &Match) -> String {
    match m {
        Match::Protocol(p) => format!("-p {}", proto_name(*p)),
        Match::InInterface(i) => format!("-i {i}"),
        Match::OutInterface(i) => format!("-o {i}"),
        Match::Source { net, negated } => format!("{}-s {net}", bang(*negated)),
        Match::Destination { net, negated } => format!("{}-d {net}", bang(*negated)),
        Match::DestinationPorts { ports: p, negated } if p.len() == 1 => {
            format!("{}--dport {}", bang(*negated), p[0])
        }
        Match::DestinationPorts { ports: p, negated } => {
            format!("-m multiport {}--dports {}", bang(*negated), ports(p))
        }
        Match::SourcePort(p) => format!("--sport {p}"),
        Match::UidOwner { uid, negated } => format!("-m owner {}--uid-owner {uid}", bang(*negated)),
        Match::GidOwner { gid, negated } => format!("-m owner {}--gid-owner {gid}", bang(*negated)),
        Match::Mark { value, negated } => format!("-m mark {}--mark {value}", bang(*negated)),
        Match::ConnMark(value) => format!("-m connmark --mark {value}"),
        Match::CtState(states) => format!("-m conntrack --ctstate {}", ct_states(states)),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Spelling {
    Istio,
    Saved(Family),
}

fn target(t: &Target, udp: bool, spelling: Spelling) -> String {
    let saved = matches!(spelling, Spelling::Saved(_));
    match t {
        Target::Jump(chain) => format!("-j {}", chain_name(*chain)),
        Target::Return => "-j RETURN".into(),
        Target::Accept => "-j ACCEPT".into(),
        Target::Drop => "-j DROP".into(),
        // Istio spells its UDP DNS redirect `--to-port`; iptables reads both the same.
        Target::Redirect { to_port } if udp && !saved => format!("-j REDIRECT --to-port {to_port}"),
        Target::Redirect { to_port } => format!("-j REDIRECT --to-ports {to_port}"),
        Target::Tproxy {
            on_port,
            mark,
            mask,
        } => match spelling {
            Spelling::Istio => {
                format!("-j TPROXY --tproxy-mark {mark}/{mask:#x} --on-port {on_port}")
            }
            Spelling::Saved(family) => {
                let any = if family == Family::V4 {
                    "0.0.0.0"
                } else {
                    "::"
                };
                format!(
                    "-j TPROXY --on-port {on_port} --on-ip {any} --tproxy-mark {mark:#x}/{mask:#x}"
                )
            }
        },
        Target::SetMark(m) if saved => format!("-j MARK --set-xmark {m:#x}/0xffffffff"),
        Target::SetMark(m) => format!("-j MARK --set-mark {m}"),
        Target::SaveMark if saved => {
            "-j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff".into()
        }
        Target::SaveMark => "-j CONNMARK --save-mark".into(),
        Target::RestoreMark if saved => {
            "-j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff".into()
        }
        Target::RestoreMark => "-j CONNMARK --restore-mark".into(),
        Target::CtZone(z) => format!("-j CT --zone {z}"),
    }
}

/// A rule as `iptables-save` prints it after the kernel has it: address, interface and protocol
/// matches first (in that fixed order), then match modules in rule order, numbers as the
/// kernel keeps them (marks in hex, group names as gids). `gid_of` resolves group names.
pub fn saved_rule(
    chain: Chain,
    rule: &Rule,
    family: Family,
    gid_of: &dyn Fn(&str) -> Option<u32>,
) -> String {
    let mut words = vec![format!("-A {}", chain_name(chain))];
    let mut fixed: [Option<String>; 5] = Default::default();
    let mut modules = Vec::new();
    let mut proto = None;
    for m in &rule.matches {
        match m {
            Match::Source { net, negated } => {
                fixed[0] = Some(format!("{}-s {}", bang(*negated), saved_net(net)))
            }
            Match::Destination { net, negated } => {
                fixed[1] = Some(format!("{}-d {}", bang(*negated), saved_net(net)))
            }
            Match::InInterface(i) => fixed[2] = Some(format!("-i {i}")),
            Match::OutInterface(i) => fixed[3] = Some(format!("-o {i}")),
            Match::Protocol(p) => {
                proto = Some(proto_name(*p));
                fixed[4] = Some(format!("-p {}", proto_name(*p)));
            }
            Match::DestinationPorts { ports: p, negated } if p.len() == 1 => modules.push(format!(
                "-m {} {}--dport {}",
                proto.unwrap_or("tcp"),
                bang(*negated),
                p[0]
            )),
            Match::DestinationPorts { ports: p, negated } => modules.push(format!(
                "-m multiport {}--dports {}",
                bang(*negated),
                ports(p)
            )),
            Match::SourcePort(p) => {
                modules.push(format!("-m {} --sport {p}", proto.unwrap_or("tcp")))
            }
            Match::UidOwner { uid, negated } => {
                modules.push(format!("-m owner {}--uid-owner {uid}", bang(*negated)))
            }
            Match::GidOwner { gid, negated } => {
                let id = match gid {
                    GroupRef::Id(id) => id.to_string(),
                    GroupRef::Name(name) => gid_of(name)
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| name.clone()),
                };
                modules.push(format!("-m owner {}--gid-owner {id}", bang(*negated)))
            }
            Match::Mark { value, negated } => {
                modules.push(format!("-m mark {}--mark {value:#x}", bang(*negated)))
            }
            Match::ConnMark(value) => modules.push(format!("-m connmark --mark {value:#x}")),
            Match::CtState(states) => {
                modules.push(format!("-m conntrack --ctstate {}", ct_states(states)))
            }
        }
    }
    words.extend(fixed.into_iter().flatten());
    words.extend(modules);
    words.push(target(
        &rule.target,
        proto == Some("udp"),
        Spelling::Saved(family),
    ));
    words.join(" ")
}

/// iptables-save prints the network address (host bits cleared).
fn saved_net(net: &crate::plan::Net) -> String {
    format!("{}/{}", ntop(net.network()), net.prefix())
}
