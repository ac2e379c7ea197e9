//! The per-family assembly: [`Builder`] collects the rule operations of the IPv4 and IPv6 plans
//! side by side, in emission order, and numbers the list groups.

use super::rule_parts::{gid, uid};
use crate::config::CaptureConfig;
use crate::plan::model::{Chain, Family, ListGroup, Match, Position, Rule, RuleOp, Table, Target};
use ipnetwork::{IpNetwork, Ipv6Network};
use std::net::Ipv6Addr;

/// Which families a rule goes to.
#[derive(Clone, Copy)]
pub(super) enum Families {
    Both,
    Only(Family),
}

pub(super) struct Builder<'a> {
    pub(super) cfg: &'a CaptureConfig,
    pub(super) v4: Vec<RuleOp>,
    pub(super) v6: Vec<RuleOp>,
    next_group: u32,
}

impl<'a> Builder<'a> {
    pub(super) fn new(cfg: &'a CaptureConfig) -> Self {
        Builder {
            cfg,
            v4: Vec::new(),
            v6: Vec::new(),
            next_group: 0,
        }
    }

    pub(super) fn group(&mut self) -> ListGroup {
        self.next_group += 1;
        ListGroup(self.next_group)
    }

    fn push(
        &mut self,
        families: Families,
        (table, chain): (Table, Chain),
        position: Position,
        rule: Rule,
        group: Option<ListGroup>,
    ) {
        let op = RuleOp {
            table,
            chain,
            position,
            rule,
            group,
        };
        match families {
            Families::Both => {
                self.v4.push(op.clone());
                self.v6.push(op);
            }
            Families::Only(Family::V4) => self.v4.push(op),
            Families::Only(Family::V6) => self.v6.push(op),
        }
    }

    /// Appends a rule to both families.
    pub(super) fn append(
        &mut self,
        table: Table,
        chain: Chain,
        matches: Vec<Match>,
        target: Target,
    ) {
        self.push(
            Families::Both,
            (table, chain),
            Position::Append,
            Rule { matches, target },
            None,
        );
    }

    /// Appends a rule that is one element's copy of a list (see [`ListGroup`]).
    pub(super) fn append_member(
        &mut self,
        group: ListGroup,
        families: Families,
        table: Table,
        chain: Chain,
        matches: Vec<Match>,
        target: Target,
    ) {
        self.push(
            families,
            (table, chain),
            Position::Append,
            Rule { matches, target },
            Some(group),
        );
    }

    pub(super) fn append_to(
        &mut self,
        family: Family,
        table: Table,
        chain: Chain,
        matches: Vec<Match>,
        target: Target,
    ) {
        self.push(
            Families::Only(family),
            (table, chain),
            Position::Append,
            Rule { matches, target },
            None,
        );
    }

    pub(super) fn insert(
        &mut self,
        families: Families,
        table: Table,
        chain: Chain,
        index: u32,
        matches: Vec<Match>,
        target: Target,
    ) {
        self.push(
            families,
            (table, chain),
            Position::Insert(index),
            Rule { matches, target },
            None,
        );
    }

    /// Appends one rule per family whose matches depend on the family (Istio's
    /// AppendVersionedRule); `rule` gets the family and its loopback network.
    pub(super) fn append_versioned(
        &mut self,
        table: Table,
        chain: Chain,
        rule: impl Fn(Family, IpNetwork) -> (Vec<Match>, Target),
    ) {
        for family in [Family::V4, Family::V6] {
            let (matches, target) = rule(family, self.loopback(family));
            self.append_to(family, table, chain, matches, target);
        }
    }

    /// The loopback network the rules treat as "local" (ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR; ::1/128).
    fn loopback(&self, family: Family) -> IpNetwork {
        match family {
            Family::V4 => IpNetwork::V4(self.cfg.ipv4_loopback_cidr),
            Family::V6 => IpNetwork::V6(Ipv6Network::new(Ipv6Addr::LOCALHOST, 128).expect("/128")),
        }
    }

    /// The proxy gids whose traffic is exempt: none under --strict, which identifies the proxy
    /// by uid only (a gid rule matches every process whose primary group is the proxy's, e.g. an
    /// app container run with `runAsGroup: 1337`).
    pub(super) fn proxy_gids(&self) -> &'a [u32] {
        if self.cfg.strict {
            &[]
        } else {
            &self.cfg.proxy_gids
        }
    }

    /// An owner match for each proxy uid, then each exempt proxy gid.
    pub(super) fn proxy_owners(&self) -> Vec<Match> {
        let uids = self.cfg.proxy_uids.iter().map(|&u| uid(u, false));
        let gids = self.proxy_gids().iter().map(|&g| gid(g, false));
        uids.chain(gids).collect()
    }
}
