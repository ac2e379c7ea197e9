//! A flow to explain, from `key=value` words (`dir=out dst=198.51.100.10:80 uid=1000`).

use crate::plan::Protocol;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Which way the first packet of the connection travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent by a process of the pod (OUTPUT hook).
    Out,
    /// Arriving on an interface of the pod (PREROUTING hook).
    In,
}

/// The conntrack state of the packet explained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The connection's first packet.
    New,
    /// A later packet of the connection.
    Established,
}

/// One connection's first (or a later) packet, as `explain` walks it through the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub dir: Direction,
    pub proto: Protocol,
    pub dst: SocketAddr,
    /// Source address; `None`: the one Linux picks (see [`Flow::source`]).
    pub src: Option<IpAddr>,
    /// Owner of the sending socket (outbound only).
    pub uid: u32,
    pub gid: u32,
    /// The outgoing (outbound) or incoming (inbound) interface.
    pub iface: String,
    pub mark: u32,
    pub state: State,
}

/// A `--flow` word that cannot be used, named with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("flow word {word:?}: {reason}")]
    Word { word: String, reason: String },
    #[error("flow {flow:?}: {key}= is required")]
    Missing { flow: String, key: &'static str },
}

impl Flow {
    /// The source address the packet carries: the given one, else what Linux picks for a
    /// loopback destination (127.0.0.1, ::1) or for the pod's own address over `lo` (the
    /// destination itself); else unknown, spelled 0.0.0.0 / `::`, which no address rule matches.
    pub fn source(&self) -> IpAddr {
        if let Some(src) = self.src {
            return src;
        }
        let dst = self.dst.ip();
        match (self.dir, dst) {
            (Direction::Out, IpAddr::V4(a)) if a.is_loopback() => IpAddr::from([127, 0, 0, 1]),
            (Direction::Out, IpAddr::V6(a)) if a.is_loopback() => dst,
            (Direction::Out, _) if self.iface == "lo" => dst,
            (_, IpAddr::V4(_)) => IpAddr::from([0u8; 4]),
            (_, IpAddr::V6(_)) => IpAddr::from([0u8; 16]),
        }
    }
}

fn bad(word: &str, reason: impl Into<String>) -> FlowError {
    FlowError::Word {
        word: word.to_owned(),
        reason: reason.into(),
    }
}

fn number<T: FromStr>(word: &str, value: &str) -> Result<T, FlowError> {
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16)
            .ok()
            .and_then(|n| n.to_string().parse().ok()),
        None => value.parse().ok(),
    };
    parsed.ok_or_else(|| bad(word, "not a number in range"))
}

impl FromStr for Flow {
    type Err = FlowError;

    fn from_str(text: &str) -> Result<Flow, FlowError> {
        let (mut dir, mut proto, mut dst, mut src) = (None, Protocol::Tcp, None, None);
        let (mut uid, mut gid, mut mark, mut state) = (None, None, 0, State::New);
        let (mut oif, mut iif) = (None, None);
        for word in text.split_whitespace() {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| bad(word, "expected KEY=VALUE"))?;
            match key {
                "dir" => {
                    dir = Some(match value {
                        "out" => Direction::Out,
                        "in" => Direction::In,
                        _ => return Err(bad(word, "dir is out or in")),
                    })
                }
                "proto" => {
                    proto = match value {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        _ => return Err(bad(word, "proto is tcp or udp")),
                    }
                }
                "dst" => {
                    dst = Some(
                        value
                            .parse::<SocketAddr>()
                            .map_err(|_| bad(word, "expected IPv4:PORT or [IPv6]:PORT"))?,
                    )
                }
                "src" => {
                    src = Some(
                        value
                            .parse::<IpAddr>()
                            .map_err(|_| bad(word, "expected an IP address"))?,
                    )
                }
                "uid" => uid = Some(number(word, value)?),
                "gid" => gid = Some(number(word, value)?),
                "mark" => mark = number(word, value)?,
                "oif" | "iif" if value.is_empty() || value.len() > 15 => {
                    return Err(bad(word, "an interface name has 1 to 15 characters"));
                }
                "oif" => oif = Some(value.to_owned()),
                "iif" => iif = Some(value.to_owned()),
                "state" => {
                    state = match value {
                        "new" => State::New,
                        "established" => State::Established,
                        _ => return Err(bad(word, "state is new or established")),
                    }
                }
                _ => {
                    return Err(bad(
                        word,
                        "unknown key (dir, proto, dst, src, uid, gid, oif, iif, mark, state)",
                    ));
                }
            }
        }
        let missing = |key| FlowError::Missing {
            flow: text.trim().to_owned(),
            key,
        };
        let dir = dir.ok_or_else(|| missing("dir"))?;
        let dst = dst.ok_or_else(|| missing("dst"))?;
        if src.is_some_and(|s: IpAddr| s.is_ipv4() != dst.is_ipv4()) {
            return Err(bad(
                &format!("src={}", src.expect("checked")),
                "not the family of dst",
            ));
        }
        let iface = match dir {
            Direction::Out => {
                if let Some(i) = iif {
                    return Err(bad(&format!("iif={i}"), "dir=out takes oif="));
                }
                oif
            }
            Direction::In => {
                if let Some(i) = oif {
                    return Err(bad(&format!("oif={i}"), "dir=in takes iif="));
                }
                for (key, id) in [("uid", uid), ("gid", gid)] {
                    if let Some(id) = id {
                        return Err(bad(
                            &format!("{key}={id}"),
                            "an arriving packet has no sending process (dir=out only)",
                        ));
                    }
                }
                iif
            }
        };
        let iface = iface.unwrap_or_else(|| {
            if dir == Direction::Out && dst.ip().is_loopback() {
                "lo".to_owned()
            } else {
                "eth0".to_owned()
            }
        });
        Ok(Flow {
            dir,
            proto,
            dst,
            src,
            uid: uid.unwrap_or(0),
            gid: gid.unwrap_or(0),
            iface,
            mark,
            state,
        })
    }
}

