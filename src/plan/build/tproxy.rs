//! TPROXY's mangle rules (Istio's setup for INTERCEPTION_MODE=TPROXY): connection marks so that
//! replies follow the fwmark route back to lo, the 1338 mark on the proxy's loopback leg, and the
//! guards in front of ISTIO_INBOUND.

use super::builder::{Builder, Families};
use super::rule_parts::{iif, marked, not_dst, oif, passthrough_net, src, tcp};
use crate::plan::model::{Chain, Family, Match, OUTBOUND_MARK, Table, Target};

impl Builder<'_> {
    pub(super) fn tproxy_marks(&mut self) {
        let mark = self.cfg.tproxy_mark;
        // Remember the proxy's original_src mark on the connection.
        self.append(
            Table::Mangle,
            Chain::Prerouting,
            vec![tcp(), marked(mark)],
            Target::SaveMark,
        );
        // Packets the proxy already marked are not marked again.
        self.append(
            Table::Mangle,
            Chain::Output,
            vec![tcp(), oif("lo"), marked(mark)],
            Target::Return,
        );
        // The proxy's outbound leg to the pod's own address over lo is marked 1338 so that
        // ISTIO_INBOUND captures it (app -> VIP -> proxy outbound -> proxy inbound -> app).
        for owner in self.proxy_owners() {
            self.append_versioned(Table::Mangle, Chain::Output, |_, lo| {
                (
                    vec![not_dst(lo), tcp(), oif("lo"), owner.clone()],
                    Target::SetMark(OUTBOUND_MARK),
                )
            });
        }
        // Replies of TPROXYed connections follow the fwmark route back to lo.
        self.append(
            Table::Mangle,
            Chain::Output,
            vec![tcp(), Match::ConnMark(mark)],
            Target::RestoreMark,
        );
        // Guards in front of ISTIO_INBOUND: already-diverted packets, the proxy's passthrough
        // from 127.0.0.6/::6, and the app's own calls over lo are never TPROXYed.
        self.insert(
            Families::Both,
            Table::Mangle,
            Chain::Inbound,
            1,
            vec![tcp(), marked(mark)],
            Target::Return,
        );
        for family in [Family::V4, Family::V6] {
            self.insert(
                Families::Only(family),
                Table::Mangle,
                Chain::Inbound,
                2,
                vec![tcp(), src(passthrough_net(family)), iif("lo")],
                Target::Return,
            );
        }
        self.insert(
            Families::Both,
            Table::Mangle,
            Chain::Inbound,
            3,
            vec![
                tcp(),
                iif("lo"),
                Match::Mark {
                    value: OUTBOUND_MARK,
                    negated: true,
                },
            ],
            Target::Return,
        );
    }
}
