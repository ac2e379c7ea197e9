//! A traced packet's verdict in the words `meshcap explain` uses: the listener a capturing
//! rule sent it to (`captured-outbound 15001`, `captured-inbound 15006`, `captured-dns 15053`:
//! the ports Istio's sidecar and ztunnel listen on), and for ambient's rules why a packet was
//! left alone (`direct (ztunnel's own)`, `direct (HBONE 15008)`).
//!
//! Trace sees rules as text (the backends' read-back spelling) and packets as the kernel
//! reports them, so this reads both: the port of `redirect to :PORT`, `tproxy … to :PORT`,
//! `--to-ports PORT`, `--on-port PORT`; ambient's rules by their tables (`istio-ambient-*`) or
//! their masked marks (`0x539/0xfff`, `& 0x00000fff`), which sidecar rules never use.

use crate::ambient::{INBOUND_HBONE_PORT, MARK_MASK, ZTUNNEL_MARK};

/// The port a capturing rule's text sends the packet to.
pub fn redirect_port(text: &str) -> Option<u16> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words.windows(2).find_map(|w| match w {
        ["to", port] => port.strip_prefix(':').and_then(|p| p.parse().ok()),
        ["--to-ports" | "--to-port" | "--on-port", port] => {
            port.split(['-', ',']).next().and_then(|p| p.parse().ok())
        }
        _ => None,
    })
}

/// `captured-outbound 15001`, …; a port no known listener uses: `captured to port N`.
pub fn captured(port: Option<u16>) -> String {
    match port {
        Some(15001) => "captured-outbound 15001".into(),
        Some(15006) => "captured-inbound 15006".into(),
        Some(15053) => "captured-dns 15053".into(),
        Some(port) => format!("captured to port {port}"),
        None => "captured".into(),
    }
}

/// Whether a traced rule belongs to ambient's rules.
pub fn is_ambient(table: &str, rule: &str) -> bool {
    table.starts_with("istio-ambient-") || rule.contains("/0xfff") || rule.contains("& 0x00000fff")
}

/// Whether an accepting rule's text names `src` as its source (`-s ADDR/32`, `ip saddr ADDR`):
/// ambient's accept of the kubelet's probes, which come from the probe SNAT address.
pub fn accepts_source(rule: &str, src: std::net::IpAddr) -> bool {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let src = src.to_string();
    let names = |w: &str| w.split('/').next() == Some(src.as_str());
    words
        .windows(2)
        .any(|w| matches!(w[0], "-s" | "saddr") && names(w[1]))
}

/// What a traced packet showed that explains an uncaptured verdict.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    /// It passed ambient's rules, or the namespace holds them.
    pub ambient: bool,
    pub mark: u32,
    pub dport: Option<u16>,
    pub inbound: bool,
    /// A rule accepted it by its source address ([`accepts_source`]).
    pub accepted_by_source: bool,
}

/// Why an uncaptured packet went direct, under ambient's rules.
pub fn direct(seen: Seen) -> String {
    if !seen.ambient {
        return "direct".into();
    }
    if seen.mark & MARK_MASK == ZTUNNEL_MARK {
        return "direct (ztunnel's own)".into();
    }
    if seen.inbound && seen.dport == Some(INBOUND_HBONE_PORT) {
        return format!("direct (HBONE {INBOUND_HBONE_PORT})");
    }
    if seen.inbound && seen.accepted_by_source {
        return "direct (kubelet probe)".into();
    }
    "direct".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_words() {
        assert_eq!(
            redirect_port("meta l4proto tcp counter redirect to :15001"),
            Some(15001)
        );
        assert_eq!(
            redirect_port("-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -j REDIRECT --to-ports 15001"),
            Some(15001)
        );
        assert_eq!(
            redirect_port("-A X -j TPROXY --on-port 15006 --on-ip 0.0.0.0"),
            Some(15006)
        );
        assert_eq!(captured(Some(15006)), "captured-inbound 15006");
        assert_eq!(captured(Some(15053)), "captured-dns 15053");
        assert!(is_ambient(
            "ip nat",
            "-A ISTIO_OUTPUT -m mark ! --mark 0x539/0xfff -j ACCEPT"
        ));
        assert!(!is_ambient(
            "istio-proxy-nat",
            "meta skuid 1337 counter return"
        ));
        let seen = |ambient, mark, dport, inbound, accepted_by_source| Seen {
            ambient,
            mark,
            dport: Some(dport),
            inbound,
            accepted_by_source,
        };
        assert_eq!(
            direct(seen(true, 0x539, 80, false, false)),
            "direct (ztunnel's own)"
        );
        assert_eq!(
            direct(seen(true, 0, 15008, true, false)),
            "direct (HBONE 15008)"
        );
        assert_eq!(
            direct(seen(true, 0, 8080, true, true)),
            "direct (kubelet probe)"
        );
        assert_eq!(direct(seen(false, 0x539, 80, false, false)), "direct");
        let probe: std::net::IpAddr = "169.254.7.127".parse().unwrap();
        assert!(accepts_source(
            "-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT",
            probe
        ));
        assert!(accepts_source(
            "meta l4proto tcp ip saddr 169.254.7.127 counter accept",
            probe
        ));
        assert!(!accepts_source(
            "meta l4proto tcp ip saddr 169.254.7.12 counter accept",
            probe
        ));
    }
}
