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

/// Why an uncaptured packet went direct, under ambient's rules.
pub fn direct(ambient: bool, mark: u32, dport: Option<u16>, inbound: bool) -> String {
    if !ambient {
        return "direct".into();
    }
    if mark & MARK_MASK == ZTUNNEL_MARK {
        return "direct (ztunnel's own)".into();
    }
    if inbound && dport == Some(INBOUND_HBONE_PORT) {
        return format!("direct (HBONE {INBOUND_HBONE_PORT})");
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
        assert_eq!(
            direct(true, 0x539, Some(80), false),
            "direct (ztunnel's own)"
        );
        assert_eq!(direct(true, 0, Some(15008), true), "direct (HBONE 15008)");
        assert_eq!(direct(false, 0x539, Some(80), false), "direct");
    }
}