impl fmt::Display for Flow {
    /// The flow's words, every default spelled out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        match self.dir {
            Direction::Out => write!(f, "dir=out proto={proto} dst={}", self.dst)?,
            Direction::In => write!(f, "dir=in proto={proto} dst={}", self.dst)?,
        }
        if let Some(src) = self.src {
            write!(f, " src={src}")?;
        }
        match self.dir {
            Direction::Out => write!(f, " uid={} gid={} oif={}", self.uid, self.gid, self.iface)?,
            Direction::In => write!(f, " iif={}", self.iface)?,
        }
        if self.mark != 0 {
            write!(f, " mark={:#x}", self.mark)?;
        }
        if self.state == State::Established {
            f.write_str(" state=established")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_defaults() {
        let f: Flow = "dir=out dst=198.51.100.10:80 uid=1000 gid=1000"
            .parse()
            .unwrap();
        assert_eq!(f.iface, "eth0");
        assert_eq!(f.proto, Protocol::Tcp);
        assert_eq!(f.state, State::New);
        assert_eq!(
            f.to_string(),
            "dir=out proto=tcp dst=198.51.100.10:80 uid=1000 gid=1000 oif=eth0"
        );
        let f: Flow = "dir=out proto=udp dst=[::1]:53".parse().unwrap();
        assert_eq!((f.iface.as_str(), f.uid, f.gid), ("lo", 0, 0));
        assert_eq!(f.source().to_string(), "::1");
        let f: Flow = "dir=in dst=[2001:db8::1]:8080 iif=net0 mark=0x539 state=established"
            .parse()
            .unwrap();
        assert_eq!((f.mark, f.state), (1337, State::Established));
        assert_eq!(f.source().to_string(), "::");
    }

    #[test]
    fn bad_words_are_named() {
        for (text, word) in [
            ("dir=up dst=1.2.3.4:5", "dir=up"),
            ("dir=out dst=1.2.3.4", "dst=1.2.3.4"),
            ("dir=out dst=1.2.3.4:5 uid=x", "uid=x"),
            ("dir=out dst=1.2.3.4:5 colour=red", "colour=red"),
            ("dir=out dst=1.2.3.4:5 proto", "proto"),
            ("dir=in dst=1.2.3.4:5 uid=3", "uid=3"),
            ("dir=in dst=1.2.3.4:5 oif=lo", "oif=lo"),
            ("dir=out dst=1.2.3.4:5 src=::1", "src=::1"),
        ] {
            let e = text.parse::<Flow>().unwrap_err();
            assert!(
                matches!(&e, FlowError::Word { word: w, .. } if w == word),
                "{text}: {e}"
            );
        }
        assert!(matches!(
            "dst=1.2.3.4:5".parse::<Flow>(),
            Err(FlowError::Missing { key: "dir", .. })
        ));
    }
}
