//! Whether the namespace holds Istio/meshcap rules through iptables-legacy: those rules live in
//! x_tables, outside nf_tables, so no nftables trace reaches them (legacy `-j TRACE` logs to the
//! kernel log instead) and `meshcap trace` refuses rather than show a path that skips them.

use crate::backend::iptables::{SavedTables, is_istio_chain};
use std::process::Command;

/// The legacy program that shows Istio chains, and the first such chain; `None` when no
/// legacy table holds one (or none exists: the x_tables name lists are empty).
pub fn istio_chains() -> Option<(String, String)> {
    for (names, program) in [
        ("/proc/net/ip_tables_names", "iptables-legacy-save"),
        ("/proc/net/ip6_tables_names", "ip6tables-legacy-save"),
    ] {
        // Reading the list loads nothing; the save program would load x_tables' modules.
        let tables = std::fs::read_to_string(names).unwrap_or_default();
        if tables.trim().is_empty() {
            continue;
        }
        let saved = match Command::new(program).output() {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => {
                tracing::warn!(
                    "{program} failed ({}); cannot tell whether iptables-legacy holds Istio rules",
                    out.status
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(
                    "cannot run {program} ({e}); cannot tell whether iptables-legacy holds Istio \
                     rules"
                );
                continue;
            }
        };
        if let Some(chain) = first_istio_chain(&saved) {
            return Some((program.to_owned(), chain));
        }
    }
    None
}

/// The first `ISTIO_` chain a save text declares (read by the iptables backend's reader).
fn first_istio_chain(saved: &str) -> Option<String> {
    SavedTables::parse(saved)
        .chains
        .into_iter()
        .map(|((_, chain), _)| chain)
        .find(|chain| is_istio_chain(chain))
}

#[cfg(test)]
mod tests {
    use super::first_istio_chain;

    #[test]
    fn finds_istio_chains_only() {
        let saved =
            "*nat\n:PREROUTING ACCEPT [0:0]\n:ISTIO_INBOUND - [0:0]\n-A PREROUTING -j X\nCOMMIT\n";
        assert_eq!(first_istio_chain(saved).as_deref(), Some("ISTIO_INBOUND"));
        assert_eq!(
            first_istio_chain("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"),
            None
        );
    }
}
