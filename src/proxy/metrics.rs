//! The proxy's counters and their Prometheus text exposition.
//!
//! Plain atomics: the hot path adds to them with relaxed ordering; the admin endpoint reads a
//! snapshot. "rx" is what the proxy read from the downstream (the connection it accepted) and
//! sent upstream; "tx" is what it read from the upstream and wrote back downstream.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which listener a connection came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Captured on the inbound port (15006): a peer calling the app.
    Inbound,
    /// Captured on the outbound port (15001): the app calling out.
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        }
    }
}

const DIRECTIONS: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

/// Why a connection was closed without being forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its original destination is one of the proxy's own listeners.
    Loop,
    /// The connection limit was reached.
    Limit,
    /// Its original destination could not be recovered.
    NoDestination,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Loop => "loop",
            Refusal::Limit => "limit",
            Refusal::NoDestination => "no_destination",
        }
    }

    fn index(self) -> usize {
        match self {
            Refusal::Loop => 0,
            Refusal::Limit => 1,
            Refusal::NoDestination => 2,
        }
    }
}

const REFUSALS: [Refusal; 3] = [Refusal::Loop, Refusal::Limit, Refusal::NoDestination];

#[derive(Default)]
struct PerDirection {
    total: AtomicU64,
    active: AtomicU64,
    rx: AtomicU64,
    tx: AtomicU64,
    connect_errors: AtomicU64,
    idle_timeouts: AtomicU64,
    refused: [AtomicU64; 3],
}

/// All counters of one proxy process.
#[derive(Default)]
pub struct Metrics {
    dirs: [PerDirection; 2],
}

impl Metrics {
    fn dir(&self, d: Direction) -> &PerDirection {
        &self.dirs[d.index()]
    }

    /// A connection was accepted (and admitted under the limit).
    pub fn opened(&self, d: Direction) {
        let dir = self.dir(d);
        dir.total.fetch_add(1, Ordering::Relaxed);
        dir.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection counted by [`Metrics::opened`] is gone.
    pub fn closed(&self, d: Direction) {
        self.dir(d).active.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn add_rx(&self, d: Direction, n: u64) {
        self.dir(d).rx.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_tx(&self, d: Direction, n: u64) {
        self.dir(d).tx.fetch_add(n, Ordering::Relaxed);
    }

    pub fn connect_error(&self, d: Direction) {
        self.dir(d).connect_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn idle_timeout(&self, d: Direction) {
        self.dir(d).idle_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, d: Direction, why: Refusal) {
        self.dir(d).refused[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Open connections, both directions.
    pub fn active(&self) -> u64 {
        DIRECTIONS
            .iter()
            .map(|&d| self.dir(d).active.load(Ordering::Relaxed))
            .sum()
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut family =
            |name: &str, kind: &str, help: &str, get: &dyn Fn(&PerDirection) -> u64| {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                for d in DIRECTIONS {
                    let _ = writeln!(
                        out,
                        "{name}{{direction=\"{}\"}} {}",
                        d.as_str(),
                        get(self.dir(d))
                    );
                }
            };
        family(
            "meshcap_connections_total",
            "counter",
            "Connections accepted and admitted.",
            &|d| d.total.load(Ordering::Relaxed),
        );
        family(
            "meshcap_connections_active",
            "gauge",
            "Connections open now.",
            &|d| d.active.load(Ordering::Relaxed),
        );
        family(
            "meshcap_connect_errors_total",
            "counter",
            "Upstream connections that failed or timed out.",
            &|d| d.connect_errors.load(Ordering::Relaxed),
        );
        family(
            "meshcap_idle_timeouts_total",
            "counter",
            "Connections closed by the idle timeout.",
            &|d| d.idle_timeouts.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP meshcap_bytes_total Bytes forwarded: rx read from the downstream and sent \
             upstream, tx read from the upstream and sent downstream."
        );
        let _ = writeln!(out, "# TYPE meshcap_bytes_total counter");
        for d in DIRECTIONS {
            for (flow, value) in [("rx", &self.dir(d).rx), ("tx", &self.dir(d).tx)] {
                let _ = writeln!(
                    out,
                    "meshcap_bytes_total{{direction=\"{}\",flow=\"{flow}\"}} {}",
                    d.as_str(),
                    value.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP meshcap_connections_refused_total Connections closed without forwarding."
        );
        let _ = writeln!(out, "# TYPE meshcap_connections_refused_total counter");
        for d in DIRECTIONS {
            for why in REFUSALS {
                let _ = writeln!(
                    out,
                    "meshcap_connections_refused_total{{direction=\"{}\",reason=\"{}\"}} {}",
                    d.as_str(),
                    why.as_str(),
                    self.dir(d).refused[why.index()].load(Ordering::Relaxed)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_every_series_with_its_labels() {
        let m = Metrics::default();
        m.opened(Direction::Inbound);
        m.opened(Direction::Inbound);
        m.closed(Direction::Inbound);
        m.opened(Direction::Outbound);
        m.add_rx(Direction::Outbound, 7);
        m.add_tx(Direction::Inbound, 11);
        m.connect_error(Direction::Outbound);
        m.refused(Direction::Inbound, Refusal::Loop);
        let text = m.render();
        for line in [
            "meshcap_connections_total{direction=\"inbound\"} 2",
            "meshcap_connections_total{direction=\"outbound\"} 1",
            "meshcap_connections_active{direction=\"inbound\"} 1",
            "meshcap_connections_active{direction=\"outbound\"} 1",
            "meshcap_bytes_total{direction=\"outbound\",flow=\"rx\"} 7",
            "meshcap_bytes_total{direction=\"inbound\",flow=\"tx\"} 11",
            "meshcap_bytes_total{direction=\"inbound\",flow=\"rx\"} 0",
            "meshcap_connect_errors_total{direction=\"outbound\"} 1",
            "meshcap_connect_errors_total{direction=\"inbound\"} 0",
            "meshcap_connections_refused_total{direction=\"inbound\",reason=\"loop\"} 1",
            "# TYPE meshcap_connections_active gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(m.active(), 2);
    }
}
