//! One `iptables-save` rule, typed: `-A CHAIN [!] MATCH… -j TARGET OPTIONS…` read into its
//! matches (each with its `!`) and its target. What read-back hands `explain` for the iptables
//! backend, from the kernel (`iptables-save`) or from the plan (the same spelling, see
//! `Firewall::expected`). Reading is total: an option this model does not hold is
//! kept as [`Match::Other`] (or [`Target::Other`]) with its text, for the reader to refuse.

use crate::plan::Protocol;
use ipnetwork::IpNetwork;
use std::collections::BTreeMap;

/// A conntrack state of `-m conntrack --ctstate` (or `-m state --state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    Invalid,
    Established,
    Related,
    New,
}

/// One match of a rule (without its `!`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    Proto(Protocol),
    Src(IpNetwork),
    Dst(IpNetwork),
    /// `-i NAME` (`NAME+`: every name starting with NAME).
    InIface(String),
    OutIface(String),
    /// Inclusive port ranges (a single port is `(p, p)`).
    Dport(Vec<(u16, u16)>),
    Sport(Vec<(u16, u16)>),
    /// Inclusive uid and gid ranges of `-m owner`.
    Uid(u32, u32),
    Gid(u32, u32),
    /// `VALUE/MASK` of `-m mark --mark` and `-m connmark --mark`.
    Mark(u32, u32),
    ConnMark(u32, u32),
    CtState(Vec<ConnState>),
    /// An option this model does not hold, as written.
    Other(String),
}

/// What a matching rule does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// No `-j`: the rule only counts.
    None,
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
    Redirect(u16),
    Tproxy {
        port: u16,
        mark: u32,
        mask: u32,
    },
    /// The mark becomes `(mark & !mask) ^ value`.
    SetMark {
        value: u32,
        mask: u32,
    },
    SaveMark,
    RestoreMark,
    /// `-j CONNMARK --set-xmark VALUE/MASK`: the connection mark becomes `(ctmark & !mask) ^ value`.
    SetConnMark {
        value: u32,
        mask: u32,
    },
    Zone(u16),
    /// A target (or option) this model does not hold, as written.
    Other(String),
}

/// A saved rule: its text, chain, matches and target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedRule {
    /// The line as `iptables-save` prints it.
    pub text: String,
    pub chain: String,
    /// Each match and whether it is negated.
    pub matches: Vec<(Match, bool)>,
    pub target: Target,
}

/// Per read-back chain key (`ipv4 nat ISTIO_OUTPUT`), its rules, typed.
pub type SavedRules = BTreeMap<String, Vec<SavedRule>>;

