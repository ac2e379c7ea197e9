//! The nftables description in `nft` syntax: the `nft -f` script that `--dry-run` prints, and the
//! rule and chain text that names a batch message in errors and the debug log.

use super::ir::{
    AddrField, AddrValue, ChainSpec, Dir, Gid, Interval, Item, PortField, PortValue, RuleSpec,
    Spec, Verdict,
};
use super::prefix::{as_prefix, bits, prefix_mask, u128_to_ip};
use crate::backend::host::proto_name;
use crate::plan::Family;
use std::fmt;

/// The `nft -f` script: create-or-flush each table, its chains, its rules.
impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tables {
            writeln!(f, "add table inet {}", t.name)?;
            writeln!(f, "flush table inet {}", t.name)?;
            for set in &t.sets {
                let kind = match set.family {
                    Family::V4 => "ipv4_addr",
                    Family::V6 => "ipv6_addr",
                };
                writeln!(
                    f,
                    "add set inet {} {} {{ type {kind} ; }}",
                    t.name, set.name
                )?;
            }
            for c in &t.chains {
                writeln!(f, "{}", AddChain(t.name, c))?;
            }
            for c in &t.chains {
                for r in &c.rules {
                    writeln!(f, "add rule inet {} {} {r}", t.name, c.name)?;
                }
            }
        }
        Ok(())
    }
}

/// `add chain …` for a chain of a table, as in the script (also names the chain in errors).
pub struct AddChain<'a>(pub &'a str, pub &'a ChainSpec);

impl fmt::Display for AddChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let AddChain(table, c) = self;
        match c.base {
            Some(b) => write!(
                f,
                "add chain inet {table} {} {{ type {} hook {} priority {} ; }}",
                c.name,
                b.kind.name(),
                b.hook.name(),
                b.priority
            ),
            None => write!(f, "add chain inet {table} {}", c.name),
        }
    }
}

/// The rule in nft syntax: its items, space separated.
impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
    }
}

fn family_word(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn neq(negated: bool) -> &'static str {
    if negated { "!= " } else { "" }
}

/// An interval in nft syntax: a prefix when it is one, else `first-last`.
struct IntervalText(Family, Interval);

impl fmt::Display for IntervalText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let IntervalText(family, iv) = *self;
        match as_prefix(family, iv) {
            Some(net) => write!(f, "{}/{}", net.network(), net.prefix()),
            None => write!(
                f,
                "{}-{}",
                u128_to_ip(family, iv.start),
                u128_to_ip(family, iv.end)
            ),
        }
    }
}

