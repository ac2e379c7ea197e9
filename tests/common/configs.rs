//! Every configuration the nftables tests prove things for: the repository's 9 scenarios, the
//! 19 cases of Istio's conformance set (with ../shared), Istio's CNI defaults, and 1000
//! excluded ports plus 1000 excluded CIDRs per family.

use super::cni::ISTIO_CNI_FLAGS;
use super::{IstioCase, istio_cases, istio_conformance_part, scenarios};
use netns_test_harness::pod::map_istio;

/// A configuration: its name, flags and environment.
pub struct Case {
    pub name: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// The plan meshcap builds for the case on this host.
pub fn plan_of(case: &Case) -> meshcap::plan::Plan {
    let mut argv = vec!["meshcap".to_owned()];
    argv.extend(case.args.iter().cloned());
    let inputs = meshcap::cli::Inputs::parse_from(argv, case.env.clone()).expect("flags parse");
    let config = meshcap::config::Config::from_inputs(&inputs, &meshcap::config::SystemHost)
        .expect("valid config");
    meshcap::plan::build(&config.capture)
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// An Istio case's flags and environment for meshcap: Istio's dry run (`-n`) left out, and
/// its names and addresses mapped to the test's.
pub fn istio_flags(c: &IstioCase) -> (Vec<String>, Vec<(String, String)>) {
    let args = c
        .args
        .iter()
        .filter(|a| *a != "-n")
        .map(|a| map_istio(a))
        .collect();
    let env = c
        .env
        .iter()
        .map(|(k, v)| (k.clone(), map_istio(v)))
        .collect();
    (args, env)
}

/// The configurations; `test` names the caller when ../shared is missing.
pub fn cases(test: &str) -> Vec<Case> {
    let mut out: Vec<Case> = scenarios()
        .into_iter()
        .map(|s| Case {
            name: format!("scenario {}", s.name),
            args: s.args,
            env: s.env,
        })
        .collect();
    if let Some(dir) = istio_conformance_part(test) {
        let cases = istio_cases(&dir);
        assert_eq!(cases.len(), 19, "the conformance set has 19 cases");
        out.extend(cases.into_iter().map(|c| {
            Case {
                name: format!("istio {}", c.name),
                args: c
                    .args
                    .iter()
                    .filter(|a| *a != "-n")
                    .map(|a| map_istio(a))
                    .collect(),
                env: c
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), map_istio(v)))
                    .collect(),
            }
        }));
    }
    out.push(Case {
        name: "Istio's CNI defaults".into(),
        args: strings(&ISTIO_CNI_FLAGS),
        env: Vec::new(),
    });
    let ports: Vec<String> = (0..1000).map(|i| (20000 + 2 * i).to_string()).collect();
    let cidrs: Vec<String> = (0..1000)
        .map(|i| format!("10.{}.{}.0/24", i / 200, (i % 200) + 1))
        .chain((0..1000).map(|i| format!("2001:db8:{i:x}::/48")))
        .collect();
    out.push(Case {
        name: "1000 ports + 1000 CIDRs per family".into(),
        args: [
            "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "*",
            "--ipv6", "on",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["-d".into(), ports.join(","), "-x".into(), cidrs.join(",")])
        .collect(),
        env: Vec::new(),
    });
    out
}
