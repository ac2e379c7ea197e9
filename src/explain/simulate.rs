//! Where a connection goes: walks one packet through netfilter rules as the kernel would.
//!
//! The rules are typed, as the backends hand them over ([`Rules`]): the iptables backend's saved
//! rules, the nftables backend's codec rules. A plan's rules come in the same forms as the
//! kernel's, so `explain` of a plan and of the kernel's rules run the same code, and every rule
//! is shown in its backend's own spelling (iptables-save's line, `nft` syntax).
//!
//! For a [`Flow`] the walk visits, per hook, every base chain of the flow's family in priority
//! order (raw, mangle, nat: -300, -150, -100), follows jumps, gotos and returns, applies marks,
//! connection marks, conntrack zones, REDIRECT and TPROXY, and ends each base chain with its
//! verdict or policy. An outbound flow walks OUTPUT; when it leaves over `lo` (to a local
//! address, or redirected to a local port) it then walks PREROUTING on `lo`, except the nat
//! chains: NAT is decided once per connection. An inbound flow walks PREROUTING. Pure: no I/O.

use super::flow::{Direction, Flow, State};
use super::packet::{Action, Hook, Packet, ct};
use super::rules::{self, Rules};
use crate::config::CaptureConfig;
use crate::plan::Family;
use std::fmt;

/// Where the connection lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    CapturedOutbound(u16),
    CapturedInbound(u16),
    CapturedDns(u16),
    /// Delivered to the destination it was sent to (no capture).
    Direct,
    Dropped,
}

impl Verdict {
    /// `captured-outbound`, …, `direct`, `dropped`.
    pub fn class(self) -> &'static str {
        match self {
            Verdict::CapturedOutbound(_) => "captured-outbound",
            Verdict::CapturedInbound(_) => "captured-inbound",
            Verdict::CapturedDns(_) => "captured-dns",
            Verdict::Direct => "direct",
            Verdict::Dropped => "dropped",
        }
    }

    /// The capture port, for captured verdicts.
    pub fn port(self) -> Option<u16> {
        match self {
            Verdict::CapturedOutbound(p)
            | Verdict::CapturedInbound(p)
            | Verdict::CapturedDns(p) => Some(p),
            Verdict::Direct | Verdict::Dropped => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port() {
            Some(port) => write!(f, "{} {port}", self.class()),
            None => f.write_str(self.class()),
        }
    }
}

/// The capture listeners' ports, which name a redirection's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listeners {
    pub outbound: u16,
    pub inbound: u16,
    pub dns: u16,
}

impl Listeners {
    pub fn of(cfg: &CaptureConfig) -> Listeners {
        Listeners {
            outbound: cfg.proxy_port,
            inbound: cfg.inbound_capture_port,
            dns: crate::plan::DNS_CAPTURE_PORT,
        }
    }

    /// A capture to `port`; a port no listener uses counts by hook (OUTPUT: outbound).
    fn verdict(&self, port: u16, hook: Hook) -> Verdict {
        match port {
            p if p == self.outbound => Verdict::CapturedOutbound(p),
            p if p == self.inbound => Verdict::CapturedInbound(p),
            p if p == self.dns => Verdict::CapturedDns(p),
            p if hook == Hook::Output => Verdict::CapturedOutbound(p),
            p => Verdict::CapturedInbound(p),
        }
    }
}

/// One rule tested, or a chain's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// `output` or `prerouting`.
    pub hook: &'static str,
    /// The table as read back (`ipv4 nat`, `inet istio-proxy-nat`).
    pub table: String,
    pub chain: String,
    /// The rule in the backend's spelling; `None` for a chain's policy.
    pub rule: Option<String>,
    pub matched: bool,
    /// What the match did: `jump ISTIO_OUTPUT`, `return`, `accept`, `policy accept`, … (empty:
    /// continue with the next rule).
    pub action: String,
    /// Marks, zones and redirections the rule applied.
    pub effects: Vec<String>,
}