/// The item in nft syntax.
impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::NfProto(Family::V4) => f.write_str("meta nfproto ipv4"),
            Item::NfProto(Family::V6) => f.write_str("meta nfproto ipv6"),
            Item::L4Proto(p) => write!(f, "meta l4proto {}", proto_name(*p)),
            Item::Iface {
                dir,
                name,
                prefix,
                negated,
            } => write!(
                f,
                "{} {}\"{}{}\"",
                if *dir == Dir::In {
                    "iifname"
                } else {
                    "oifname"
                },
                neq(*negated),
                name,
                if *prefix { "*" } else { "" }
            ),
            Item::Addr {
                family,
                field,
                negated,
                value,
            } => {
                let word = family_word(*family);
                let field = match field {
                    AddrField::Saddr => "saddr",
                    AddrField::Daddr => "daddr",
                };
                match value {
                    AddrValue::Prefix(net) => write!(
                        f,
                        "{word} {field} {}{}/{}",
                        neq(*negated),
                        net.network(),
                        net.prefix()
                    ),
                    AddrValue::Range(iv) => write!(
                        f,
                        "{word} {field} {}{}",
                        neq(*negated),
                        IntervalText(*family, *iv)
                    ),
                    AddrValue::Networks { prefix, starts } => {
                        let set = starts
                            .iter()
                            .map(|s| u128_to_ip(*family, *s).to_string())
                            .collect::<Vec<_>>()
                            .join(", ");
                        if u32::from(*prefix) == bits(*family) {
                            write!(f, "{word} {field} {}{{ {set} }}", neq(*negated))
                        } else {
                            // nft lists a masked lookup with an explicit `==`.
                            write!(
                                f,
                                "{word} {field} & {} {} {{ {set} }}",
                                prefix_mask(*family, *prefix),
                                if *negated { "!=" } else { "==" }
                            )
                        }
                    }
                }
            }
            Item::Port {
                proto,
                field,
                negated,
                value,
            } => {
                let field = match field {
                    PortField::Sport => "sport",
                    PortField::Dport => "dport",
                };
                let proto = proto_name(*proto);
                match value {
                    PortValue::One(p) => write!(f, "{proto} {field} {}{p}", neq(*negated)),
                    // A port set is keyed by protocol and port: a bare 16-bit key makes the
                    // kernel pick its bitmap backend, whose insertion walks every element
                    // already added (quadratic in the list); a concatenated key gets a hash.
                    PortValue::Set(ps) => write!(
                        f,
                        "meta l4proto . {proto} {field} {}{{ {} }}",
                        neq(*negated),
                        ps.iter()
                            .map(|p| format!("{proto} . {p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
            Item::SkUid { uid, negated } => write!(f, "meta skuid {}{uid}", neq(*negated)),
            Item::SkGid { gid, negated } => match gid {
                Gid::Id(id) => write!(f, "meta skgid {}{id}", neq(*negated)),
                Gid::Name(name) => write!(f, "meta skgid {}\"{name}\"", neq(*negated)),
            },
            Item::Mark { value, negated } => write!(f, "meta mark {}{value}", neq(*negated)),
            Item::CtMark(v) => write!(f, "ct mark {v}"),
            Item::CtState(mask) => {
                let names: Vec<&str> = [(1, "invalid"), (2, "established"), (4, "related")]
                    .into_iter()
                    .filter(|(bit, _)| mask & bit != 0)
                    .map(|(_, n)| n)
                    .collect();
                write!(f, "ct state {}", names.join(","))
            }
            Item::MarkMasked {
                value,
                mask,
                negated,
            } => write!(
                f,
                "meta mark & {mask:#x} {} {value:#x}",
                if *negated { "!=" } else { "==" }
            ),
            Item::CtMarkMasked { value, mask } => write!(f, "ct mark & {mask:#x} == {value:#x}"),
            Item::HasSocketOwner => f.write_str("meta skuid >= 0"),
            Item::AddrInSet { family, field, set } => write!(
                f,
                "{} {} @{set}",
                family_word(*family),
                match field {
                    AddrField::Saddr => "saddr",
                    AddrField::Daddr => "daddr",
                }
            ),
            Item::SetCtMark { value, mask } => {
                write!(f, "ct mark set ct mark & {:#x} | {value:#x}", !mask)
            }
            Item::Snat(addr) => write!(
                f,
                "snat {} to {addr}",
                if addr.is_ipv4() { "ip" } else { "ip6" }
            ),
            Item::Counter => f.write_str("counter"),
            Item::SetMark { value, mask } if *mask == u32::MAX => {
                write!(f, "meta mark set {value}")
            }
            Item::SetMark { value, mask } => write!(
                f,
                "meta mark set meta mark and {:#010x} xor {value:#010x}",
                !mask
            ),
            Item::SaveMark => f.write_str("ct mark set meta mark"),
            Item::RestoreMark => f.write_str("meta mark set ct mark"),
            Item::CtZone(z) => write!(f, "ct zone set {z}"),
            Item::Redirect(p) => write!(f, "redirect to :{p}"),
            Item::Tproxy { family, port } => match family {
                Some(family) => write!(f, "tproxy {} to :{port}", family_word(*family)),
                None => write!(f, "tproxy to :{port}"),
            },
            Item::Verdict(Verdict::Jump(c)) => write!(f, "jump {c}"),
            Item::Verdict(Verdict::Return) => f.write_str("return"),
            Item::Verdict(Verdict::Accept) => f.write_str("accept"),
            Item::Verdict(Verdict::Drop) => f.write_str("drop"),
        }
    }
}
