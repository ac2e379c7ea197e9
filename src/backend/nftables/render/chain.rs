//! A base chain's line, `type nat hook output priority -100; policy accept;`, with nft's
//! names of hooks and priorities.

use crate::backend::nftables::codec::Chain;
use nix::libc;

/// A base chain's line: `type nat hook output priority -100; policy accept;`.
pub fn header_text(c: &Chain) -> Option<String> {
    let hook = c.hook?;
    let policy = match c.policy.map(|p| p as i32) {
        None | Some(libc::NF_ACCEPT) => "accept".to_owned(),
        Some(libc::NF_DROP) => "drop".to_owned(),
        Some(other) => format!("[policy {other}]"),
    };
    Some(format!(
        "type {} hook {} priority {}; policy {policy};",
        c.chain_type.as_deref().unwrap_or("filter"),
        hook_name(hook.hooknum),
        priority_text(hook.hooknum, hook.priority)
    ))
}

/// `NF_INET_*` by nft's name.
pub fn hook_name(hooknum: u32) -> String {
    match hooknum {
        0 => "prerouting".into(),
        1 => "input".into(),
        2 => "forward".into(),
        3 => "output".into(),
        4 => "postrouting".into(),
        5 => "ingress".into(),
        n => format!("[hook {n}]"),
    }
}

/// A priority as nft spells it for the inet family: a standard name where one applies at
/// this hook (`raw`, `mangle`, `dstnat` at prerouting, `filter`, `security`, `srcnat` at
/// postrouting), within 10 of one as `mangle + 5`, else the number.
pub(super) fn priority_text(hooknum: u32, priority: i32) -> String {
    const PRE: u32 = libc::NF_INET_PRE_ROUTING as u32;
    const POST: u32 = libc::NF_INET_POST_ROUTING as u32;
    let names: [(&str, i32, Option<u32>); 6] = [
        ("raw", -300, None),
        ("mangle", -150, None),
        ("dstnat", -100, Some(PRE)),
        ("filter", 0, None),
        ("security", 50, None),
        ("srcnat", 100, Some(POST)),
    ];
    for (name, value, only) in names {
        if only.is_some_and(|h| h != hooknum) {
            continue;
        }
        match priority - value {
            0 => return name.to_owned(),
            d @ 1..=10 => return format!("{name} + {d}"),
            d @ -10..=-1 => return format!("{name} - {}", -d),
            _ => {}
        }
    }
    priority.to_string()
}
