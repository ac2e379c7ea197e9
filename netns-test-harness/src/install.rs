//! Loading reference rules into a namespace: iptables restore text (Istio's iptables goldens,
//! meshcap's own `rulesets/NAME.iptables`), `nft -f` scripts (Istio's nftables goldens), and the
//! routing commands Istio runs next to them.

use crate::Netns;

/// Splits restore text into its IPv4 and IPv6 parts. The IPv6 part starts at a
/// `# ipv6` comment, or where a table block follows the last `COMMIT` and the table order
/// (filter, mangle, nat, raw) starts again. Comments, blanks and the bare `iptables-save` /
/// `ip6tables-save` lines of Istio's goldens are dropped.
pub fn split_restore_text(text: &str) -> (String, String) {
    let order = |table: &str| {
        ["filter", "mangle", "nat", "raw"]
            .iter()
            .position(|t| *t == table)
            .unwrap_or(usize::MAX)
    };
    let (mut v4, mut v6) = (String::new(), String::new());
    let mut in_v6 = false;
    let mut last_table: Option<usize> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            if line.to_ascii_lowercase().starts_with("# ipv6") {
                in_v6 = true;
            }
            continue;
        }
        if line.is_empty() || line == "iptables-save" || line == "ip6tables-save" {
            continue;
        }
        if let Some(table) = line.strip_prefix('*') {
            let idx = order(table.trim());
            if last_table.is_some_and(|last| idx <= last) {
                in_v6 = true;
            }
            last_table = Some(idx);
        }
        let part = if in_v6 { &mut v6 } else { &mut v4 };
        part.push_str(line);
        part.push('\n');
    }
    (v4, v6)
}

/// Loads restore text with `iptables-VARIANT-restore --noflush` (and `ip6tables-…` for its IPv6
/// part) inside `ns`. `variant` is `legacy` or `nft`.
pub fn load_restore_text(ns: &Netns, text: &str, variant: &str) -> Result<(), String> {
    let (v4, v6) = split_restore_text(text);
    for (family, part) in [("iptables", v4), ("ip6tables", v6)] {
        if part.is_empty() {
            continue;
        }
        let program = format!("{family}-{variant}-restore");
        let out = ns.exec_with_input(&[&program, "--noflush"], &part);
        if !out.status.success() {
            return Err(format!(
                "{program} failed ({}): {}\ninput:\n{part}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// Loads an `nft -f` script inside `ns`.
pub fn load_nft(ns: &Netns, script: &str) -> Result<(), String> {
    let out = ns.exec_with_input(&["nft", "-f", "-"], script);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// What Istio's capture code runs besides the rules (tools/istio-iptables/pkg/capture/run.go):
/// in TPROXY mode `ip -f FAMILY rule add fwmark MARK lookup TABLE` and
/// `ip -f FAMILY route add local default dev lo table TABLE` per family; with IPv6 on,
/// `ip -6 addr add ::6/128 dev lo` for the inbound passthrough.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IstioRouting {
    /// `Some((mark, table))` in TPROXY mode.
    pub tproxy: Option<(u32, u32)>,
    pub ipv6: bool,
}

impl IstioRouting {
    /// The `ip` commands, without the leading `ip`.
    pub fn commands(&self) -> Vec<String> {
        let mut cmds = Vec::new();
        if let Some((mark, table)) = self.tproxy {
            let families: &[&str] = if self.ipv6 {
                &["inet", "inet6"]
            } else {
                &["inet"]
            };
            for family in families {
                cmds.push(format!("-f {family} rule add fwmark {mark} lookup {table}"));
                cmds.push(format!(
                    "-f {family} route add local default dev lo table {table}"
                ));
            }
        }
        if self.ipv6 {
            cmds.push("-6 addr add ::6/128 dev lo".into());
        }
        cmds
    }

    /// Runs the commands inside `ns`.
    pub fn apply(&self, ns: &Netns) {
        ns.ip_batch(&self.commands());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_text_splits_where_the_table_order_restarts() {
        let golden = "iptables-save\nip6tables-save\n* mangle\n-A X\nCOMMIT\n* nat\n-A Y\nCOMMIT\n\
                      * nat\n-A Z\nCOMMIT\niptables-save\n";
        let (v4, v6) = split_restore_text(golden);
        assert_eq!(v4, "* mangle\n-A X\nCOMMIT\n* nat\n-A Y\nCOMMIT\n");
        assert_eq!(v6, "* nat\n-A Z\nCOMMIT\n");
        let ours = "# ipv4 rules\n* raw\nCOMMIT\n# ipv6 rules: input\n* raw\n-A W\nCOMMIT\n";
        let (v4, v6) = split_restore_text(ours);
        assert_eq!(
            (v4.as_str(), v6.as_str()),
            ("* raw\nCOMMIT\n", "* raw\n-A W\nCOMMIT\n")
        );
    }

    #[test]
    fn istio_routing_commands() {
        let r = IstioRouting {
            tproxy: Some((1337, 133)),
            ipv6: true,
        };
        assert_eq!(
            r.commands(),
            [
                "-f inet rule add fwmark 1337 lookup 133",
                "-f inet route add local default dev lo table 133",
                "-f inet6 rule add fwmark 1337 lookup 133",
                "-f inet6 route add local default dev lo table 133",
                "-6 addr add ::6/128 dev lo",
            ]
        );
        assert!(
            IstioRouting {
                tproxy: None,
                ipv6: false
            }
            .commands()
            .is_empty()
        );
    }
}
