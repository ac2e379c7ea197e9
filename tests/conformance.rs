//! Istio conformance: for every case of ../shared/conformance/istio/cases.json with an iptables
//! golden, the real binary's `--dry-run` prints Istio's restore text line for line.

mod common;

use common::{first_difference, istio_cases, istio_conformance, meshcap, rule_lines};

#[test]
fn dry_run_matches_every_istio_iptables_golden() {
    let Some(dir) = istio_conformance("dry_run_matches_every_istio_iptables_golden") else {
        return;
    };
    let cases: Vec<_> = istio_cases(&dir)
        .into_iter()
        .filter(|c| c.backends.iter().any(|b| b == "iptables"))
        .collect();
    assert_eq!(cases.len(), 18, "the conformance set has 18 iptables cases");
    let mut failures = Vec::new();
    for case in &cases {
        let mut args = case.args.clone();
        args.push("--dry-run".into());
        let out = meshcap(&args, &case.env);
        if !out.status.success() {
            failures.push(format!(
                "{}: exit {}: {}",
                case.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        let golden = std::fs::read_to_string(dir.join(format!("iptables/{}.golden", case.name)))
            .expect("golden");
        let (want, got) = (
            rule_lines(&golden),
            rule_lines(&String::from_utf8_lossy(&out.stdout)),
        );
        if want != got {
            failures.push(format!("{}: {}", case.name, first_difference(&want, &got)));
        }
    }
    println!(
        "{} of {} Istio iptables cases identical",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "cases that differ from Istio:\n{}",
        failures.join("\n")
    );
}
