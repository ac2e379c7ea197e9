//! `meshcap trace`'s netlink client: adds the temporary table `inet meshcap-trace` that sets
//! `meta nftrace` on the packets a filter names, listens on the nftables trace group, and prints
//! per traced packet every rule it matched (in any nf_tables table: the nftables backend's and
//! iptables-nft's alike, spelled as read-back spells them), the chains' policies and returns,
//! and the verdicts; then it removes its table, also when stopped by a signal or `--timeout`.

use super::event::{Event, Kind, Packet, family_name};
use super::filter::Filter;
use super::listen::{Listener, Wake};
use super::rules::RuleBook;
use super::table::{self, TRACE_TABLE};
use super::verdict;
use crate::backend::BackendError;
use crate::backend::nftables::netlink::{netlink_error, open};
use nix::libc;
use std::collections::HashMap;
use std::io::{self, Write};
use std::time::{Duration, Instant};

/// After the last counted packet's latest message, how long its later hooks may still report
/// before `--count` ends the trace.
const SETTLE: Duration = Duration::from_millis(500);

/// When to stop.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// After this many traced packets (trace ids).
    pub count: Option<u64>,
    /// After this long.
    pub timeout: Option<Duration>,
}

/// Why the trace ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopped {
    Count,
    Timeout,
    Signal(String),
}

/// A failed trace. Exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(
        "table inet {TRACE_TABLE} exists already: another meshcap trace is running in this \
         namespace, or one was killed before it could remove the table (then delete it: \
         nft delete table inet {TRACE_TABLE})"
    )]
    Busy,
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn io_error(what: &str) -> impl FnOnce(io::Error) -> TraceError + '_ {
    move |source| TraceError::Io {
        what: what.to_owned(),
        source,
    }
}

/// What the trace has seen of one packet.
struct Traced {
    number: u64,
    /// Whether a header line was printed for it (later ones say "continued").
    shown: bool,
    last_packet: Option<Packet>,
    /// The last packet mark reported (0: none).
    last_mark: u32,
    /// The last rule that gave a final verdict (accept, drop, …) and that verdict.
    last_verdict: Option<String>,
    /// The rules that redirected the packet to a proxy (REDIRECT, TPROXY).
    captured_by: Vec<String>,
    /// The port the last of them sent it to.
    captured_to: Option<u16>,
    /// Whether it passed ambient's rules (see [`super::verdict::is_ambient`]).
    ambient: bool,
    /// Whether it was first seen in prerouting (arriving), not output.
    inbound: Option<bool>,
    /// Whether a rule accepted it by its source address (see [`verdict::accepts_source`]).
    accepted_by_source: bool,
    dropped: bool,
    last_seen: Instant,
}

/// Whether a rule's text redirects the packet: nft's `redirect` and `tproxy` statements, or
/// iptables-nft's REDIRECT/TPROXY targets (in iptables' spelling, or as raw expressions).
fn captures(text: &str) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    words.iter().any(|w| *w == "redirect" || *w == "tproxy")
        || words
            .windows(2)
            .any(|w| matches!(w, ["-j" | "[target", "REDIRECT" | "TPROXY"]))
}

fn is_final(code: i32) -> bool {
    code >= 0
}

/// The printing half: numbers packets by trace id and prints each message as a line.
struct Printer<'a> {
    out: &'a mut dyn Write,
    packets: HashMap<u32, Traced>,
    order: Vec<u32>,
    current: Option<u32>,
    count: Option<u64>,
    /// Whether the namespace holds ambient's rules (the verdicts then say why a packet went
    /// direct).
    ambient: bool,
}