/// The path of one flow and where it lands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub flow: Flow,
    pub family: Family,
    pub steps: Vec<Step>,
    /// What the walk assumed or skipped, in order.
    pub notes: Vec<String>,
    pub verdict: Verdict,
    /// The rule that decided the verdict: the one that redirected the connection, else the
    /// last nat rule that accepted, dropped or returned it (or any rule that dropped it);
    /// `None`: no such rule matched (the chains' policies let it through).
    pub decided_by: Option<Step>,
    /// Why a direct connection was not captured, in the mesh's words (`ztunnel's own`,
    /// `kubelet probe`); set by the caller that knows the mesh (see `super::ambient`).
    pub reason: Option<String>,
}

impl Explanation {
    /// The verdict with its reason: `captured-inbound 15006`, `direct (ztunnel's own)`.
    pub fn verdict_text(&self) -> String {
        match &self.reason {
            Some(why) => format!("{} ({why})", self.verdict),
            None => self.verdict.to_string(),
        }
    }
}

/// Walks `flow` through `rules` and says where it lands.
pub fn explain(rules: &Rules, flow: &Flow, listeners: &Listeners) -> Explanation {
    let mut p = Packet::new(flow);
    let mut ex = Explanation {
        flow: flow.clone(),
        family: p.family,
        steps: Vec::new(),
        notes: Vec::new(),
        verdict: Verdict::Direct,
        decided_by: None,
        reason: None,
    };
    if flow.src.is_none() {
        ex.notes
            .push(format!("src= not given: source address taken as {}", p.src));
    }
    let survived = match flow.dir {
        Direction::Out => {
            p.owner = Some((flow.uid, flow.gid));
            p.oif = Some(flow.iface.clone());
            let out = walk_hook(rules, &mut p, Hook::Output, true, &mut ex);
            if out && p.oif.as_deref() == Some("lo") {
                // Looped back: the receiving side sees it in PREROUTING, without its socket.
                p.hook = Hook::Prerouting;
                p.iif = p.oif.take();
                p.owner = None;
                walk_hook(rules, &mut p, Hook::Prerouting, false, &mut ex)
            } else {
                out
            }
        }
        Direction::In => {
            p.hook = Hook::Prerouting;
            p.iif = Some(flow.iface.clone());
            walk_hook(rules, &mut p, Hook::Prerouting, true, &mut ex)
        }
    };
    ex.verdict = if !survived {
        Verdict::Dropped
    } else if flow.state == State::Established {
        // A later packet follows its connection: conntrack undoes the first packet's REDIRECT,
        // and a TPROXYed connection's packets reach its socket (ISTIO_DIVERT marks them for the
        // local route).
        let first = explain(
            rules,
            &Flow {
                state: State::New,
                ..flow.clone()
            },
            listeners,
        );
        ex.decided_by = first.decided_by;
        let first = first.verdict;
        ex.notes.push(format!(
            "a later packet goes where the connection's first packet went: {first}"
        ));
        first
    } else if let Some(port) = p.tproxy {
        ex.notes.push(
            "TPROXY delivers to a transparent listener on its port (assumed listening)".into(),
        );
        listeners.verdict(port, Hook::Prerouting)
    } else if let Some(port) = p.redirect {
        let hook = match flow.dir {
            Direction::Out => Hook::Output,
            Direction::In => Hook::Prerouting,
        };
        listeners.verdict(port, hook)
    } else {
        Verdict::Direct
    };
    ex
}

