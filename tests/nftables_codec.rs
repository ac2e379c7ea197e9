//! libnftnl as the oracle of meshcap's own nf_tables encoder: for every configuration of the
//! probe matrix (the repository's scenarios and Istio's conformance cases), Istio's CNI
//! defaults, 1000 excluded ports plus 1000 excluded CIDRs per family, and 5000 ports (more set
//! elements than one message attribute holds), the install batch built by the
//! codec equals, byte for byte, the batch libnftnl builds for the same description, apart from
//! sequence numbers and attribute padding. Also the replacing batch (flush, chain deletions)
//! and the deleting one. No attribute order differs, so no kernel dump comparison is needed to
//! excuse one.
//!
//! The one named difference: the padding after an attribute whose length is not a multiple of
//! 4. The codec writes zeros; libmnl 1.0.4 (Debian 12) leaves whatever the batch buffer held
//! there (it shows when a page is reused), and the kernel never reads it. The comparison
//! zeroes padding on both sides, walking the attributes (nested ones recursively); and as root,
//! both batches installed in two throwaway namespaces leave dumps that decode to equal contents,
//! equal to what the codec expects.
//!
//! And every message decodes to the value it was encoded from, and every prefix of it decodes
//! without panicking.

mod common;
#[path = "nftables_codec/oracle.rs"]
mod oracle;

use common::cni::ISTIO_CNI_FLAGS;
use common::configs::{self, Case, plan_of, strings};
use meshcap::backend::nftables::NftablesBackend;
use meshcap::backend::nftables::batch::{Existing, build_batch, delete_batch};
use meshcap::backend::nftables::codec::{Chain, Message};
use meshcap::backend::nftables::socket::messages;
use netns_test_harness::{Netns, require_root};

/// Every configuration (see common::configs), and 5000 ports.
fn cases() -> Vec<Case> {
    let mut out = configs::cases("nftables_codec");
    // More elements than one attribute holds: the element messages split where libnftnl's do.
    let many: Vec<String> = (0..5000).map(|i| (10000 + i).to_string()).collect();
    out.push(Case {
        name: "5000 ports (split element messages)".into(),
        args: strings(&[
            "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
        ])
        .into_iter()
        .chain(["-d".into(), many.join(",")])
        .collect(),
        env: Vec::new(),
    });
    out
}

