//! The JSON edit of a network configuration: meshcap's stanza in, meshcap's stanza out, nothing
//! else touched (key order kept: serde_json's `preserve_order`).

use crate::cni::k8s::KubernetesConfig;
use serde_json::{Map, Value};

/// The `type` of meshcap's stanza: the plugin's file name in the CNI binary directory.
pub use crate::cni::PLUGIN_NAME as PLUGIN_TYPE;

/// The two shapes libcni loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A network configuration list: `{"name", "cniVersion", "plugins": [...]}`.
    List,
    /// A single plugin's network configuration: `{"name", "cniVersion", "type", ...}`.
    Single,
}

/// A document after an edit, and whether the edit changed anything.
#[derive(Debug, PartialEq)]
pub struct Edited {
    pub document: Value,
    pub changed: bool,
}

/// meshcap's stanza: the capture options (omitted when empty) and where the plugin finds the
/// API server, in the plugin's own type for it.
pub fn stanza(
    capture: &Map<String, Value>,
    kubeconfig: &str,
    exclude_namespaces: &[String],
) -> Value {
    let mut stanza = Map::new();
    stanza.insert("type".into(), PLUGIN_TYPE.into());
    if !capture.is_empty() {
        stanza.insert("capture".into(), Value::Object(capture.clone()));
    }
    let kubernetes = KubernetesConfig {
        kubeconfig: kubeconfig.into(),
        exclude_namespaces: exclude_namespaces.to_vec(),
    };
    stanza.insert(
        "kubernetes".into(),
        serde_json::to_value(kubernetes).expect("paths and names serialize"),
    );
    Value::Object(stanza)
}

/// Which shape `document` has, or why it is no network configuration libcni would load.
pub fn shape(document: &Value) -> Result<Shape, String> {
    let Some(object) = document.as_object() else {
        return Err("the top level is not a JSON object".into());
    };
    if let Some(plugins) = object.get("plugins") {
        let Some(plugins) = plugins.as_array() else {
            return Err("\"plugins\" is not an array".into());
        };
        if plugins.is_empty() {
            return Err("\"plugins\" is empty".into());
        }
        for (i, plugin) in plugins.iter().enumerate() {
            if plugin.get("type").and_then(Value::as_str).is_none() {
                return Err(format!("plugin {i} has no string \"type\""));
            }
        }
        return Ok(Shape::List);
    }
    match object.get("type").and_then(Value::as_str) {
        Some(PLUGIN_TYPE) => Err(format!("it is a lone {PLUGIN_TYPE}, not a primary network")),
        Some(_) => Ok(Shape::Single),
        None => Err("it has neither \"plugins\" nor a string \"type\"".into()),
    }
}

/// `document` with `stanza` as its meshcap plugin, the last one (an existing meshcap stanza is
/// taken out of its place and duplicates dropped). A single plugin's configuration becomes a
/// list of that configuration, unchanged, and the stanza ([`as_list`]).
pub fn insert(document: Value, stanza: &Value) -> Result<Edited, String> {
    let mut document = match shape(&document)? {
        Shape::Single => as_list(document),
        Shape::List => document,
    };
    let plugins = plugins_mut(&mut document);
    let in_place =
        plugins.last() == Some(stanza) && plugins.iter().filter(|p| is_meshcap(p)).count() == 1;
    if in_place {
        return Ok(Edited {
            document,
            changed: false,
        });
    }
    plugins.retain(|plugin| !is_meshcap(plugin));
    plugins.push(stanza.clone());
    Ok(Edited {
        document,
        changed: true,
    })
}

/// A single plugin's configuration as the one-plugin list libcni makes of it
/// (ConfListFromConf): the list carries its `cniVersion` and `name`.
pub fn as_list(conf: Value) -> Value {
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(value) = conf.get(key) {
            list.insert(key.into(), value.clone());
        }
    }
    list.insert("plugins".into(), Value::Array(vec![conf]));
    Value::Object(list)
}

