//! The packets `meshcap trace` marks for tracing: `FILTER` words `proto=tcp|udp`,
//! `dst=IP[:PORT]` (IPv6 with a port as `[IPv6]:PORT`) and `src=IP`, every word a condition that
//! must hold. Pure: parsing and validation only.

use crate::plan::{Family, Protocol};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A validated filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub proto: Option<Protocol>,
    pub dst: Option<IpAddr>,
    pub dport: Option<u16>,
    pub src: Option<IpAddr>,
}

/// A filter word that cannot be used (exit status 2): the word and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid filter word {word:?}: {reason}")]
pub struct FilterError {
    pub word: String,
    pub reason: String,
}

fn refuse(word: &str, reason: impl Into<String>) -> FilterError {
    FilterError {
        word: word.to_owned(),
        reason: reason.into(),
    }
}

/// `IP`, `IPv4:PORT` or `[IPv6]:PORT`.
fn parse_dst(value: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Some((ip, None));
    }
    let addr = value.parse::<SocketAddr>().ok()?;
    Some((addr.ip(), Some(addr.port())))
}

impl Filter {
    /// Parses the words (each may hold several, space separated, as one quoted argument).
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Filter, FilterError> {
        let mut filter = Filter::default();
        let all = words.iter().flat_map(|w| w.as_ref().split_whitespace());
        for word in all {
            let Some((key, value)) = word.split_once('=') else {
                return Err(refuse(word, "expected KEY=VALUE (proto=, dst=, src=)"));
            };
            match key {
                "proto" => {
                    filter.proto = Some(match value {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        _ => return Err(refuse(word, "proto is tcp or udp")),
                    })
                }
                "dst" => {
                    let (ip, port) = parse_dst(value)
                        .ok_or_else(|| refuse(word, "expected IP, IPv4:PORT or [IPv6]:PORT"))?;
                    filter.dst = Some(ip);
                    filter.dport = port;
                }
                "src" => {
                    filter.src = Some(
                        value
                            .parse()
                            .map_err(|_| refuse(word, "expected an IP address"))?,
                    )
                }
                _ => {
                    return Err(refuse(
                        word,
                        format!("unknown key {key:?} (expected proto, dst or src)"),
                    ));
                }
            }
        }
        if let (Some(src), Some(dst)) = (filter.src, filter.dst)
            && src.is_ipv4() != dst.is_ipv4()
        {
            return Err(refuse(
                &format!("src={src}"),
                "src and dst are of different IP families",
            ));
        }
        Ok(filter)
    }

    /// The IP family the filter's addresses pin down, if any.
    pub fn family(&self) -> Option<Family> {
        self.dst.or(self.src).map(|ip| match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        })
    }

    /// The protocols a rule must be written for: a port needs one (tcp and udp when not given).
    pub fn protocols(&self) -> Vec<Option<Protocol>> {
        match (self.proto, self.dport) {
            (Some(p), _) => vec![Some(p)],
            (None, Some(_)) => vec![Some(Protocol::Tcp), Some(Protocol::Udp)],
            (None, None) => vec![None],
        }
    }
}

/// The filter in its own words (every packet when empty).
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words = Vec::new();
        if let Some(p) = self.proto {
            words.push(format!("proto={}", crate::backend::host::proto_name(p)));
        }
        if let Some(dst) = self.dst {
            words.push(match self.dport {
                Some(port) => format!("dst={}", SocketAddr::new(dst, port)),
                None => format!("dst={dst}"),
            });
        }
        if let Some(src) = self.src {
            words.push(format!("src={src}"));
        }
        if words.is_empty() {
            f.write_str("(every packet)")
        } else {
            f.write_str(&words.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<Filter, FilterError> {
        Filter::parse(words)
    }

    #[test]
    fn every_key_and_both_families() {
        let f = parse(&["proto=tcp", "dst=198.51.100.10:80", "src=192.0.2.1"]).unwrap();
        assert_eq!(f.proto, Some(Protocol::Tcp));
        assert_eq!(f.dst, Some("198.51.100.10".parse().unwrap()));
        assert_eq!(f.dport, Some(80));
        assert_eq!(f.family(), Some(Family::V4));
        assert_eq!(
            f.to_string(),
            "proto=tcp dst=198.51.100.10:80 src=192.0.2.1"
        );
        let f = parse(&["dst=[2001:db8::1]:443 proto=udp"]).unwrap();
        assert_eq!(f.dport, Some(443));
        assert_eq!(f.family(), Some(Family::V6));
        let f = parse(&["dst=2001:db8::1"]).unwrap();
        assert_eq!(f.dport, None);
    }

    #[test]
    fn a_port_without_proto_means_tcp_and_udp() {
        let f = parse(&["dst=192.0.2.1:53"]).unwrap();
        assert_eq!(
            f.protocols(),
            vec![Some(Protocol::Tcp), Some(Protocol::Udp)]
        );
        assert_eq!(parse(&[] as &[&str]).unwrap().protocols(), vec![None]);
        assert_eq!(parse(&[] as &[&str]).unwrap().to_string(), "(every packet)");
    }

    #[test]
    fn bad_words_are_named() {
        for (words, word) in [
            (&["proto=icmp"][..], "proto=icmp"),
            (&["dst=1.2.3"], "dst=1.2.3"),
            (&["dst=192.0.2.1:99999"], "dst=192.0.2.1:99999"),
            (&["src=192.0.2.1:80"], "src=192.0.2.1:80"),
            (&["dir=out"], "dir=out"),
            (&["proto=tcp", "bogus"], "bogus"),
            (&["dst=192.0.2.1 src=2001:db8::1"], "src=2001:db8::1"),
        ] {
            let e = parse(words).unwrap_err();
            assert_eq!(e.word, word, "{words:?}");
            assert!(e.to_string().contains(word), "{e}");
        }
    }
}
