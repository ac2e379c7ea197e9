//! A standard pod and the standard probe matrix.
//!
//! [`Pod::new`] creates five namespaces, wired with veth pairs and documentation addresses only:
//!
//! ```text
//!                 net0 192.0.2.1/25, 2001:db8:100::1/64 ─── eth 192.0.2.2, 2001:db8:100::2   [net]
//!   [pod]         exc0 192.0.2.129/28, 2001:db8:101::1  ─── eth 192.0.2.130, 2001:db8:101::2 [side]
//!  (rules go      virt0 192.0.2.145/28, 2001:db8:102::1 ─── eth 192.0.2.146, 2001:db8:102::2 [vm0]
//!   here)         virt1 192.0.2.161/28, 2001:db8:103::1 ─── eth 192.0.2.162, 2001:db8:103::2 [vm1]
//! ```
//!
//! - `pod` routes everything else to `net` (default routes) and forwards (KubeVirt pods do);
//!   198.51.100.77 and 2001:db8:1::77 are routed over `exc0` to `side`.
//! - `net` holds the outside world on its loopback: 198.51.100.10, 198.51.100.200, 203.0.113.10,
//!   2001:db8:1::10, 2001:db8:2::10 and the resolvers 192.0.2.53, 2001:db8::53, ::127.0.0.53
//!   (`::7f00:35`); its servers answer on [`SERVER_PORTS`] (TCP) and 53 (UDP, resolvers and
//!   198.51.100.10). It routes the VM subnets back through the pod.
//! - `side` (behind the excluded interface) answers TCP 80 and 8080; `vm0`/`vm1` (behind the
//!   KubeVirt interfaces) only originate connections, their default route is the pod.
//! - In `pod`: the app listens on [`APP_PORTS`]; capture listeners on 15001 (outbound), 15006
//!   (inbound, `IP_TRANSPARENT`), 15053 (DNS, TCP on any address, UDP on 127.0.0.1 and ::1 as
//!   Istio's agent, owned by the proxy's uid/gid); a local resolver on 127.0.0.53:53.
//!
//! Interface names in a configuration refer to the pod's ends: `net0`, `exc0`, `virt0`, `virt1`.
//! The namespaces are the pod's; dropping the pod removes them all.

use crate::probe::{self, Class, From, Outcome, Probe, Role, Servers};
use crate::{Netns, User, join};
use std::net::SocketAddr;
use std::time::Duration;

/// The pod's address on its main interface.
pub const POD_V4: &str = "192.0.2.1";
pub const POD_V6: &str = "2001:db8:100::1";
/// The pod's application ports (each also listened on by the app over IPv6).
pub const APP_PORTS: [u16; 11] = [
    8080, 9080, 31000, 32000, 4000, 5000, 7070, 15008, 15020, 15021, 15090,
];
/// TCP ports the peers' servers answer on.
pub const SERVER_PORTS: [u16; 8] = [53, 80, 5432, 6379, 7777, 8080, 31000, 32000];
/// The uid/gid the app runs as.
pub const APP: User = User::new(1000, 1000);
/// Istio's proxy uid and gid.
pub const PROXY_ID: u32 = 1337;
/// The capture ports meshcap's configurations use.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
pub const DNS_CAPTURE_PORT: u16 = 15053;

/// The standard pod: `pod` plus its peers `net`, `side`, `vm0`, `vm1`.
#[derive(Debug)]
pub struct Pod {
    // Dropped first: the listener threads stop before their namespaces go.
    servers: Servers,
    pub pod: Netns,
    pub net: Netns,
    pub side: Netns,
    pub vm0: Netns,
    pub vm1: Netns,
    /// How long a probe waits before it is classified `timeout`.
    pub timeout: Duration,
    /// Who owns the DNS capture socket (see [`Pod::with_proxy`]).
    pub proxy: User,
}

impl Pod {
    /// Creates the namespaces, links, addresses and routes, and starts every listener.
    /// `tag` names the namespaces (`meshcap-<tag>p-<pid>-<n>`, …). The proxy is 1337:1337.
    pub fn new(tag: &str) -> Pod {
        Pod::with_proxy(tag, User::new(PROXY_ID, PROXY_ID))
    }