/// `list` (a list) with `conf` (a single plugin's configuration) as its first plugin and the
/// list's `cniVersion` and `name` taken from it, as [`as_list`] makes them.
pub fn with_first(list: Value, conf: Value) -> Value {
    let mut list = list;
    for key in ["cniVersion", "name"] {
        if let (Some(value), Some(object)) = (conf.get(key), list.as_object_mut()) {
            object.insert(key.into(), value.clone());
        }
    }
    let plugins = plugins_mut(&mut list);
    plugins[0] = conf;
    list
}

/// Whether a list holds no plugin at all (what removing a lone stanza leaves).
pub fn is_empty_list(document: &Value) -> bool {
    document
        .get("plugins")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
}

/// `document` without meshcap's stanza; everything else as it was.
pub fn remove(document: Value) -> Result<Edited, String> {
    match shape(&document)? {
        Shape::Single => Ok(Edited {
            document,
            changed: false,
        }),
        Shape::List => {
            let mut document = document;
            let plugins = plugins_mut(&mut document);
            let before = plugins.len();
            plugins.retain(|plugin| !is_meshcap(plugin));
            let changed = plugins.len() != before;
            Ok(Edited { document, changed })
        }
    }
}

/// The file's text: two-space indentation, a final newline.
pub fn render(document: &Value) -> String {
    let mut text = serde_json::to_string_pretty(document).expect("a JSON value always serializes");
    text.push('\n');
    text
}