/// The rules of a read-back's chains (or of a plan's expected rules), typed.
pub fn typed(chains: &BTreeMap<String, Vec<String>>) -> SavedRules {
    chains
        .iter()
        .map(|(key, lines)| {
            (
                key.clone(),
                lines.iter().map(|l| SavedRule::parse(l)).collect(),
            )
        })
        .collect()
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

fn num(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// `VALUE[/MASK]`.
fn masked(text: &str) -> Option<(u32, u32)> {
    match text.split_once('/') {
        Some((v, m)) => Some((num(v)?, num(m)?)),
        None => Some((num(text)?, u32::MAX)),
    }
}

fn range(text: &str) -> Option<(u32, u32)> {
    match text.split_once(['-', ':']) {
        Some((a, b)) => Some((num(a)?, num(b)?)),
        None => num(text).map(|n| (n, n)),
    }
}

fn ports(text: &str) -> Option<Vec<(u16, u16)>> {
    text.split(',')
        .map(|p| {
            let (a, b) = range(p)?;
            Some((u16::try_from(a).ok()?, u16::try_from(b).ok()?))
        })
        .collect()
}

fn states(text: &str) -> Option<Vec<ConnState>> {
    text.split(',')
        .map(|s| match s {
            "INVALID" => Some(ConnState::Invalid),
            "ESTABLISHED" => Some(ConnState::Established),
            "RELATED" => Some(ConnState::Related),
            "NEW" => Some(ConnState::New),
            _ => None,
        })
        .collect()
}

impl SavedRule {
    /// Reads one `-A CHAIN …` line; never fails (see the module's doc).
    pub fn parse(text: &str) -> SavedRule {
        let words = words(text);
        let mut it = words.iter().map(String::as_str);
        let mut rule = SavedRule {
            text: text.to_owned(),
            chain: String::new(),
            matches: Vec::new(),
            target: Target::None,
        };
        match (it.next(), it.next()) {
            (Some("-A"), Some(chain)) => rule.chain = chain.to_owned(),
            _ => {
                rule.matches
                    .push((Match::Other("a line without -A CHAIN".into()), false));
                return rule;
            }
        }
        let mut module = "";
        let mut negated = false;
        while let Some(word) = it.next() {
            // Words without a value.
            match word {
                "!" => {
                    negated = true;
                    continue;
                }
                "--save-mark" => {
                    rule.target = Target::SaveMark;
                    continue;
                }
                "--restore-mark" => {
                    rule.target = Target::RestoreMark;
                    continue;
                }
                // `-m owner --socket-exists` (the host's probe rule) takes no value either.
                "--socket-exists" => {
                    rule.matches
                        .push((Match::Other(word.to_owned()), std::mem::take(&mut negated)));
                    continue;
                }
                _ => {}
            }
            let value = it.next();
            let other = || Match::Other(format!("{word} {}", value.unwrap_or_default()));
            let mut take = |m: Option<Match>| {
                let m = m.unwrap_or_else(other);
                rule.matches.push((m, std::mem::take(&mut negated)));
            };
            match (word, value) {
                ("-m", Some(m)) => module = m,
                ("-p", Some(p)) => take(match p {
                    "tcp" | "6" => Some(Match::Proto(Protocol::Tcp)),
                    "udp" | "17" => Some(Match::Proto(Protocol::Udp)),
                    _ => None,
                }),
                ("-s", Some(n)) => take(n.parse().ok().map(Match::Src)),
                ("-d", Some(n)) => take(n.parse().ok().map(Match::Dst)),
                ("-i", Some(n)) => take(Some(Match::InIface(n.to_owned()))),
                ("-o", Some(n)) => take(Some(Match::OutIface(n.to_owned()))),
                ("--dport" | "--dports" | "--destination-ports", Some(p)) => {
                    take(ports(p).map(Match::Dport))
                }
                ("--sport" | "--sports" | "--source-ports", Some(p)) => {
                    take(ports(p).map(Match::Sport))
                }
                ("--uid-owner", Some(r)) => take(range(r).map(|(a, b)| Match::Uid(a, b))),
                ("--gid-owner", Some(r)) => take(range(r).map(|(a, b)| Match::Gid(a, b))),
                ("--mark", Some(m)) if module == "connmark" => {
                    take(masked(m).map(|(v, m)| Match::ConnMark(v, m)))
                }
                ("--mark", Some(m)) => take(masked(m).map(|(v, m)| Match::Mark(v, m))),
                ("--ctstate" | "--state", Some(s)) => take(states(s).map(Match::CtState)),
                ("--comment", Some(_)) => {}
                ("-j" | "-g", Some(name)) => {
                    rule.target = match (word, name) {
                        ("-g", chain) => Target::Goto(chain.to_owned()),
                        (_, "ACCEPT") => Target::Accept,
                        (_, "DROP") => Target::Drop,
                        (_, "RETURN") => Target::Return,
                        (_, "REDIRECT") => Target::Redirect(0),
                        (_, "TPROXY") => Target::Tproxy {
                            port: 0,
                            mark: 0,
                            mask: 0,
                        },
                        (_, "MARK") => Target::SetMark { value: 0, mask: 0 },
                        (_, "CONNMARK") => Target::SaveMark,
                        (_, "CT") => Target::Zone(0),
                        (_, chain) => Target::Jump(chain.to_owned()),
                    };
                    module = "";
                }
                // Target options.
                ("--to-ports" | "--to-port", Some(p)) => {
                    rule.target = match ports(p).and_then(|p| p.first().copied()) {
                        Some((port, _)) => Target::Redirect(port),
                        None => Target::Other(format!("--to-ports {p}")),
                    }
                }
                ("--on-port", Some(p)) => {
                    let port = num(p).and_then(|n| u16::try_from(n).ok());
                    match (&mut rule.target, port) {
                        (Target::Tproxy { port: at, .. }, Some(port)) => *at = port,
                        _ => rule.target = Target::Other(format!("--on-port {p}")),
                    }
                }
                ("--tproxy-mark", Some(m)) => match (&mut rule.target, masked(m)) {
                    (Target::Tproxy { mark, mask, .. }, Some((v, k))) => (*mark, *mask) = (v, k),
                    _ => rule.target = Target::Other(format!("--tproxy-mark {m}")),
                },
                ("--set-xmark" | "--set-mark", Some(m)) => {
                    let connmark = matches!(rule.target, Target::SaveMark);
                    rule.target = match masked(m) {
                        Some((value, mask)) if connmark => Target::SetConnMark { value, mask },
                        Some((value, mask)) => Target::SetMark { value, mask },
                        None => Target::Other(format!("{word} {m}")),
                    }
                }
                ("--zone", Some(z)) => {
                    rule.target = match num(z).and_then(|n| u16::try_from(n).ok()) {
                        Some(zone) => Target::Zone(zone),
                        None => Target::Other(format!("--zone {z}")),
                    }
                }
                ("--on-ip" | "--nfmask" | "--ctmask", Some(_)) => {}
                _ => take(None),
            }
        }
        rule
    }

    /// The first match or target this model does not hold, as written.
    pub fn unmodelled(&self) -> Option<&str> {
        self.matches
            .iter()
            .find_map(|(m, _)| match m {
                Match::Other(text) => Some(text.as_str()),
                _ => None,
            })
            .or(match &self.target {
                Target::Other(text) => Some(text.as_str()),
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_rules_read_typed() {
        let r = SavedRule::parse(
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner \
             --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        );
        assert_eq!(r.chain, "ISTIO_OUTPUT");
        assert_eq!(
            r.matches,
            [
                (Match::Dst("127.0.0.1/32".parse().unwrap()), true),
                (Match::OutIface("lo".into()), false),
                (Match::Proto(Protocol::Tcp), false),
                (Match::Dport(vec![(15008, 15008)]), true),
                (Match::Uid(1337, 1337), false),
            ]
        );
        assert_eq!(r.target, Target::Jump("ISTIO_IN_REDIRECT".into()));
        let r = SavedRule::parse(
            "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 \
             --tproxy-mark 0x539/0xffffffff",
        );
        assert_eq!(
            r.target,
            Target::Tproxy {
                port: 15006,
                mark: 0x539,
                mask: u32::MAX
            }
        );
        let r = SavedRule::parse(
            "-A PREROUTING -p tcp -m mark --mark 0x539 -j CONNMARK --save-mark --nfmask \
             0xffffffff --ctmask 0xffffffff",
        );
        assert_eq!(r.target, Target::SaveMark);
        assert_eq!(r.unmodelled(), None);
        let r = SavedRule::parse(
            "-A OUTPUT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j CONNMARK --restore-mark",
        );
        assert_eq!(r.target, Target::RestoreMark);
        assert_eq!(
            r.matches[1],
            (
                Match::CtState(vec![ConnState::Related, ConnState::Established]),
                false
            )
        );
        let r = SavedRule::parse(
            "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
        );
        assert_eq!(
            r.target,
            Target::SetConnMark {
                value: 0x111,
                mask: 0xfff
            }
        );
        assert_eq!(r.matches, [(Match::Mark(0x539, 0xfff), false)]);
        let r = SavedRule::parse("-A ISTIO_OUTPUT -p udp -j REDIRECT --to-port 15053");
        assert_eq!(r.target, Target::Redirect(15053));
    }

    #[test]
    fn what_it_does_not_hold_is_kept_as_written() {
        let r = SavedRule::parse("-A OUTPUT -m frobnicate --level 3 -j ACCEPT");
        assert_eq!(r.unmodelled(), Some("--level 3"));
        assert_eq!(r.target, Target::Accept);
        assert!(SavedRule::parse("garbage").unmodelled().is_some());
        let r = SavedRule::parse(
            "-A ISTIO_POSTRT -m owner --socket-exists -p tcp -m set --match-set \
             istio-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127",
        );
        assert_eq!(r.unmodelled(), Some("--socket-exists"));
        assert_eq!(r.matches[1], (Match::Proto(Protocol::Tcp), false));
    }
}