impl Printer<'_> {
    fn full(&self) -> bool {
        self.count.is_some_and(|n| self.order.len() as u64 >= n)
    }

    /// Prints one event; `text` spells a rule by (family, table, handle).
    fn event(
        &mut self,
        e: &Event,
        text: &mut dyn FnMut(u32, &str, u64) -> String,
    ) -> io::Result<()> {
        if !self.packets.contains_key(&e.id) {
            if self.full() {
                return Ok(());
            }
            let number = self.order.len() as u64 + 1;
            self.order.push(e.id);
            self.packets.insert(
                e.id,
                Traced {
                    number,
                    shown: false,
                    last_packet: None,
                    last_mark: 0,
                    last_verdict: None,
                    captured_by: Vec::new(),
                    captured_to: None,
                    ambient: false,
                    inbound: None,
                    accepted_by_source: false,
                    dropped: false,
                    last_seen: Instant::now(),
                },
            );
        }
        let traced = self.packets.get_mut(&e.id).expect("inserted above");
        traced.last_seen = Instant::now();
        if self.current != Some(e.id) {
            let number = traced.number;
            let again = traced.shown;
            traced.shown = true;
            writeln!(
                self.out,
                "packet {number} (trace id {:#010x}){}",
                e.id,
                if again { ", continued:" } else { ":" }
            )?;
            self.current = Some(e.id);
        }
        if let Some(p) = &e.packet
            && traced.last_packet.as_ref() != Some(p)
        {
            // Again when the headers change: NAT rewrote them, or a later packet of the
            // connection got the same trace id.
            writeln!(self.out, "  packet: {p}")?;
            traced.last_packet = Some(p.clone());
        }
        if let Some(mark) = e.mark
            && mark != traced.last_mark
        {
            // The mark as the packet carries it here (set by an earlier rule, or the socket's).
            writeln!(self.out, "  mark: {mark:#010x}")?;
            traced.last_mark = mark;
        }
        if e.table == TRACE_TABLE && e.family == libc::NFPROTO_INET as u32 {
            // The trace's own chains are named after their hooks.
            traced.inbound.get_or_insert(e.chain == "prerouting");
            // The trace's own marking rule and its chain's policy.
            return Ok(());
        }
        let place = format!("{} {} {}", family_name(e.family), e.table, e.chain);
        match &e.kind {
            Kind::Rule { handle, verdict } => {
                let rule = text(e.family, &e.table, *handle);
                writeln!(self.out, "  {place}: rule {handle}: {rule} => {verdict}")?;
                let at = format!("{place} rule {handle}");
                traced.ambient |= verdict::is_ambient(&e.table, &rule);
                if captures(&rule) {
                    traced.captured_by.push(at.clone());
                    traced.captured_to = verdict::redirect_port(&rule);
                }
                if verdict.code == libc::NF_ACCEPT
                    && let Some(p) = &traced.last_packet
                {
                    traced.accepted_by_source |= verdict::accepts_source(&rule, p.src);
                }
                if is_final(verdict.code) {
                    traced.dropped |= verdict.code == libc::NF_DROP;
                    traced.last_verdict = Some(format!("{verdict} by {at}"));
                }
            }
            Kind::Policy(verdict) => {
                writeln!(self.out, "  {place}: policy {verdict}")?;
                traced.dropped |= verdict.code == libc::NF_DROP;
                traced.last_verdict = Some(format!("{verdict} by the policy of {place}"));
            }
            Kind::EndOfChain(_) => writeln!(
                self.out,
                "  {place}: end of chain (no further rule matched)"
            )?,
            Kind::Return => writeln!(self.out, "  {place}: end of chain, return")?,
            Kind::Other(kind) => writeln!(self.out, "  {place}: trace message type {kind}")?,
        }
        Ok(())
    }

    /// Whether every counted packet is complete: the count is reached and the packets have
    /// been quiet for [`SETTLE`].
    fn settled(&self) -> Option<Duration> {
        if !self.full() {
            return None;
        }
        let last = self.packets.values().map(|t| t.last_seen).max()?;
        Some(SETTLE.saturating_sub(last.elapsed()))
    }

    /// One verdict line per packet.
    fn summary(&mut self) -> io::Result<()> {
        for id in &self.order {
            let t = &self.packets[id];
            let last = t.last_verdict.as_deref().unwrap_or("no verdict traced");
            let fate = if t.dropped {
                format!("dropped ({last})")
            } else if t.captured_by.is_empty() {
                let dport = t.last_packet.as_ref().and_then(|p| p.ports).map(|(_, d)| d);
                let direct = verdict::direct(verdict::Seen {
                    ambient: self.ambient || t.ambient,
                    mark: t.last_mark,
                    dport,
                    inbound: t.inbound == Some(true),
                    accepted_by_source: t.accepted_by_source,
                });
                format!("not captured ({last}) => {direct}")
            } else {
                format!(
                    "captured by {} => {}",
                    t.captured_by.join(", then "),
                    verdict::captured(t.captured_to)
                )
            };
            writeln!(self.out, "verdict packet {}: {fate}", t.number)?;
        }
        self.out.flush()
    }
}

