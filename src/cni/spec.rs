//! The parts of the CNI specification (containernetworking/cni SPEC.md, 1.1.0) a chained plugin
//! needs: the versions, the error object and its codes, the network configuration's fields this
//! plugin reads, and the result passed through between spec versions.

use crate::inputs::{quoted, shortened};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// The spec versions this plugin implements, oldest first (reported by `VERSION`).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version: what `VERSION` answers when asked without a configuration.
pub const LATEST_VERSION: &str = "1.1.0";

/// The spec's well-known error codes.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// Failure to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Anything else.
    pub const OTHER: u32 = 999;
}

/// A failed command: printed on stdout as the spec's error object, with a non-zero exit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error object of the spec, in the configuration's version.
    pub fn to_json(&self, cni_version: &str) -> Value {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

/// A spec version as numbers, for ordering.
fn version_key(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let key = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(key)
}

/// Whether `version` is at least `minimum` (both supported versions).
pub fn at_least(version: &str, minimum: &str) -> bool {
    version_key(version) >= version_key(minimum)
}

/// Fails with code 1 unless this plugin implements `version`.
pub fn check_supported(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        return Ok(());
    }
    Err(CniError::new(
        code::INCOMPATIBLE_VERSION,
        format!("incompatible CNI version {}", quoted(version)),
    )
    .with_details(format!(
        "meshcap-cni supports {}",
        SUPPORTED_VERSIONS.join(", ")
    )))
}

/// The `cniVersion` of the input (what `VERSION` and error objects answer in), else the newest.
pub fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| LATEST_VERSION.to_owned())
}

/// What `VERSION` prints.
pub fn version_info(cni_version: &str) -> Value {
    serde_json::json!({
        "cniVersion": cni_version,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// The fields of the network configuration (this plugin's stanza, as the runtime hands it over)
/// that meshcap-cni reads; the runtime's other fields are ignored.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Installer options by long flag name (without dashes).
    #[serde(default)]
    pub capture: Map<String, Value>,
    /// When set, `ADD` writes the rules it would install here and touches no kernel state.
    #[serde(default)]
    pub dry_run_file: Option<PathBuf>,
    /// The pod lookup: `{"kubeconfig": PATH, "exclude_namespaces": [...]}`.
    #[serde(default)]
    pub kubernetes: Option<Value>,
    /// Ambient mode: `{"enabled": true, "control_socket": PATH}` (see [`super::ambient`]).
    #[serde(default)]
    pub ambient: Option<Value>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
}

impl NetConf {
    /// Decodes the network configuration from the plugin's stdin (code 6 when it is not one).
    pub fn decode(stdin: &[u8]) -> Result<NetConf, CniError> {
        serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode the network configuration")
                .with_details(e.to_string())
        })
    }
}

/// The result `ADD` prints: `prevResult` unchanged but for its shape, converted to
/// `cni_version` as the spec's result types convert (0.3.x/0.4.0 IPs carry a `version` field,
/// 1.x ones do not), or an empty result of that version when there is none.
pub fn pass_through(prev: Option<&Value>, cni_version: &str) -> Result<Value, CniError> {
    let bad = |what: String| {
        CniError::new(code::DECODE, "prevResult is not a CNI result").with_details(what)
    };
    let Some(prev) = prev else {
        return Ok(serde_json::json!({"cniVersion": cni_version, "dns": {}}));
    };
    let Value::Object(prev) = prev else {
        return Err(bad(format!("expected an object, got {prev}")));
    };
    let mut result = prev.clone();
    for (key, kind) in [
        ("interfaces", "array"),
        ("ips", "array"),
        ("routes", "array"),
        ("dns", "object"),
    ] {
        match (result.get(key), kind) {
            (None, _) | (Some(Value::Array(_)), "array") | (Some(Value::Object(_)), "object") => {}
            (Some(other), _) => {
                return Err(bad(format!(
                    "{key:?} must be an {kind}, got {}",
                    shortened(&other.to_string())
                )));
            }
        }
    }
    let legacy = !at_least(cni_version, "1.0.0");
    if let Some(Value::Array(ips)) = result.get_mut("ips") {
        for (i, ip) in ips.iter_mut().enumerate() {
            let Value::Object(ip) = ip else {
                return Err(bad(format!("ips[{i}] must be an object")));
            };
            let family = ip
                .get("address")
                .and_then(Value::as_str)
                .and_then(|a| a.parse::<ipnetwork::IpNetwork>().ok())
                .map(|net| if net.is_ipv4() { "4" } else { "6" })
                .ok_or_else(|| bad(format!("ips[{i}].address must be an address/prefix")))?;
            if legacy {
                ip.insert("version".into(), Value::from(family));
            } else {
                ip.remove("version");
            }
        }
    }
    result.insert("cniVersion".into(), Value::from(cni_version));
    Ok(Value::Object(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_order_numerically() {
        assert!(at_least("1.1.0", "1.0.0"));
        assert!(at_least("0.4.0", "0.4.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        assert!(check_supported("0.3.1").is_ok());
        let e = check_supported("0.2.0").unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.msg.contains("0.2.0"));
    }

    #[test]
    fn results_convert_between_shapes() {
        let v1 = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "198.51.100.5/24", "gateway": "198.51.100.1", "interface": 0},
                    {"address": "2001:db8::5/64", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let old = pass_through(Some(&v1), "0.4.0").unwrap();
        assert_eq!(old["cniVersion"], "0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert_eq!(old["interfaces"], v1["interfaces"]);
        let back = pass_through(Some(&old), "1.1.0").unwrap();
        assert_eq!(back["cniVersion"], "1.1.0");
        assert!(back["ips"][0].get("version").is_none());
        assert_eq!(back["ips"], v1["ips"]);
        assert_eq!(back["routes"], v1["routes"]);
    }

    #[test]
    fn no_previous_result_gives_an_empty_one() {
        assert_eq!(
            pass_through(None, "0.3.1").unwrap(),
            json!({"cniVersion": "0.3.1", "dns": {}})
        );
    }

    #[test]
    fn wrong_shapes_are_decode_errors() {
        for bad in [
            json!("text"),
            json!({"ips": {}}),
            json!({"ips": [{"address": "not-an-address"}]}),
            json!({"ips": ["x"]}),
            json!({"interfaces": 3}),
            json!({"dns": []}),
        ] {
            let e = pass_through(Some(&bad), "1.0.0").unwrap_err();
            assert_eq!(e.code, code::DECODE, "{bad}");
        }
    }
}
