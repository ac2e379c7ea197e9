//! One message of the nftables trace group (`NFT_MSG_TRACE`), decoded by the codec: which packet
//! (trace id), where it was (table, chain, rule handle), what happened (rule verdict, chain
//! policy or return), and the packet's headers when the kernel sent them.

use crate::backend::nftables::codec::{self, Message, Object};
use nix::libc;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a trace message reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A rule matched (all its expressions) and gave `verdict`.
    Rule {
        handle: u64,
        verdict: Verdict,
    },
    /// No further rule of the chain matched: its end is reached (the kernel reports it as a
    /// rule message without a rule). The policy follows in a base chain; the calling chain
    /// goes on otherwise.
    EndOfChain(Verdict),
    /// The end of a chain without a verdict: back to the calling chain.
    Return,
    /// The end of a base chain: its policy.
    Policy(Verdict),
    Other(u32),
}

/// A verdict code and, for jump and goto, the target chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub code: i32,
    pub chain: Option<String>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.code {
            libc::NFT_CONTINUE => "continue",
            libc::NFT_BREAK => "break",
            libc::NFT_JUMP => "jump",
            libc::NFT_GOTO => "goto",
            libc::NFT_RETURN => "return",
            code => match code & libc::NF_VERDICT_MASK {
                libc::NF_DROP => "drop",
                libc::NF_ACCEPT => "accept",
                libc::NF_STOLEN => "stolen",
                libc::NF_QUEUE => "queue",
                libc::NF_REPEAT => "repeat",
                _ => return write!(f, "verdict {code}"),
            },
        };
        f.write_str(name)?;
        match &self.chain {
            Some(chain) => write!(f, " {chain}"),
            None => Ok(()),
        }
    }
}

/// One trace message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: u32,
    /// The table's family (`NFPROTO_*`).
    pub family: u32,
    pub table: String,
    pub chain: String,
    pub kind: Kind,
    /// The packet, when this message carries its headers (the first of each hook).
    pub packet: Option<Packet>,
    /// The packet mark, when the kernel reports one.
    pub mark: Option<u32>,
}

/// The family's word in nft syntax.
pub fn family_name(family: u32) -> String {
    match family as i32 {
        libc::NFPROTO_INET => "inet".into(),
        libc::NFPROTO_IPV4 => "ip".into(),
        libc::NFPROTO_IPV6 => "ip6".into(),
        libc::NFPROTO_ARP => "arp".into(),
        libc::NFPROTO_BRIDGE => "bridge".into(),
        libc::NFPROTO_NETDEV => "netdev".into(),
        other => format!("family{other}"),
    }
}

impl Event {
    /// The event a message reports; `None` for other messages and trace messages without an id.
    pub fn parse(bytes: &[u8]) -> Option<Event> {
        let (_, Message { object, .. }) = Message::decode(bytes)?;
        let Object::Trace(trace) = object else {
            return None;
        };
        Event::from_trace(&trace)
    }

    pub fn from_trace(trace: &codec::Trace) -> Option<Event> {
        let verdict = || {
            trace.verdict.as_ref().map_or(
                Verdict {
                    code: 0,
                    chain: None,
                },
                |v| Verdict {
                    code: v.code(),
                    chain: v.chain().map(str::to_owned),
                },
            )
        };
        let kind = match trace.trace_type.unwrap_or(0) as i32 {
            libc::NFT_TRACETYPE_RULE => match trace.rule_handle {
                Some(handle) => Kind::Rule {
                    handle,
                    verdict: verdict(),
                },
                None => Kind::EndOfChain(verdict()),
            },
            libc::NFT_TRACETYPE_RETURN => Kind::Return,
            libc::NFT_TRACETYPE_POLICY => Kind::Policy(Verdict {
                code: trace.policy.unwrap_or(0) as i32,
                chain: None,
            }),
            other => Kind::Other(other as u32),
        };
        let empty = Vec::new();
        Some(Event {
            id: trace.id?,
            family: u32::from(trace.family),
            table: trace.table.clone().unwrap_or_default(),
            chain: trace.chain.clone().unwrap_or_default(),
            kind,
            packet: Packet::parse(
                trace.network_header.as_ref().unwrap_or(&empty),
                trace.transport_header.as_ref().unwrap_or(&empty),
            ),
            mark: trace.mark,
        })
    }
}