    /// Like [`Pod::new`] for a configuration whose proxy runs as `proxy`: the UDP DNS capture
    /// listener is then `proxy`'s socket, as the agent's is, since the conntrack-zone rules
    /// recognise its answers by owner.
    pub fn with_proxy(tag: &str, proxy: User) -> Pod {
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(10)
            .collect();
        let mut pod = Pod {
            servers: Servers::new(),
            pod: Netns::new(&format!("{tag}p")),
            net: Netns::new(&format!("{tag}n")),
            side: Netns::new(&format!("{tag}s")),
            vm0: Netns::new(&format!("{tag}v")),
            vm1: Netns::new(&format!("{tag}w")),
            timeout: probe::DEFAULT_TIMEOUT,
            proxy,
        };
        pod.wire();
        pod.listen();
        pod
    }

    fn wire(&self) {
        let p = &self.pod;
        p.link_named(
            &self.net,
            "net0",
            "eth",
            &["192.0.2.1/25", "2001:db8:100::1/64"],
            &["192.0.2.2/25", "2001:db8:100::2/64"],
        );
        p.link_named(
            &self.side,
            "exc0",
            "eth",
            &["192.0.2.129/28", "2001:db8:101::1/64"],
            &["192.0.2.130/28", "2001:db8:101::2/64"],
        );
        p.link_named(
            &self.vm0,
            "virt0",
            "eth",
            &["192.0.2.145/28", "2001:db8:102::1/64"],
            &["192.0.2.146/28", "2001:db8:102::2/64"],
        );
        p.link_named(
            &self.vm1,
            "virt1",
            "eth",
            &["192.0.2.161/28", "2001:db8:103::1/64"],
            &["192.0.2.162/28", "2001:db8:103::2/64"],
        );
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        p.ip_batch(&lines(&[
            "route add default via 192.0.2.2",
            "-6 route add default via 2001:db8:100::2",
            "route add 198.51.100.77/32 via 192.0.2.130",
            "-6 route add 2001:db8:1::77/128 via 2001:db8:101::2",
        ]));
        p.sysctl(&["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
        let mut net = lines(&[
            "route add 192.0.2.144/28 via 192.0.2.1",
            "route add 192.0.2.160/28 via 192.0.2.1",
            "-6 route add 2001:db8:102::/64 via 2001:db8:100::1",
            "-6 route add 2001:db8:103::/64 via 2001:db8:100::1",
        ]);
        for addr in [
            "198.51.100.10/32",
            "198.51.100.200/32",
            "203.0.113.10/32",
            "192.0.2.53/32",
            "2001:db8:1::10/128",
            "2001:db8:2::10/128",
            "2001:db8::53/128",
            "::7f00:35/128",
        ] {
            // nodad: bindable at once, not after duplicate address detection (a loaded machine
            // stretches that past the probes' start).
            let nodad = if addr.contains(':') { " nodad" } else { "" };
            net.push(format!("addr add {addr} dev lo{nodad}"));
        }
        self.net.ip_batch(&net);
        self.side.ip_batch(&lines(&[
            "addr add 198.51.100.77/32 dev lo",
            "addr add 2001:db8:1::77/128 dev lo nodad",
        ]));
        for (vm, v4, v6) in [
            (&self.vm0, "192.0.2.145", "2001:db8:102::1"),
            (&self.vm1, "192.0.2.161", "2001:db8:103::1"),
        ] {
            vm.ip_batch(&[
                format!("route add default via {v4}"),
                format!("-6 route add default via {v6}"),
            ]);
        }
    }

    fn listen(&mut self) {
        let s = &mut self.servers;
        let any = |v6: bool, port: u16| -> SocketAddr {
            if v6 {
                format!("[::]:{port}").parse().unwrap()
            } else {
                format!("0.0.0.0:{port}").parse().unwrap()
            }
        };
        for v6 in [false, true] {
            s.tcp(
                &self.pod,
                any(v6, OUTBOUND_CAPTURE_PORT),
                Role::Capture(Class::CapturedOutbound),
                false,
            );
            s.tcp(
                &self.pod,
                any(v6, INBOUND_CAPTURE_PORT),
                Role::Capture(Class::CapturedInbound),
                true,
            );
            s.tcp(
                &self.pod,
                any(v6, DNS_CAPTURE_PORT),
                Role::Capture(Class::CapturedDns),
                false,
            );
            for port in APP_PORTS {
                s.tcp(&self.pod, any(v6, port), Role::App, false);
            }
            for port in SERVER_PORTS {
                s.tcp(&self.net, any(v6, port), Role::Server, false);
            }
            for port in [80, 8080] {
                s.tcp(&self.side, any(v6, port), Role::Server, false);
            }
        }
        for addr in ["127.0.0.1:15053", "[::1]:15053"] {
            s.udp_as(
                &self.pod,
                addr.parse().unwrap(),
                Role::Capture(Class::CapturedDns),
                Some(self.proxy),
            );
        }
        s.udp(&self.pod, "127.0.0.53:53".parse().unwrap(), Role::Server);
        s.tcp(
            &self.pod,
            "127.0.0.53:53".parse().unwrap(),
            Role::Server,
            false,
        );
        for addr in [
            "192.0.2.53:53",
            "198.51.100.10:53",
            "[2001:db8::53]:53",
            "[::7f00:35]:53",
        ] {
            s.udp(&self.net, addr.parse().unwrap(), Role::Server);
        }
    }

    /// The namespace of a [`From::Peer`] role: `net`, `side`, `vm0` or `vm1`.
    pub fn peer(&self, role: &str) -> &Netns {
        match role {
            "net" => &self.net,
            "side" => &self.side,
            "vm0" => &self.vm0,
            "vm1" => &self.vm1,
            _ => panic!("no peer namespace {role:?} in the standard pod"),
        }
    }

    /// Waits (up to 10 s) until no IPv6 address on the pod's lo is still tentative: an address
    /// added just before (`::6` by the rules' installer, without `nodad`) cannot be bound until
    /// duplicate address detection has finished, even on lo. (The veths' link-local addresses
    /// stay tentative longer; no probe uses them.)
    pub fn settle(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let out = self
                .pod
                .exec(&["ip", "-6", "addr", "show", "dev", "lo", "tentative"]);
            if out.status.success() && out.stdout.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs every probe, concurrently (one thread each, in its namespace as its user), and
    /// returns the outcomes in the probes' order. Waits for [`Pod::settle`] first.
    pub fn probe(&self, probes: &[Probe]) -> Vec<(Probe, Outcome)> {
        self.settle();
        let timeout = self.timeout;
        let handles: Vec<_> = probes
            .iter()
            .map(|probe| {
                let (ns, user) = match &probe.from {
                    From::Pod(user) => (&self.pod, Some(*user)),
                    From::Peer(role) => (self.peer(role), None),
                };
                let p = probe.clone();
                ns.thread(user, move || probe::run_client(&p, timeout))
            })
            .collect();
        probes
            .iter()
            .cloned()
            .zip(handles.into_iter().map(join))
            .collect()
    }

    /// Runs the probes of `table` (see [`probe::parse_table`]) and panics, naming every probe
    /// whose outcome differs and both outcomes, unless all match.
    pub fn assert_table(&self, table: &str) {
        let expected = probe::parse_table(table).unwrap_or_else(|e| panic!("table: {e}"));
        let probes: Vec<Probe> = expected.iter().map(|(p, _)| p.clone()).collect();
        let observed = self.probe(&probes);
        let diff = probe::compare(&expected, &observed);
        if !diff.is_empty() {
            let lines: Vec<String> = diff.iter().map(ToString::to_string).collect();
            panic!(
                "{} probe(s) differ:\n{}\n\nrules in the pod:\n{}",
                diff.len(),
                lines.join("\n"),
                self.pod.dump_rulesets()
            );
        }
    }
}

/// The standard probe matrix: inbound from peers to every app port, outbound from the app to
/// included, excluded and other addresses and ports, loopback, the pod's own address and the
/// passthrough source, the proxy's uid and gid, other owners, DNS over UDP and TCP to every
/// resolver, the excluded and KubeVirt interfaces; IPv4 and IPv6 throughout.
pub fn standard_matrix() -> Vec<Probe> {
    let mut m = Vec::new();
    let app = From::Pod(APP);
    let tcp = |m: &mut Vec<Probe>, from: &From, dst: &str| m.push(Probe::tcp(from.clone(), dst));
    let udp = |m: &mut Vec<Probe>, from: &From, dst: &str| m.push(Probe::udp(from.clone(), dst));

    // Inbound: a client outside the pod to every app port (listed, wildcard, excluded, tunnel).
    let net = From::peer("net");
    for port in APP_PORTS {
        tcp(&mut m, &net, &format!("{POD_V4}:{port}"));
        tcp(&mut m, &net, &format!("[{POD_V6}]:{port}"));
    }
    // Inbound over the excluded interface.
    let side = From::peer("side");
    tcp(&mut m, &side, "192.0.2.129:8080");
    tcp(&mut m, &side, "[2001:db8:101::1]:8080");
    // Over KubeVirt interfaces: to the pod itself and through it to the outside.
    for (vm, v4, v6) in [
        ("vm0", "192.0.2.145", "2001:db8:102::1"),
        ("vm1", "192.0.2.161", "2001:db8:103::1"),
    ] {
        let from = From::peer(vm);
        tcp(&mut m, &from, &format!("{v4}:8080"));
        tcp(&mut m, &from, "198.51.100.10:80");
        tcp(&mut m, &from, "203.0.113.10:80");
        tcp(&mut m, &from, &format!("[{v6}]:8080"));
        tcp(&mut m, &from, "[2001:db8:1::10]:80");
        tcp(&mut m, &from, "[2001:db8:2::10]:80");
    }

    // Outbound from the app: CIDRs and ports that configurations include or exclude.
    for dst in [
        "198.51.100.10:80",
        "198.51.100.10:5432",
        "198.51.100.10:6379",
        "198.51.100.10:7777",
        "198.51.100.10:31000",
        "198.51.100.10:32000",
        "198.51.100.200:80",
        "198.51.100.200:7777",
        "203.0.113.10:80",
        "192.0.2.2:80",
        "192.0.2.2:7777",
        "192.0.2.2:32000",
        "198.51.100.77:80", // routed over the excluded interface
        "[2001:db8:1::10]:80",
        "[2001:db8:1::10]:5432",
        "[2001:db8:1::10]:31000",
        "[2001:db8:1::10]:32000",
        "[2001:db8:2::10]:80",
        "[2001:db8:2::10]:7777",
        "[2001:db8:100::2]:80",
        "[2001:db8:1::77]:80", // routed over the excluded interface
        // Loopback, the pod's own addresses, the passthrough address.
        "127.0.0.1:8080",
        "127.0.0.6:8080",
        "192.0.2.1:8080",
        "192.0.2.1:15008",
        "[::1]:8080",
        "[2001:db8:100::1]:8080",
    ] {
        tcp(&mut m, &app, dst);
    }
    // DNS to every resolver a configuration names, and to one it does not.
    for dst in [
        "192.0.2.53:53",
        "127.0.0.53:53",
        "198.51.100.10:53",
        "[2001:db8::53]:53",
        "[::127.0.0.53]:53",
    ] {
        udp(&mut m, &app, dst);
        tcp(&mut m, &app, dst);
    }

    // The proxy's uid, and the proxy's gid under another uid.
    for user in [User::new(PROXY_ID, APP.gid), User::new(APP.uid, PROXY_ID)] {
        let from = From::Pod(user);
        for dst in [
            "198.51.100.10:80",
            "[2001:db8:1::10]:80",
            "192.0.2.1:8080",
            "192.0.2.1:15008",
            "[2001:db8:100::1]:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "192.0.2.53:53",
        ] {
            tcp(&mut m, &from, dst);
        }
        udp(&mut m, &from, "192.0.2.53:53");
        udp(&mut m, &from, "[2001:db8::53]:53");
    }
    // The proxy's inbound passthrough to the app, from 127.0.0.6 / ::6.
    let proxy = From::Pod(User::new(PROXY_ID, PROXY_ID));
    m.push(Probe::tcp(proxy.clone(), "192.0.2.1:8080").from_addr("127.0.0.6"));
    m.push(Probe::tcp(proxy, "[2001:db8:100::1]:8080").from_addr("::6"));
    // The proxy gid only as a supplementary group: owner matching sees the primary gid.
    let supplementary = From::Pod(User {
        supplementary: Some(PROXY_ID),
        ..APP
    });
    tcp(&mut m, &supplementary, "198.51.100.10:80");

    // Other owners: uids and gids that configurations name as proxy or (excluded) owner groups.
    for user in [
        User::new(3, APP.gid),
        User::new(APP.uid, 2),
        User::new(APP.uid, 100),
        User::new(APP.uid, 202),
        User::new(APP.uid, 888),
        User::new(APP.uid, 65534),
    ] {
        let from = From::Pod(user);
        tcp(&mut m, &from, "198.51.100.10:80");
        tcp(&mut m, &from, "192.0.2.1:8080");
        udp(&mut m, &from, "192.0.2.53:53");
        udp(&mut m, &from, "127.0.0.53:53");
    }
    m
}

/// Rewrites the addresses, interface and group names of an Istio conformance case (its flags,
/// its environment values, its golden text) onto the standard pod's:
///
/// | Istio            | pod                 | why                                              |
/// |------------------|---------------------|--------------------------------------------------|
/// | `10.0.0.0/8`     | `198.51.100.0/24`   | service CIDR: holds 198.51.100.10, .200, .77     |
/// | `9.9.0.0/16`     | `198.51.100.0/24`   | included CIDR of the `tproxy` case               |
/// | `1.1.0.0/16`     | `203.0.113.0/24`    | excluded CIDR of the `tproxy` case               |
/// | `2001:db8::/32`  | `2001:db8:1::/48`   | holds 2001:db8:1::10 and ::77, not the pod        |
/// | `eth0`, `eth1`   | `virt0`, `virt1`    | KubeVirt interfaces                              |
/// | `eth2`           | `virt2`             | (no such interface: only in a rule)              |
/// | `not-istio-nic`  | `exc0`              | excluded interface                               |
/// | group `java`     | group `users` (100) | the name must resolve on the test host           |
/// | group `ftp`      | `nogroup` (65534)   | the name must resolve on the test host           |
pub fn map_istio(text: &str) -> String {
    let mut out = text.to_owned();
    for (from, to) in ISTIO_MAPPING {
        out = out.replace(from, to);
    }
    out
}

/// The substitutions of [`map_istio`], applied in this order.
pub const ISTIO_MAPPING: [(&str, &str); 10] = [
    ("10.0.0.0/8", "198.51.100.0/24"),
    ("9.9.0.0/16", "198.51.100.0/24"),
    ("1.1.0.0/16", "203.0.113.0/24"),
    ("2001:db8::/32", "2001:db8:1::/48"),
    ("not-istio-nic", "exc0"),
    ("eth0", "virt0"),
    ("eth1", "virt1"),
    ("eth2", "virt2"),
    ("java", "users"),
    ("ftp", "nogroup"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_matrix_has_no_duplicates_and_round_trips() {
        let m = standard_matrix();
        let mut seen = std::collections::HashSet::new();
        for p in &m {
            assert!(seen.insert(p.to_string()), "duplicate probe {p}");
            assert_eq!(p.to_string().parse::<Probe>().unwrap(), *p);
        }
        assert!(m.iter().any(|p| p.dst.is_ipv6()) && m.iter().any(|p| p.dst.is_ipv4()));
    }

    #[test]
    fn istio_names_map_onto_the_pod() {
        assert_eq!(
            map_istio("-k eth0,eth1 -i 10.0.0.0/8 -x 2001:db8::/32 -c not-istio-nic"),
            "-k virt0,virt1 -i 198.51.100.0/24 -x 2001:db8:1::/48 -c exc0"
        );
        assert_eq!(
            map_istio("skgid != java skgid != 202"),
            "skgid != users skgid != 202"
        );
    }
}
