//! The temporary table `inet meshcap-trace`: a filter chain on the prerouting and the output hook,
//! ahead of every table meshcap, Istio or iptables-nft installs, whose rules set `meta nftrace`
//! on the packets the filter names. Added and removed in a batch each.

use super::filter::Filter;
use crate::backend::BackendError;
use crate::backend::nftables::batch::{self, Builder, Built, INET, What};
use crate::backend::nftables::codec::expr::REG_1;
use crate::backend::nftables::codec::{Chain, ChainHook, Expr, MetaKey};
use crate::backend::nftables::dump::tables;
use crate::backend::nftables::ir::{AddrField, AddrValue, Item, PortField, PortValue, RuleSpec};
use crate::backend::nftables::netlink::open;
use crate::backend::nftables::socket::NetlinkSocket;
use ipnetwork::IpNetwork;
use nix::libc;

/// The table's name (family inet).
pub const TRACE_TABLE: &str = "meshcap-trace";
/// Before the raw tables (-300), so every table that can change the packet's fate is traced.
pub const TRACE_PRIORITY: i32 = -350;

/// `meta nftrace set 1`: a 1 in register 1, then the statement.
fn set_nftrace() -> [Expr; 2] {
    [
        Expr::Immediate {
            dreg: REG_1,
            data: vec![1],
        },
        Expr::MetaSet {
            key: MetaKey::NfTrace,
            sreg: REG_1,
        },
    ]
}

/// The match part of each rule the filter needs (one per protocol: a port without `proto=`
/// takes a tcp and a udp rule).
pub fn match_rules(filter: &Filter) -> Vec<RuleSpec> {
    filter
        .protocols()
        .into_iter()
        .map(|proto| {
            let mut items = Vec::new();
            if let Some(family) = filter.family() {
                items.push(Item::NfProto(family));
                let addr = |field, ip| Item::Addr {
                    family,
                    field,
                    negated: false,
                    value: AddrValue::Prefix(IpNetwork::from(ip)),
                };
                if let Some(dst) = filter.dst {
                    items.push(addr(AddrField::Daddr, dst));
                }
                if let Some(src) = filter.src {
                    items.push(addr(AddrField::Saddr, src));
                }
            }
            if let Some(proto) = proto {
                items.push(Item::L4Proto(proto));
                if let Some(port) = filter.dport {
                    items.push(Item::Port {
                        proto,
                        field: PortField::Dport,
                        negated: false,
                        value: PortValue::One(port),
                    });
                }
            }
            RuleSpec { items }
        })
        .collect()
}

/// The batch that adds the table, its two chains and the marking rules.
pub fn add_batch(filter: &Filter) -> Built {
    let mut b = Builder::new();
    b.add_table(TRACE_TABLE);
    let rules = match_rules(filter);
    for (name, hooknum) in [
        ("prerouting", libc::NF_INET_PRE_ROUTING),
        ("output", libc::NF_INET_LOCAL_OUT),
    ] {
        let chain = Chain {
            family: INET,
            table: TRACE_TABLE.to_owned(),
            name: name.to_owned(),
            hook: Some(ChainHook {
                hooknum: hooknum as u32,
                priority: TRACE_PRIORITY,
            }),
            policy: Some(libc::NF_ACCEPT as u32),
            chain_type: Some("filter".to_owned()),
            ..Chain::default()
        };
        b.add_chain(
            chain,
            format!(
                "add chain inet {TRACE_TABLE} {name} {{ type filter hook {name} priority \
                 {TRACE_PRIORITY} ; }}"
            ),
        );
        for spec in &rules {
            let what = What::Text(format!(
                "add rule inet {TRACE_TABLE} {name} {}",
                rule_text(spec)
            ));
            b.rule_with(TRACE_TABLE, name, spec, &set_nftrace(), what);
        }
    }
    b.finish()
}

/// A marking rule in nft syntax.
pub fn rule_text(spec: &RuleSpec) -> String {
    let matches = spec.to_string();
    if matches.is_empty() {
        "meta nftrace set 1".to_owned()
    } else {
        format!("{matches} meta nftrace set 1")
    }
}

/// Whether the namespace holds the table already (another trace runs, or one was killed).
pub fn exists(nl: &mut NetlinkSocket) -> Result<bool, BackendError> {
    Ok(tables(nl)?.iter().any(|t| t.name == TRACE_TABLE))
}

/// Adds the table; the returned guard removes it when dropped (or, reporting the outcome,
/// with [`Installed::remove`]).
pub fn install(nl: &mut NetlinkSocket, filter: &Filter) -> Result<Installed, BackendError> {
    batch::send(nl, &add_batch(filter))?;
    Ok(Installed { removed: false })
}

/// The table in the kernel, removed on drop.
pub struct Installed {
    removed: bool,
}

impl Installed {
    /// Removes the table.
    pub fn remove(mut self) -> Result<(), BackendError> {
        self.removed = true;
        delete()
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = delete()
        {
            eprintln!("meshcap trace: removing table inet {TRACE_TABLE}: {e}");
        }
    }
}

/// Deletes the table (and with it its chains and rules) on a socket of its own.
fn delete() -> Result<(), BackendError> {
    let mut nl = open()?;
    batch::send(&mut nl, &batch::delete_batch(&[TRACE_TABLE.to_owned()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marking_rules_in_nft_syntax() {
        let f = Filter::parse(&["proto=tcp dst=198.51.100.10:80 src=192.0.2.1"]).unwrap();
        let texts: Vec<String> = match_rules(&f).iter().map(rule_text).collect();
        assert_eq!(
            texts,
            [
                "meta nfproto ipv4 ip daddr 198.51.100.10/32 ip saddr 192.0.2.1/32 \
              meta l4proto tcp tcp dport 80 meta nftrace set 1"
            ]
        );
        let f = Filter::parse(&["dst=[2001:db8::1]:53"]).unwrap();
        let texts: Vec<String> = match_rules(&f).iter().map(rule_text).collect();
        assert_eq!(texts.len(), 2);
        assert!(
            texts[1].contains("meta l4proto udp udp dport 53"),
            "{texts:?}"
        );
        let every: Vec<String> = match_rules(&Filter::default())
            .iter()
            .map(rule_text)
            .collect();
        assert_eq!(every, ["meta nftrace set 1"]);
    }

    #[test]
    fn batch_has_table_chains_and_rules() {
        let f = Filter::parse(&["dst=192.0.2.1:53"]).unwrap();
        let built = add_batch(&f);
        // Table, then per hook a chain and a tcp and a udp rule.
        assert_eq!(built.whats.len(), 1 + 2 * 3);
    }
}
