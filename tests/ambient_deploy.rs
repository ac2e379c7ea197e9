//! deploy/ambient/meshcap-ambient.yaml against the code: the sockets the DaemonSet mounts are
//! the defaults the agent and the plugin use, the containers run what they should with what
//! they need, and the ClusterRole grants what the plugin calls (and nothing more).

use meshcap::ambient::{control, zds};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

fn documents() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ambient/meshcap-ambient.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn container<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The host path mounted at `path` in `container` (its volume's hostPath).
fn host_path_at<'a>(spec: &'a Value, container: &Value, path: &str) -> Option<&'a str> {
    let mount = container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["mountPath"] == path)?;
    let volume = spec["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == mount["name"])?;
    volume["hostPath"]["path"].as_str()
}

#[test]
fn the_daemonset_mounts_the_default_sockets_and_the_pods_namespaces() {
    let docs = documents();
    let daemonsets = of_kind(&docs, "DaemonSet");
    assert_eq!(daemonsets.len(), 1);
    let spec = &daemonsets[0]["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true, "the probe rule is the node's");

    let agent = container(spec, "agent");
    let args = strings(&agent["args"]);
    assert_eq!(args[..2], ["ambient", "agent"]);
    // No socket flag: the defaults are the ones mounted, at the host's own paths.
    assert!(
        !args
            .iter()
            .any(|a| a.ends_with("-socket") || a.starts_with("--state-dir")),
        "{args:?}"
    );
    for socket in [zds::DEFAULT_SOCKET, control::DEFAULT_SOCKET] {
        let dir = Path::new(socket).parent().unwrap().to_str().unwrap();
        assert_eq!(host_path_at(spec, agent, dir), Some(dir), "{socket}");
    }
    let state = Path::new(meshcap::ambient::daemon::DEFAULT_STATE_DIR);
    let run = Path::new(control::DEFAULT_SOCKET).parent().unwrap();
    assert!(
        state.starts_with(run),
        "the state dir is on the mounted {run:?}"
    );
    assert_eq!(
        host_path_at(spec, agent, "/var/run/netns"),
        Some("/var/run/netns")
    );
    let netns = agent["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/var/run/netns")
        .unwrap();
    assert_eq!(netns["mountPropagation"], "HostToContainer");
    let security = &agent["securityContext"];
    let added = strings(&security["capabilities"]["add"]);
    assert!(
        security["privileged"] == true
            || ["NET_ADMIN", "SYS_ADMIN"].iter().all(|c| added.contains(c)),
        "{security}"
    );

    let install = container(spec, "install-cni");
    let args = strings(&install["args"]);
    assert_eq!(args, ["cni", "install", "--watch", "--ambient"]);
    // The plugin's stanza names the agent's default socket.
    let env = install["env"].as_array().unwrap();
    assert!(
        !env.iter()
            .any(|e| e["name"] == "MESHCAP_CNI_AMBIENT_CONTROL_SOCKET"),
        "the plugin must use the agent's default socket"
    );
}

#[test]
fn the_cluster_role_grants_what_the_plugin_calls() {
    let docs = documents();
    let roles = of_kind(&docs, "ClusterRole");
    assert_eq!(roles.len(), 1);
    let mut granted: Vec<(String, String)> = Vec::new();
    for rule in roles[0]["rules"].as_array().unwrap() {
        assert_eq!(strings(&rule["apiGroups"]), [""], "the core group only");
        for resource in strings(&rule["resources"]) {
            for verb in strings(&rule["verbs"]) {
                granted.push((resource.to_owned(), verb.to_owned()));
            }
        }
    }
    granted.sort();
    // fetch_pod (GET pods), fetch_namespace_with (GET namespaces), patch_pod_status_with
    // (PATCH pods/status): exactly these.
    let called = [
        ("namespaces", "get"),
        ("pods", "get"),
        ("pods/status", "patch"),
    ];
    assert_eq!(
        granted,
        called.map(|(r, v)| (r.to_owned(), v.to_owned())).to_vec()
    );

    // Bound to the DaemonSet's account.
    let account = of_kind(&docs, "ServiceAccount")[0]["metadata"].clone();
    let daemonset = of_kind(&docs, "DaemonSet")[0];
    assert_eq!(
        daemonset["spec"]["template"]["spec"]["serviceAccountName"],
        account["name"]
    );
    assert_eq!(daemonset["metadata"]["namespace"], account["namespace"]);
    let binding = of_kind(&docs, "ClusterRoleBinding")[0];
    assert_eq!(binding["roleRef"]["name"], roles[0]["metadata"]["name"]);
    let subject = &binding["subjects"][0];
    assert_eq!(subject["kind"], "ServiceAccount");
    assert_eq!(subject["name"], account["name"]);
    assert_eq!(subject["namespace"], account["namespace"]);
}