/// Traces the packets `filter` names in the current network namespace until `options` or a
/// stop signal (SIGINT, SIGTERM, SIGHUP) ends it, printing to `out`; `ready` is called once
/// the table is in place. The table is removed in every case.
pub fn run(
    filter: &Filter,
    options: &Options,
    out: &mut dyn Write,
    ready: &mut dyn FnMut(),
) -> Result<(u64, Stopped), TraceError> {
    // Signals first: from here on a SIGTERM waits for the loop, which removes the table.
    let mut listener = Listener::open()
        .map_err(|e| TraceError::from(netlink_error("joining the nftables trace group", &e)))?;
    let mut nl = open()?;
    if table::exists(&mut nl)? {
        return Err(TraceError::Busy);
    }
    let mut book = RuleBook::load(&mut nl)?;
    let installed = table::install(&mut nl, filter)?;
    ready();
    let deadline = options.timeout.map(|t| Instant::now() + t);
    let mut printer = Printer {
        out,
        packets: HashMap::new(),
        order: Vec::new(),
        current: None,
        count: options.count,
        ambient: book.holds_ambient(),
    };
    let stopped = loop {
        let until_deadline = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if until_deadline == Some(Duration::ZERO) {
            break Stopped::Timeout;
        }
        let settle = printer.settled();
        if settle == Some(Duration::ZERO) {
            break Stopped::Count;
        }
        let wait = [until_deadline, settle].into_iter().flatten().min();
        match listener
            .wait(wait)
            .map_err(io_error("reading the nftables trace group"))?
        {
            Wake::Signal(signal) => break Stopped::Signal(signal.as_str().to_owned()),
            Wake::Timeout => {}
            Wake::Overrun => eprintln!(
                "meshcap trace: some trace messages were lost (the receive buffer overflowed); \
                 a narrower filter helps"
            ),
            Wake::Messages(msgs) => {
                for e in msgs.iter().filter_map(|m| Event::parse(m)) {
                    tracing::debug!("trace message: {e:?}");
                    let mut text = |family: u32, table: &str, handle: u64| {
                        book.text(&mut nl, family, table, handle)
                    };
                    printer
                        .event(&e, &mut text)
                        .map_err(io_error("writing the trace"))?;
                }
                printer.out.flush().map_err(io_error("writing the trace"))?;
            }
        }
    };
    let summary = printer.summary().map_err(io_error("writing the trace"));
    installed.remove()?;
    summary?;
    Ok((printer.order.len() as u64, stopped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::event::Verdict;

    fn event(id: u32, table: &str, chain: &str, kind: Kind) -> Event {
        Event {
            id,
            family: libc::NFPROTO_INET as u32,
            table: table.to_owned(),
            chain: chain.to_owned(),
            kind,
            packet: None,
            mark: None,
        }
    }

    fn rule(handle: u64, code: i32, chain: Option<&str>) -> Kind {
        Kind::Rule {
            handle,
            verdict: Verdict {
                code,
                chain: chain.map(str::to_owned),
            },
        }
    }

    fn printed(events: &[Event], count: Option<u64>) -> String {
        let mut out = Vec::new();
        let mut printer = Printer {
            out: &mut out,
            packets: HashMap::new(),
            order: Vec::new(),
            current: None,
            count,
            ambient: false,
        };
        let mut text = |_: u32, _: &str, handle: u64| match handle {
            14 => "meta l4proto tcp counter redirect to :15001".to_owned(),
            h => format!("[rule {h}]"),
        };
        for e in events {
            printer.event(e, &mut text).unwrap();
        }
        printer.summary().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_packets_hides_its_own_table_and_names_the_capturing_rule() {
        let syn = Packet::parse(
            &[
                0x45, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 192, 0, 2, 1, 198, 51, 100, 10,
            ],
            &[0x9c, 0x40, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02],
        );
        let mut first = event(7, TRACE_TABLE, "output", rule(2, libc::NFT_CONTINUE, None));
        first.packet = syn;
        let events = [
            first,
            event(
                7,
                "istio-proxy-nat",
                "output",
                rule(8, libc::NFT_JUMP, Some("istio-output")),
            ),
            event(9, TRACE_TABLE, "output", rule(2, libc::NFT_CONTINUE, None)),
            event(
                9,
                "istio-proxy-nat",
                "output",
                Kind::Policy(Verdict {
                    code: libc::NF_ACCEPT,
                    chain: None,
                }),
            ),
            Event {
                mark: Some(1337),
                ..event(
                    7,
                    "istio-proxy-nat",
                    "istio-redirect",
                    rule(14, libc::NF_ACCEPT, None),
                )
            },
            event(
                11,
                "istio-proxy-nat",
                "output",
                rule(8, libc::NF_DROP, None),
            ),
        ];
        let text = printed(&events, Some(2));
        assert_eq!(
            text,
            "packet 1 (trace id 0x00000007):\n\
             \x20 packet: tcp 192.0.2.1:40000 -> 198.51.100.10:80 [SYN]\n\
             \x20 inet istio-proxy-nat output: rule 8: [rule 8] => jump istio-output\n\
             packet 2 (trace id 0x00000009):\n\
             \x20 inet istio-proxy-nat output: policy accept\n\
             packet 1 (trace id 0x00000007), continued:\n\
             \x20 mark: 0x00000539\n\
             \x20 inet istio-proxy-nat istio-redirect: rule 14: meta l4proto tcp counter redirect to :15001 => accept\n\
             verdict packet 1: captured by inet istio-proxy-nat istio-redirect rule 14 => \
             captured-outbound 15001\n\
             verdict packet 2: not captured (accept by the policy of inet istio-proxy-nat output) \
             => direct\n"
        );
    }

    #[test]
    fn a_drop_is_the_packets_fate() {
        let continued = Verdict {
            code: libc::NFT_CONTINUE,
            chain: None,
        };
        let events = [
            event(3, "istio-proxy-raw", "istio-x", Kind::EndOfChain(continued)),
            event(3, "istio-proxy-raw", "output", rule(4, libc::NF_DROP, None)),
        ];
        let text = printed(&events, None);
        assert!(
            text.contains(
                "  inet istio-proxy-raw istio-x: end of chain (no further rule matched)\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "verdict packet 1: dropped (drop by inet istio-proxy-raw output rule 4)\n"
            ),
            "{text}"
        );
    }
}