/// The addresses, protocol, ports and TCP flags of a traced packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Source and destination port (TCP and UDP).
    pub ports: Option<(u16, u16)>,
    pub tcp_flags: Option<u8>,
}

impl Packet {
    /// Decodes an IPv4 or IPv6 header and the transport header after it.
    pub fn parse(network: &[u8], transport: &[u8]) -> Option<Packet> {
        let (src, dst, proto): (IpAddr, IpAddr, u8) = match network.first()? >> 4 {
            4 if network.len() >= 20 => (
                Ipv4Addr::from(<[u8; 4]>::try_from(&network[12..16]).ok()?).into(),
                Ipv4Addr::from(<[u8; 4]>::try_from(&network[16..20]).ok()?).into(),
                network[9],
            ),
            6 if network.len() >= 40 => (
                Ipv6Addr::from(<[u8; 16]>::try_from(&network[8..24]).ok()?).into(),
                Ipv6Addr::from(<[u8; 16]>::try_from(&network[24..40]).ok()?).into(),
                network[6],
            ),
            _ => return None,
        };
        let l4 = i32::from(proto);
        let ports = (matches!(l4, libc::IPPROTO_TCP | libc::IPPROTO_UDP) && transport.len() >= 4)
            .then(|| {
                (
                    u16::from_be_bytes([transport[0], transport[1]]),
                    u16::from_be_bytes([transport[2], transport[3]]),
                )
            });
        let tcp_flags = (l4 == libc::IPPROTO_TCP && transport.len() >= 14).then(|| transport[13]);
        Some(Packet {
            src,
            dst,
            proto,
            ports,
            tcp_flags,
        })
    }
}

fn endpoint(ip: IpAddr, port: Option<u16>) -> String {
    match (ip, port) {
        (IpAddr::V6(ip), Some(port)) => format!("[{ip}]:{port}"),
        (ip, Some(port)) => format!("{ip}:{port}"),
        (ip, None) => ip.to_string(),
    }
}

/// `tcp 192.0.2.1:40000 -> 198.51.100.10:80 [SYN]`.
impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match i32::from(self.proto) {
            libc::IPPROTO_TCP => f.write_str("tcp")?,
            libc::IPPROTO_UDP => f.write_str("udp")?,
            libc::IPPROTO_ICMP => f.write_str("icmp")?,
            libc::IPPROTO_ICMPV6 => f.write_str("icmpv6")?,
            other => write!(f, "proto {other}")?,
        }
        write!(
            f,
            " {} -> {}",
            endpoint(self.src, self.ports.map(|p| p.0)),
            endpoint(self.dst, self.ports.map(|p| p.1))
        )?;
        if let Some(flags) = self.tcp_flags {
            let names: Vec<&str> = [
                (0x02, "SYN"),
                (0x10, "ACK"),
                (0x01, "FIN"),
                (0x04, "RST"),
                (0x08, "PSH"),
            ]
            .into_iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, name)| name)
            .collect();
            write!(f, " [{}]", names.join(","))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_tcp_syn() {
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[192, 0, 2, 1]);
        ip[16..20].copy_from_slice(&[198, 51, 100, 10]);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[13] = 0x02;
        let p = Packet::parse(&ip, &tcp).unwrap();
        assert_eq!(
            p.to_string(),
            "tcp 192.0.2.1:40000 -> 198.51.100.10:80 [SYN]"
        );
    }

    #[test]
    fn ipv6_udp_and_garbage() {
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[6] = 17;
        ip[8..24].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        ip[24..40].copy_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        let udp = [0, 53, 0, 54, 0, 8, 0, 0];
        let p = Packet::parse(&ip, &udp).unwrap();
        assert_eq!(p.to_string(), "udp [2001:db8::1]:53 -> [2001:db8::2]:54");
        assert_eq!(Packet::parse(&[0x45, 0, 0], &[]), None);
        assert_eq!(Packet::parse(&[], &[]), None);
    }

    #[test]
    fn verdicts() {
        let v = |code, chain: Option<&str>| {
            Verdict {
                code,
                chain: chain.map(str::to_owned),
            }
            .to_string()
        };
        assert_eq!(v(libc::NFT_JUMP, Some("istio-output")), "jump istio-output");
        assert_eq!(v(libc::NF_ACCEPT, None), "accept");
        assert_eq!(v(libc::NF_DROP, None), "drop");
        assert_eq!(v(libc::NFT_CONTINUE, None), "continue");
        assert_eq!(v(libc::NFT_RETURN, None), "return");
    }
}
