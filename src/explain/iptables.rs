//! One iptables rule, as the iptables backend's read-back types it ([`SavedRule`]), evaluated
//! against the packet: every match (with its `!`) must hold, then the target acts.

use super::packet::{Action, Packet, RuleResult, ct};
use crate::backend::iptables::saved::{ConnState, Match, SavedRule, Target};

fn state_bits(states: &[ConnState]) -> u32 {
    states
        .iter()
        .map(|s| match s {
            ConnState::Invalid => ct::INVALID,
            ConnState::Established => ct::ESTABLISHED,
            ConnState::Related => ct::RELATED,
            ConnState::New => ct::NEW,
        })
        .fold(0, |acc, b| acc | b)
}

fn holds(m: &Match, p: &Packet) -> bool {
    let iface = |rule: &str, have: &Option<String>| match (rule.strip_suffix('+'), have) {
        (_, None) => false,
        (Some(prefix), Some(name)) => name.starts_with(prefix),
        (None, Some(name)) => name == rule,
    };
    let in_ports =
        |list: &[(u16, u16)], port: u16| list.iter().any(|(a, b)| (*a..=*b).contains(&port));
    match m {
        Match::Proto(proto) => *proto == p.proto,
        Match::Src(net) => net.contains(p.src),
        Match::Dst(net) => net.contains(p.dst),
        Match::InIface(name) => iface(name, &p.iif),
        Match::OutIface(name) => iface(name, &p.oif),
        Match::Dport(list) => in_ports(list, p.dport),
        Match::Sport(list) => in_ports(list, p.sport),
        Match::Uid(a, b) => p.owner.is_some_and(|(uid, _)| (*a..=*b).contains(&uid)),
        Match::Gid(a, b) => p.owner.is_some_and(|(_, gid)| (*a..=*b).contains(&gid)),
        Match::Mark(v, m) => p.mark & m == *v,
        Match::ConnMark(v, m) => p.ctmark & m == *v,
        Match::CtState(states) => p.ctstate & state_bits(states) != 0,
        // Refused before the walk (see `Rules::from_iptables`).
        Match::Other(_) => false,
    }
}

pub(crate) fn eval(rule: &SavedRule, p: &mut Packet) -> RuleResult {
    let matched = rule.matches.iter().all(|(m, negated)| {
        // xt_owner: without a socket, only a negated match matches.
        if matches!(m, Match::Uid(..) | Match::Gid(..)) && p.owner.is_none() {
            return *negated;
        }
        holds(m, p) != *negated
    });
    let mut effects = Vec::new();
    if !matched {
        return RuleResult {
            matched,
            action: Action::Continue,
            effects,
        };
    }
    let action = match &rule.target {
        Target::None | Target::Other(_) => Action::Continue,
        Target::Accept => Action::Accept,
        Target::Drop => Action::Drop,
        Target::Return => Action::Return,
        Target::Jump(c) => Action::Jump(c.clone()),
        Target::Goto(c) => Action::Goto(c.clone()),
        Target::Redirect(port) => {
            p.redirect_to(*port);
            effects.push(format!("redirect to port {port}"));
            Action::Accept
        }
        Target::Tproxy { port, mark, mask } => {
            p.tproxy = Some(*port);
            p.mark = (p.mark & !mask) ^ mark;
            effects.push(format!("tproxy to port {port}, mark {:#x}", p.mark));
            Action::Accept
        }
        Target::SetMark { value, mask } => {
            p.mark = (p.mark & !mask) ^ value;
            effects.push(format!("mark {:#x}", p.mark));
            Action::Continue
        }
        Target::SaveMark => {
            p.ctmark = p.mark;
            effects.push(format!("connection mark {:#x}", p.ctmark));
            Action::Continue
        }
        Target::SetConnMark { value, mask } => {
            p.ctmark = (p.ctmark & !mask) ^ value;
            effects.push(format!("connection mark {:#x}", p.ctmark));
            Action::Continue
        }
        Target::RestoreMark => {
            p.mark = p.ctmark;
            effects.push(format!("mark {:#x} (from the connection)", p.mark));
            Action::Continue
        }
        Target::Zone(zone) => {
            p.zone = *zone;
            effects.push(format!("conntrack zone {zone}"));
            Action::Continue
        }
    };
    RuleResult {
        matched,
        action,
        effects,
    }
}
