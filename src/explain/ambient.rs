//! Ambient mode in explain: the rules ztunnel's redirection installs in a pod (the plan's
//! expected rules, or the kernel's), walked by the one simulator ([`super::simulate`]), with
//! verdicts named after ztunnel's ports (`captured-outbound 15001`, `captured-inbound 15006`,
//! `captured-dns 15053`) and, for a connection left alone, what kept it out of ztunnel
//! (`direct (ztunnel's own)`, `direct (kubelet probe)`, `direct (HBONE 15008)`, …).
//!
//! The reason is found by asking the same rules again: a connection is `ztunnel's own` when it
//! carries ztunnel's mark and would be captured without it, a `kubelet probe` when it would be
//! captured from another source, and so on. So the words follow the rules, whichever backend
//! spells them, and never claim a reason the rules do not act on.

use super::flow::{Direction, Flow};
use super::rules::{Rules, RulesError};
use super::simulate::{self, Explanation, Listeners, Verdict};
use crate::ambient::nftables::install;
use crate::ambient::plan::AmbientPlan;
use crate::ambient::readback::expected_iptables;
use crate::ambient::{
    CONN_MARK, DNS_PORT, INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, MARK_MASK, OUTBOUND_PORT,
    ZTUNNEL_MARK,
};
use crate::backend::TypedRules;
use crate::backend::iptables::saved;
use crate::config::BackendKind;
use std::net::{IpAddr, SocketAddr};

/// ztunnel's listeners in the pod.
pub fn listeners() -> Listeners {
    Listeners {
        outbound: OUTBOUND_PORT,
        inbound: INBOUND_PLAINTEXT_PORT,
        dns: DNS_PORT,
    }
}

/// The plan's rules in `backend`'s spelling, typed as that backend reads them back: the
/// iptables rules the install would restore, or the nftables contents its netlink batch would
/// leave in a fresh namespace.
pub fn expected_rules(plan: &AmbientPlan, backend: BackendKind) -> Result<Rules, RulesError> {
    Rules::from_typed(&expected_typed(plan, backend))
}

/// The same, before the simulator's model.
fn expected_typed(plan: &AmbientPlan, backend: BackendKind) -> TypedRules {
    match backend {
        BackendKind::Iptables => {
            TypedRules::Iptables(saved::typed(&expected_iptables(plan).chains))
        }
        BackendKind::Nftables => TypedRules::Nftables(install::expected(plan)),
    }
}

/// Walks `flow` through ambient's `rules`.
pub fn explain(rules: &Rules, flow: &Flow) -> Explanation {
    let mut ex = simulate::explain(rules, flow, &listeners());
    if ex.verdict == Verdict::Direct {
        ex.reason = reason(rules, flow);
    }
    ex
}

fn captured(rules: &Rules, flow: &Flow) -> bool {
    simulate::explain(rules, flow, &listeners())
        .verdict
        .port()
        .is_some()
}

/// An address of `addr`'s family that no ambient rule names.
fn elsewhere(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => IpAddr::from([198, 51, 100, 200]),
        IpAddr::V6(_) => "2001:db8:ffff::200".parse().expect("an IPv6 address"),
    }
}