/// Walks every base chain of `hook` in priority order; false when the packet was dropped.
fn walk_hook(rules: &Rules, p: &mut Packet, hook: Hook, nat: bool, ex: &mut Explanation) -> bool {
    let mut nat_done = false;
    for (table, base) in rules.bases(p.family, hook) {
        let skipped = if base.nat && !nat {
            Some("the connection's NAT was decided in output")
        } else if base.nat && nat_done {
            Some("an earlier nat chain already redirected")
        } else {
            None
        };
        if let Some(why) = skipped {
            ex.notes.push(format!(
                "{} {} {}: not consulted: {why}",
                hook.name(),
                table.name,
                base.chain
            ));
            continue;
        }
        let saved_state = p.ctstate;
        if base.nat && p.ctstate != ct::NEW {
            ex.notes.push(format!(
                "{} {}: nat chains see a connection's first packet only; walked as that packet",
                hook.name(),
                table.name
            ));
            p.ctstate = ct::NEW;
        }
        let before = p.redirect;
        let accepted = run_base(table, base, p, hook, ex);
        p.ctstate = saved_state;
        if !accepted {
            return false;
        }
        nat_done |= base.nat && p.redirect != before;
    }
    true
}

/// Runs one base chain; false when the packet was dropped.
fn run_base(
    table: &rules::Table,
    base_chain: &rules::Base,
    p: &mut Packet,
    hook: Hook,
    ex: &mut Explanation,
) -> bool {
    let base = base_chain.chain.as_str();
    // The kernel refuses loops; the bound only guards against a malformed read-back.
    const MAX_STEPS: usize = 100_000;
    let mut stack: Vec<(&str, usize)> = Vec::new();
    let (mut chain, mut index) = (base, 0usize);
    let step = |chain: &str, rule: Option<String>, matched, action: String, effects| Step {
        hook: hook.name(),
        table: table.name.clone(),
        chain: chain.to_owned(),
        rule,
        matched,
        action,
        effects,
    };
    for _ in 0..MAX_STEPS {
        let rules = table.chains.get(chain).map(Vec::as_slice).unwrap_or(&[]);
        let Some(rule) = rules.get(index) else {
            match stack.pop() {
                Some((c, i)) => (chain, index) = (c, i),
                None => {
                    ex.steps
                        .push(step(chain, None, true, "policy accept".into(), vec![]));
                    return true;
                }
            }
            continue;
        };
        index += 1;
        let result = rule.eval(p);
        let action = match &result.action {
            _ if !result.matched => String::new(),
            Action::Continue => String::new(),
            a => a.to_string(),
        };
        let redirected = result
            .effects
            .iter()
            .any(|e| e.starts_with("redirect") || e.starts_with("tproxy"));
        let done = step(
            chain,
            Some(rule.text.clone()),
            result.matched,
            action,
            result.effects,
        );
        if !result.matched {
            ex.steps.push(done);
            continue;
        }
        let decisive = match &result.action {
            Action::Drop => true,
            Action::Accept | Action::Return => base_chain.nat,
            _ => false,
        };
        if redirected
            || (decisive
                && !ex.decided_by.as_ref().is_some_and(|d| {
                    d.effects
                        .iter()
                        .any(|e| e.starts_with("redirect") || e.starts_with("tproxy"))
                }))
        {
            ex.decided_by = Some(done.clone());
        }
        ex.steps.push(done);
        match &result.action {
            Action::Continue => {}
            Action::Accept => return true,
            Action::Drop => return false,
            Action::Return => match stack.pop() {
                Some((c, i)) => (chain, index) = (c, i),
                None => {
                    ex.steps
                        .push(step(chain, None, true, "policy accept".into(), vec![]));
                    return true;
                }
            },
            Action::Jump(target) | Action::Goto(target) => {
                let Some((name, _)) = table.chains.get_key_value(target.as_str()) else {
                    ex.notes.push(format!(
                        "{} {}: jump to missing chain {target}: ignored",
                        table.name, chain
                    ));
                    continue;
                };
                if matches!(result.action, Action::Jump(_)) {
                    stack.push((chain, index));
                }
                (chain, index) = (name.as_str(), 0);
            }
        }
    }
    ex.notes.push(format!(
        "{}: walk stopped after {MAX_STEPS} steps",
        table.name
    ));
    true
}

#[cfg(test)]
mod tests;
