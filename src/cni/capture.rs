//! The plugin stanza's `"capture"` object → the installer's [`Inputs`], on top of Istio's CNI
//! sidecar defaults. Only text moves here: the values are validated by [`crate::config`], as
//! the command line's are.

use super::spec::{CniError, code};
use crate::inputs::{Inputs, Opt, Origin, quoted, shortened};
use serde_json::{Map, Value};

/// Istio's CNI plugin in sidecar mode runs istio-iptables with these values unless the pod says
/// otherwise (`-p 15001 -z 15006 -u 1337 -g 1337 -m REDIRECT -i '*' -x "" -b '*'
/// -d 15020,15021,15090 -o 15020`).
pub const ISTIO_CNI_DEFAULTS: [(Opt, &str); 10] = [
    (Opt::ProxyPort, "15001"),
    (Opt::InboundCapturePort, "15006"),
    (Opt::ProxyUid, "1337"),
    (Opt::ProxyGid, "1337"),
    (Opt::InterceptionMode, "REDIRECT"),
    (Opt::OutboundCidrs, "*"),
    (Opt::OutboundCidrsExclude, ""),
    (Opt::InboundPorts, "*"),
    (Opt::InboundPortsExclude, "15020,15021,15090"),
    (Opt::OutboundPortsExclude, "15020"),
];

/// Options that make no sense for a plugin, with the reason.
const NOT_IN_CNI: [(Opt, &str); 5] = [
    (
        Opt::NetworkNamespace,
        "the runtime names the pod's namespace (CNI_NETNS)",
    ),
    (Opt::DryRun, "use the stanza's \"dry_run_file\""),
    (Opt::CleanupOnly, "DEL removes the rules"),
    (Opt::SkipRuleApply, "a pod would start without its rules"),
    (
        Opt::RunValidation,
        "the pod's proxy is not running yet when its network is set up",
    ),
];

/// Istio's CNI defaults, then the stanza's `capture` keys. The environment plays no part: a
/// runtime's environment says nothing about the pod.
pub fn inputs(capture: &Map<String, Value>) -> Result<Inputs, CniError> {
    let mut inputs = Inputs::defaults(Vec::new());
    for (opt, text) in ISTIO_CNI_DEFAULTS {
        inputs.set(
            opt,
            text,
            Origin::Default(format!("meshcap-cni {}", opt.long())),
        );
    }
    for (key, value) in capture {
        let invalid = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
        let opt = Opt::from_long(key).ok_or_else(|| {
            invalid(format!(
                "unknown capture key {} (keys are the installer's long flag names without dashes, see meshcap --help)",
                quoted(key)
            ))
        })?;
        if let Some((_, why)) = NOT_IN_CNI.iter().find(|(o, _)| *o == opt) {
            return Err(invalid(format!(
                "capture key {key:?} is not available in CNI mode: {why}"
            )));
        }
        let text = value_text(value).ok_or_else(|| {
            invalid(format!(
                "capture key {key:?}: expected a string, number, boolean or list of them, got {}",
                shortened(&value.to_string())
            ))
        })?;
        inputs.set(opt, text, Origin::CniKey(key.clone()));
    }
    Ok(inputs)
}

/// A JSON value as the command line would spell it: lists comma-separated.
fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(|items| items.join(",")),
        Value::Null | Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn capture(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn defaults_are_istio_cni_sidecar_defaults() {
        let inputs = inputs(&Map::new()).unwrap();
        assert_eq!(
            inputs.get(Opt::InboundPortsExclude).unwrap().text,
            "15020,15021,15090"
        );
        assert_eq!(inputs.get(Opt::OutboundCidrs).unwrap().text, "*");
        assert_eq!(inputs.get(Opt::Backend).unwrap().text, "iptables");
    }

    #[test]
    fn keys_override_defaults_and_are_named() {
        let inputs = inputs(&capture(json!({
            "backend": "nftables",
            "istio-local-exclude-ports": [15020, "15021"],
            "redirect-dns": true,
            "envoy-port": 15001
        })))
        .unwrap();
        let backend = inputs.get(Opt::Backend).unwrap();
        assert_eq!(backend.text, "nftables");
        assert_eq!(backend.origin, Origin::CniKey("backend".into()));
        assert_eq!(
            inputs.get(Opt::InboundPortsExclude).unwrap().text,
            "15020,15021"
        );
        assert_eq!(inputs.get(Opt::RedirectDns).unwrap().text, "true");
        assert_eq!(inputs.get(Opt::ProxyPort).unwrap().text, "15001");
    }

    #[test]
    fn unknown_unusable_and_mistyped_keys_are_config_errors() {
        for (bad, needle) in [
            (
                json!({"istio_service_cidr": "*"}),
                "unknown capture key \"istio_service_cidr\"",
            ),
            (
                json!({"network-namespace": "/x"}),
                "not available in CNI mode",
            ),
            (
                json!({"skip-rule-apply": true}),
                "not available in CNI mode",
            ),
            (json!({"envoy-port": null}), "expected a string"),
            (json!({"envoy-port": {"a": 1}}), "expected a string"),
            (json!({"istio-inbound-ports": [true]}), "expected a string"),
        ] {
            let e = inputs(&capture(bad.clone())).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad}");
            assert!(e.msg.contains(needle), "{bad}: {}", e.msg);
        }
    }
}