/// What kept a direct `flow` out of ztunnel: the first property whose change the rules would
/// capture.
fn reason(rules: &Rules, flow: &Flow) -> Option<String> {
    let with = |change: &dyn Fn(&mut Flow)| {
        let mut other = flow.clone();
        change(&mut other);
        captured(rules, &other)
    };
    let mark = flow.mark & MARK_MASK;
    if mark == ZTUNNEL_MARK && with(&|f| f.mark = 0) {
        return Some("ztunnel's own".into());
    }
    if mark == CONN_MARK && with(&|f| f.mark = 0) {
        return Some("ztunnel's connection".into());
    }
    let dst = flow.dst.ip();
    if flow.dir == Direction::In
        && flow.dst.port() == INBOUND_HBONE_PORT
        && with(&|f| f.dst.set_port(80))
    {
        return Some(format!("HBONE {INBOUND_HBONE_PORT}"));
    }
    if flow.dir == Direction::In && flow.src.is_some() && with(&|f| f.src = None) {
        return Some("kubelet probe".into());
    }
    if flow.dir == Direction::Out
        && !dst.is_loopback()
        && with(&|f| f.dst = SocketAddr::new(elsewhere(dst), f.dst.port()))
    {
        return Some("reply to a kubelet probe".into());
    }
    if dst.is_loopback()
        && with(&|f| {
            f.dst = SocketAddr::new(elsewhere(dst), f.dst.port());
            f.src = None;
            f.iface = "eth0".into();
        })
    {
        return Some("loopback".into());
    }
    if flow.dir == Direction::Out && flow.iface == "lo" && with(&|f| f.iface = "eth0".into()) {
        return Some("by lo".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ambient::config::{NodeSettings, PodConfig, PodOverrides};
    use crate::ambient::plan;

    #[test]
    fn verdicts_name_ztunnels_ports_and_why() {
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
        for backend in [BackendKind::Iptables, BackendKind::Nftables] {
            verdicts_of(&plan, backend);
        }
        let rules = expected_rules(&plan, BackendKind::Iptables).unwrap();
        let ex = explain(
            &rules,
            &"dir=in dst=192.0.2.1:8080 src=169.254.7.127"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            ex.decided_by.and_then(|s| s.rule).as_deref(),
            Some("-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT")
        );
    }

    fn verdicts_of(plan: &AmbientPlan, backend: BackendKind) {
        let rules = expected_rules(plan, backend).unwrap();
        for (flow, want) in [
            ("dir=out dst=198.51.100.10:80", "captured-outbound 15001"),
            ("dir=out dst=[2001:db8:1::10]:80", "captured-outbound 15001"),
            (
                "dir=out dst=198.51.100.10:80 mark=0x539",
                "direct (ztunnel's own)",
            ),
            ("dir=out dst=127.0.0.1:8080", "direct (loopback)"),
            ("dir=out dst=192.0.2.1:8080 oif=lo", "direct (by lo)"),
            ("dir=out proto=udp dst=192.0.2.53:53", "captured-dns 15053"),
            ("dir=out proto=udp dst=127.0.0.53:53", "direct (loopback)"),
            ("dir=out dst=127.0.0.53:53", "captured-dns 15053"),
            (
                "dir=out proto=udp dst=192.0.2.53:53 mark=0x539",
                "direct (ztunnel's own)",
            ),
            (
                "dir=in dst=192.0.2.1:8080 iif=net0",
                "captured-inbound 15006",
            ),
            (
                "dir=in dst=192.0.2.1:15008 iif=net0",
                "direct (HBONE 15008)",
            ),
            (
                "dir=in dst=192.0.2.1:8080 src=169.254.7.127",
                "direct (kubelet probe)",
            ),
            (
                "dir=in dst=198.51.100.10:80 iif=virt0",
                "captured-outbound 15001",
            ),
            (
                "dir=in dst=198.51.100.10:80 iif=virt1",
                "captured-inbound 15006",
            ),
            (
                "dir=out dst=169.254.7.127:4000",
                "direct (reply to a kubelet probe)",
            ),
            (
                "dir=out dst=198.51.100.10:80 mark=0x111",
                "direct (ztunnel's connection)",
            ),
        ] {
            let ex = explain(&rules, &flow.parse().unwrap());
            assert_eq!(ex.verdict_text(), want, "{backend:?}: {flow}");
            if ex.verdict.port().is_some() {
                let by = ex.decided_by.expect("a redirecting rule");
                let rule = by.rule.unwrap().to_lowercase();
                assert!(rule.contains("redirect"), "{backend:?}: {flow}: {rule}");
            }
        }
    }
}