fn is_meshcap(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn plugins_mut(document: &mut Value) -> &mut Vec<Value> {
    document
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .expect("shape() checked the plugins array")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meshcap() -> Value {
        stanza(
            &Map::new(),
            "/etc/cni/net.d/meshcap-cni.kubeconfig",
            &["kube-system".into()],
        )
    }

    const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "ipam": {"type": "calico-ipam"}, "zeta": 1, "alpha": 2},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ],
  "zz_custom": "kept"
}"#;

    #[test]
    fn the_stanza_names_the_host_kubeconfig_and_omits_an_empty_capture() {
        assert_eq!(
            meshcap(),
            json!({"type": "meshcap-cni", "kubernetes": {
                "kubeconfig": "/etc/cni/net.d/meshcap-cni.kubeconfig",
                "exclude_namespaces": ["kube-system"]}})
        );
        let mut capture = Map::new();
        capture.insert("backend".into(), "nftables".into());
        let with = stanza(&capture, "/k", &[]);
        assert_eq!(with["capture"], json!({"backend": "nftables"}));
        let keys: Vec<_> = with.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["type", "capture", "kubernetes"]);
    }

    #[test]
    fn inserts_last_into_a_list_keeping_key_order() {
        let edited = insert(serde_json::from_str(CALICO).unwrap(), &meshcap()).unwrap();
        assert!(edited.changed);
        let text = render(&edited.document);
        let original: Value = serde_json::from_str(CALICO).unwrap();
        // Everything of the original, in its order, then the stanza.
        let plugins = edited.document["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[..2], original["plugins"].as_array().unwrap()[..]);
        assert_eq!(plugins[2], meshcap());
        let order = [
            "\"name\"",
            "\"cniVersion\"",
            "\"plugins\"",
            "\"zeta\"",
            "\"alpha\"",
            "\"zz_custom\"",
        ];
        let positions: Vec<_> = order.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    #[test]
    fn a_single_conf_becomes_a_list_with_its_version_and_name() {
        let conf = json!({"cniVersion": "1.0.0", "name": "bridge-net", "type": "bridge",
            "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}});
        let edited = insert(conf.clone(), &meshcap()).unwrap();
        assert!(edited.changed);
        assert_eq!(
            edited.document,
            json!({"cniVersion": "1.0.0", "name": "bridge-net", "plugins": [conf, meshcap()]})
        );
        let keys: Vec<_> = edited
            .document
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["cniVersion", "name", "plugins"]);
    }

    #[test]
    fn inserting_again_changes_nothing() {
        let once = insert(serde_json::from_str(CALICO).unwrap(), &meshcap()).unwrap();
        let twice = insert(once.document.clone(), &meshcap()).unwrap();
        assert!(!twice.changed);
        assert_eq!(render(&twice.document), render(&once.document));
    }

    #[test]
    fn an_old_stanza_moves_to_the_end_and_duplicates_are_dropped() {
        let old = json!({"type": "meshcap-cni", "capture": {"backend": "iptables"}});
        let doc = json!({"name": "n", "plugins": [
            {"type": "calico"}, old.clone(), {"type": "portmap"}, old]});
        let edited = insert(doc, &meshcap()).unwrap();
        assert!(edited.changed);
        assert_eq!(
            edited.document,
            json!({"name": "n", "plugins": [{"type": "calico"}, {"type": "portmap"}, meshcap()]})
        );
        // The current stanza, but not last: moved too.
        let doc = json!({"name": "n", "plugins": [
            {"type": "calico"}, meshcap(), {"type": "bandwidth"}]});
        let edited = insert(doc, &meshcap()).unwrap();
        assert!(edited.changed);
        assert_eq!(
            edited.document["plugins"],
            json!([{"type": "calico"}, {"type": "bandwidth"}, meshcap()])
        );
    }

    #[test]
    fn a_new_first_plugin_keeps_the_rest_of_the_list() {
        let list = json!({"cniVersion": "0.4.0", "name": "old", "plugins": [
            {"type": "bridge", "bridge": "cni0"}, {"type": "bandwidth"}, meshcap()]});
        let conf =
            json!({"cniVersion": "1.0.0", "name": "new", "type": "bridge", "bridge": "cni1"});
        assert_eq!(
            with_first(list, conf.clone()),
            json!({"cniVersion": "1.0.0", "name": "new", "plugins": [
                conf, {"type": "bandwidth"}, meshcap()]})
        );
    }

    #[test]
    fn removing_a_lone_stanza_leaves_an_empty_list() {
        let doc = json!({"name": "n", "plugins": [meshcap()]});
        let removed = remove(doc).unwrap();
        assert!(removed.changed && is_empty_list(&removed.document));
        assert!(!is_empty_list(&json!({"plugins": [{"type": "x"}]})));
    }

    #[test]
    fn remove_takes_out_only_the_stanza() {
        let original: Value = serde_json::from_str(CALICO).unwrap();
        let installed = insert(original.clone(), &meshcap()).unwrap().document;
        let mut foreign = installed.clone();
        foreign["plugins"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "bandwidth"}));
        let removed = remove(foreign).unwrap();
        assert!(removed.changed);
        let mut expected = original.clone();
        expected["plugins"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "bandwidth"}));
        assert_eq!(removed.document, expected);
        assert_eq!(
            render(&remove(installed).unwrap().document),
            render(&original)
        );
        let nothing = remove(original.clone()).unwrap();
        assert!(!nothing.changed);
        assert_eq!(nothing.document, original);
    }

    #[test]
    fn shapes_libcni_would_not_load_are_refused() {
        for (doc, why) in [
            (json!([1]), "not a JSON object"),
            (json!({"name": "x"}), "neither"),
            (json!({"plugins": {}}), "not an array"),
            (json!({"plugins": []}), "empty"),
            (
                json!({"plugins": [{"type": "a"}, {"ipam": {}}]}),
                "plugin 1",
            ),
            (json!({"type": 7}), "neither"),
            (json!({"type": "meshcap-cni"}), "lone meshcap-cni"),
        ] {
            let err = insert(doc.clone(), &meshcap()).unwrap_err();
            assert!(err.contains(why), "{doc}: {err}");
            assert!(remove(doc).is_err());
        }
    }
}
