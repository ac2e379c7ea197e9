//! One `iptables-save` rule (`-A CHAIN matches… -j TARGET options…`), parsed and evaluated.

use super::super::Protocol;
use super::rules::Action;
use super::{Packet, RuleResult, ct};
use ipnetwork::IpNetwork;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Cond {
    Proto(Protocol),
    Src(IpNetwork),
    Dst(IpNetwork),
    Iif(String),
    Oif(String),
    Dport(Vec<(u16, u16)>),
    Sport(Vec<(u16, u16)>),
    Uid(u32, u32),
    Gid(u32, u32),
    Mark(u32, u32),
    ConnMark(u32, u32),
    CtState(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    None,
    Verdict(Action),
    Redirect(u16),
    Tproxy { port: u16, mark: u32, mask: u32 },
    SetMark { value: u32, mask: u32 },
    SaveMark,
    RestoreMark,
    Zone(u16),
}

/// A parsed rule: every condition (with its `!`) and the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    conds: Vec<(Cond, bool)>,
    target: Target,
}

/// Words, keeping a double-quoted string (a `--comment`) as one.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn num(text: &str) -> Result<u32, String> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|_| format!("not a number: {text:?}"))
}

/// `VALUE[/MASK]`.
fn masked(text: &str) -> Result<(u32, u32), String> {
    match text.split_once('/') {
        Some((v, m)) => Ok((num(v)?, num(m)?)),
        None => Ok((num(text)?, u32::MAX)),
    }
}

fn range(text: &str) -> Result<(u32, u32), String> {
    match text.split_once(['-', ':']) {
        Some((a, b)) => Ok((num(a)?, num(b)?)),
        None => num(text).map(|n| (n, n)),
    }
}

fn ports(text: &str) -> Result<Vec<(u16, u16)>, String> {
    text.split(',')
        .map(|p| {
            let (a, b) = range(p)?;
            let port = |n: u32| u16::try_from(n).map_err(|_| format!("port {n}"));
            Ok((port(a)?, port(b)?))
        })
        .collect()
}

fn net(text: &str) -> Result<IpNetwork, String> {
    text.parse().map_err(|_| format!("not a network: {text:?}"))
}