/// Zeroes the padding after each attribute in `attrs` (nested attributes recursively).
fn zero_padding(attrs: &mut [u8]) {
    let mut pos = 0;
    while pos + 4 <= attrs.len() {
        let len = u16::from_ne_bytes([attrs[pos], attrs[pos + 1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[pos + 2], attrs[pos + 3]]);
        if len < 4 || pos + len > attrs.len() {
            return;
        }
        if kind & 0x8000 != 0 {
            zero_padding(&mut attrs[pos + 4..pos + len]);
        }
        let end = (pos + len.next_multiple_of(4)).min(attrs.len());
        attrs[pos + len..end].fill(0);
        pos = end;
    }
}

/// The messages of a batch with their sequence numbers and attribute padding zeroed.
fn split(bytes: &[u8]) -> Vec<Vec<u8>> {
    messages(bytes)
        .map(|m| {
            let mut m = m.into_inner().to_vec();
            m[8..12].copy_from_slice(&[0; 4]);
            // After the netlink and nfgenmsg headers.
            zero_padding(&mut m[20..]);
            m
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Asserts the two batches are equal message by message, naming the first difference.
fn assert_same(what: &str, ours: &[u8], theirs: &[u8]) -> usize {
    let (ours, theirs) = (split(ours), split(theirs));
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(
            a == b,
            "{what}: message {i} differs\n codec:    {}\n libnftnl: {}\n decoded codec: {:?}\n decoded libnftnl: {:?}",
            hex(a),
            hex(b),
            Message::decode(a).map(|m| m.1),
            Message::decode(b).map(|m| m.1),
        );
    }
    assert_eq!(ours.len(), theirs.len(), "{what}: message count");
    ours.len()
}

#[test]
fn codec_batches_equal_libnftnl_batches_for_every_configuration() {
    let cases = cases();
    let mut total = 0;
    for case in &cases {
        let spec = NftablesBackend.spec(&plan_of(case));
        let ours = build_batch(&spec, &Existing::default());
        let theirs = oracle::build_batch(&spec, &Existing::default());
        total += assert_same(&case.name, ours.bytes(), &theirs);
        // Replacing: every table present, with a chain the plan lacks.
        let existing = Existing {
            tables: spec.tables.iter().map(|t| t.name.to_owned()).collect(),
            chains: spec
                .tables
                .iter()
                .map(|t| Chain {
                    family: 1,
                    table: t.name.to_owned(),
                    name: "stale".into(),
                    ..Chain::default()
                })
                .collect(),
        };
        let ours = build_batch(&spec, &existing);
        let theirs = oracle::build_batch(&spec, &existing);
        total += assert_same(&format!("{} (replacing)", case.name), ours.bytes(), &theirs);
        // Every message decodes to the value it was encoded from.
        for m in &ours.messages {
            let bytes = m.to_bytes(7);
            let (header, decoded) = Message::decode(&bytes).expect("decodes");
            assert_eq!(header.seq, 7);
            assert_eq!(&decoded, m, "{}", case.name);
        }
    }
    eprintln!(
        "{} configurations, {total} messages byte-equal",
        cases.len()
    );
    assert!(cases.len() >= 12);
}

/// Ambient's rules (masked marks, the connection mark's bits, ct zone, SNAT to a probe address,
/// a named-set lookup, skuid): the same bytes as libnftnl's. The oracle knows meshcap's sidecar
/// table names and anonymous sets only, so the spec's tables are renamed to those and its named
/// sets left out (they are declared with a plain `NEWSET`, checked by the install tests).
#[test]
fn ambient_batches_equal_libnftnl() {
    use meshcap::ambient::config::{
        HostConfig, NodeSettings, PodConfig, PodOverrides, ProbeSource,
    };
    use meshcap::ambient::nftables::install::spec;
    use meshcap::ambient::plan;
    let node = NodeSettings {
        dns_capture: true,
        ipv6: true,
        ..NodeSettings::default()
    };
    let pod = PodOverrides {
        virtual_interfaces: vec!["virt0".into()],
        ..PodOverrides::default()
    };
    let plans = [
        plan::pod(&PodConfig::new(&node, &pod)),
        plan::host(&HostConfig::new(&node, ProbeSource::Uid(1000))),
        plan::host(&HostConfig::new(&node, ProbeSource::AnyLocalSocket)),
    ];
    let sidecar = ["istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"];
    let mut total = 0;
    for (i, plan) in plans.iter().enumerate() {
        let mut spec = spec(plan);
        for t in &mut spec.tables {
            t.sets.clear();
            t.name = sidecar
                .iter()
                .find(|s| s.ends_with(t.name.trim_start_matches("istio-ambient-")))
                .expect("a sidecar table of the same kind");
        }
        let ours = build_batch(&spec, &Existing::default());
        let theirs = oracle::build_batch(&spec, &Existing::default());
        total += assert_same(&format!("ambient plan {i}"), ours.bytes(), &theirs);
        for m in &ours.messages {
            let (_, decoded) = Message::decode(&m.to_bytes(7)).expect("decodes");
            assert_eq!(&decoded, m);
        }
    }
    eprintln!("ambient: {total} messages byte-equal");
}

#[test]
fn deleting_batch_equals_libnftnl() {
    let tables: Vec<String> = ["istio-proxy-nat", "istio-proxy-raw"]
        .map(String::from)
        .to_vec();
    let empty = meshcap::backend::nftables::ir::Spec { tables: Vec::new() };
    let existing = Existing {
        tables: tables.clone(),
        chains: Vec::new(),
    };
    let theirs = oracle::build_batch(&empty, &existing);
    assert_same("delete", delete_batch(&tables).bytes(), &theirs);
}

#[test]
fn truncated_messages_decode_without_panic() {
    let spec = NftablesBackend.spec(&plan_of(&Case {
        name: String::new(),
        args: strings(&ISTIO_CNI_FLAGS),
        env: Vec::new(),
    }));
    let built = build_batch(&spec, &Existing::default());
    for m in &built.messages {
        let bytes = m.to_bytes(1);
        for len in 0..bytes.len() {
            let mut cut = bytes[..len].to_vec();
            if cut.len() >= 4 {
                // A header that claims only what is there.
                cut[..4].copy_from_slice(&(len as u32).to_ne_bytes());
            }
            let _ = Message::decode(&cut);
        }
    }
}

/// Sends a whole batch on a fresh netfilter socket in the current namespace and checks that
/// every message was acknowledged without error.
fn send_raw(bytes: &[u8]) {
    use meshcap::backend::nftables::socket::NetlinkSocket;
    let seqs: Vec<u32> = messages(bytes).map(|m| m.sequence_number()).collect();
    let (first, last) = (
        *seqs.iter().filter(|s| **s != 0).min().unwrap(),
        *seqs.iter().max().unwrap(),
    );
    let mut nl = NetlinkSocket::open(netlink_sys::protocols::NETLINK_NETFILTER).expect("socket");
    nl.send(bytes).expect("send");
    let acks = nl.acks(first..last + 1).expect("acks");
    assert_eq!(acks.first_refusal, None, "refused");
    assert_eq!(acks.unanswered, 0, "unanswered");
}

#[test]
fn kernel_dumps_of_both_installs_are_equal() {
    if !require_root("kernel_dumps_of_both_installs_are_equal") {
        return;
    }
    let all = cases();
    let picked = all.iter().filter(|c| {
        c.name == "Istio's CNI defaults"
            || c.name.starts_with("1000 ports")
            || c.name.starts_with("5000 ports")
            || c.args.iter().any(|a| a.eq_ignore_ascii_case("tproxy"))
    });
    let mut compared = 0;
    for case in picked {
        let spec = NftablesBackend.spec(&plan_of(case));
        let ours = build_batch(&spec, &Existing::default()).bytes().to_vec();
        let theirs = oracle::build_batch(&spec, &Existing::default());
        let (a, b) = (Netns::new("codeca"), Netns::new("codecb"));
        let got_ours = a.run(move || {
            send_raw(&ours);
            NftablesBackend.contents().expect("read back")
        });
        let got_theirs = b.run(move || {
            send_raw(&theirs);
            NftablesBackend.contents().expect("read back")
        });
        assert!(!got_ours.rules.is_empty(), "{}: rules installed", case.name);
        assert_eq!(
            got_ours, got_theirs,
            "{}: the kernel's dumps differ",
            case.name
        );
        assert_eq!(
            got_ours,
            meshcap::backend::nftables::expected_contents(&spec),
            "{}: the dump differs from what the codec expects",
            case.name
        );
        compared += 1;
    }
    assert!(compared >= 3, "compared {compared} configurations");
}
