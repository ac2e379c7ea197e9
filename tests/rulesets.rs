//! meshcap's own goldens: every scenario of rulesets/scenarios.json prints, with `--dry-run`,
//! exactly rulesets/NAME.iptables. `MESHCAP_BLESS=1` rewrites the files instead.

mod common;

use common::{blessing, first_difference, meshcap, repo, rule_lines, scenarios};

#[test]
fn every_scenario_prints_its_iptables_golden() {
    let scenarios = scenarios();
    assert!(scenarios.len() >= 5);
    let mut failures = Vec::new();
    for s in &scenarios {
        let mut args = s.args.clone();
        args.push("--dry-run".into());
        let out = meshcap(&args, &s.env);
        assert!(
            out.status.success(),
            "{}: {}",
            s.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let path = repo().join(format!("rulesets/{}.iptables", s.name));
        if blessing() {
            std::fs::write(&path, &text).expect("write golden");
            continue;
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (bless with MESHCAP_BLESS=1)", path.display()));
        let (want, got) = (rule_lines(&golden), rule_lines(&text));
        if want != got {
            failures.push(format!("{}: {}", s.name, first_difference(&want, &got)));
        }
    }
    assert!(
        failures.is_empty(),
        "scenarios that changed (re-bless with MESHCAP_BLESS=1 if intended):\n{}",
        failures.join("\n")
    );
}