fn ct_states(text: &str) -> Result<u32, String> {
    text.split(',')
        .map(|s| match s {
            "INVALID" => Ok(ct::INVALID),
            "ESTABLISHED" => Ok(ct::ESTABLISHED),
            "RELATED" => Ok(ct::RELATED),
            "NEW" => Ok(ct::NEW),
            other => Err(format!("conntrack state {other}")),
        })
        .try_fold(0, |acc, s| s.map(|s| acc | s))
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, String> {
        let words = words(text);
        let mut it = words.iter().map(String::as_str).peekable();
        match (it.next(), it.next()) {
            (Some("-A"), Some(_)) => {}
            _ => return Err("expected -A CHAIN".into()),
        }
        let mut conds = Vec::new();
        let mut target = Target::None;
        let mut module = "";
        let mut negated = false;
        while let Some(word) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{word} without a value"));
            let cond = match word {
                "!" => {
                    negated = true;
                    continue;
                }
                "-m" => {
                    module = value()?;
                    continue;
                }
                "-p" => Cond::Proto(match value()? {
                    "tcp" | "6" => Protocol::Tcp,
                    "udp" | "17" => Protocol::Udp,
                    other => return Err(format!("protocol {other}")),
                }),
                "-s" => Cond::Src(net(value()?)?),
                "-d" => Cond::Dst(net(value()?)?),
                "-i" => Cond::Iif(value()?.to_owned()),
                "-o" => Cond::Oif(value()?.to_owned()),
                "--dport" | "--dports" | "--destination-ports" => Cond::Dport(ports(value()?)?),
                "--sport" | "--sports" | "--source-ports" => Cond::Sport(ports(value()?)?),
                "--uid-owner" => {
                    let (a, b) = range(value()?)?;
                    Cond::Uid(a, b)
                }
                "--gid-owner" => {
                    let (a, b) = range(value()?)?;
                    Cond::Gid(a, b)
                }
                "--mark" if module == "connmark" => {
                    let (v, m) = masked(value()?)?;
                    Cond::ConnMark(v, m)
                }
                "--mark" => {
                    let (v, m) = masked(value()?)?;
                    Cond::Mark(v, m)
                }
                "--ctstate" | "--state" => Cond::CtState(ct_states(value()?)?),
                "--comment" => {
                    value()?;
                    continue;
                }
                "-j" | "-g" => {
                    let name = value()?;
                    target = match (word, name) {
                        ("-g", chain) => Target::Verdict(Action::Goto(chain.to_owned())),
                        (_, "ACCEPT") => Target::Verdict(Action::Accept),
                        (_, "DROP") => Target::Verdict(Action::Drop),
                        (_, "RETURN") => Target::Verdict(Action::Return),
                        (_, "REDIRECT") => Target::Redirect(0),
                        (_, "TPROXY") => Target::Tproxy {
                            port: 0,
                            mark: 0,
                            mask: 0,
                        },
                        (_, "MARK") => Target::SetMark { value: 0, mask: 0 },
                        (_, "CONNMARK") => Target::SaveMark,
                        (_, "CT") => Target::Zone(0),
                        (_, chain) => Target::Verdict(Action::Jump(chain.to_owned())),
                    };
                    module = "";
                    continue;
                }
                // Target options.
                "--to-ports" => {
                    let (p, _) = *ports(value()?)?.first().ok_or("no port")?;
                    target = Target::Redirect(p);
                    continue;
                }
                "--on-port" => {
                    let port = u16::try_from(num(value()?)?).map_err(|e| e.to_string())?;
                    if let Target::Tproxy { port: p, .. } = &mut target {
                        *p = port;
                    }
                    continue;
                }
                "--tproxy-mark" => {
                    let (v, m) = masked(value()?)?;
                    if let Target::Tproxy { mark, mask, .. } = &mut target {
                        (*mark, *mask) = (v, m);
                    }
                    continue;
                }
                "--set-xmark" | "--set-mark" => {
                    let (v, m) = masked(value()?)?;
                    target = Target::SetMark { value: v, mask: m };
                    continue;
                }
                "--save-mark" => {
                    target = Target::SaveMark;
                    continue;
                }
                "--restore-mark" => {
                    target = Target::RestoreMark;
                    continue;
                }
                "--zone" => {
                    let zone = u16::try_from(num(value()?)?).map_err(|e| e.to_string())?;
                    target = Target::Zone(zone);
                    continue;
                }
                "--on-ip" | "--nfmask" | "--ctmask" => {
                    value()?;
                    continue;
                }
                other => return Err(format!("option {other} is not modelled")),
            };
            conds.push((cond, std::mem::take(&mut negated)));
        }
        Ok(Rule { conds, target })
    }

    fn holds(cond: &Cond, p: &Packet) -> bool {
        let iface = |rule: &str, have: &Option<String>| match (rule.strip_suffix('+'), have) {
            (_, None) => false,
            (Some(prefix), Some(name)) => name.starts_with(prefix),
            (None, Some(name)) => name == rule,
        };
        let in_ports =
            |list: &[(u16, u16)], port: u16| list.iter().any(|(a, b)| (*a..=*b).contains(&port));
        match cond {
            Cond::Proto(proto) => *proto == p.proto,
            Cond::Src(net) => net.contains(p.src),
            Cond::Dst(net) => net.contains(p.dst),
            Cond::Iif(name) => iface(name, &p.iif),
            Cond::Oif(name) => iface(name, &p.oif),
            Cond::Dport(list) => in_ports(list, p.dport),
            Cond::Sport(list) => in_ports(list, p.sport),
            Cond::Uid(a, b) => p.owner.is_some_and(|(uid, _)| (*a..=*b).contains(&uid)),
            Cond::Gid(a, b) => p.owner.is_some_and(|(_, gid)| (*a..=*b).contains(&gid)),
            Cond::Mark(v, m) => p.mark & m == *v,
            Cond::ConnMark(v, m) => p.ctmark & m == *v,
            Cond::CtState(states) => p.ctstate & states != 0,
        }
    }

    pub(crate) fn eval(&self, p: &mut Packet) -> RuleResult {
        let matched = self.conds.iter().all(|(cond, negated)| {
            // xt_owner: without a socket, only a negated match matches.
            if matches!(cond, Cond::Uid(..) | Cond::Gid(..)) && p.owner.is_none() {
                return *negated;
            }
            Rule::holds(cond, p) != *negated
        });
        let mut effects = Vec::new();
        if !matched {
            return RuleResult {
                matched,
                action: Action::Continue,
                effects,
            };
        }
        let action = match &self.target {
            Target::None => Action::Continue,
            Target::Verdict(a) => a.clone(),
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
}
