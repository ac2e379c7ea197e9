//! The plugin's kubeconfig, made from the installer pod's service account: the API server the
//! pod reaches (`KUBERNETES_SERVICE_HOST`/`PORT`), the cluster's CA and the pod's token.
//! Readable by root only: the token is a credential.

use super::atomic;
use super::error::{InstallError, Result};
use base64::Engine;
use std::net::Ipv6Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub const MODE: u32 = 0o600;

/// What a pod's service account directory holds
/// (`/var/run/secrets/kubernetes.io/serviceaccount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub token: String,
    pub ca: Vec<u8>,
    /// The pod's namespace, the kubeconfig's default; absent files leave it out.
    pub namespace: Option<String>,
}

impl ServiceAccount {
    pub fn read(dir: &Path) -> Result<ServiceAccount> {
        let token_path = dir.join("token");
        let token = std::fs::read_to_string(&token_path)
            .map_err(InstallError::io(
                "reading the service account token",
                &token_path,
            ))?
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(InstallError::ServiceAccount {
                path: token_path,
                reason: "the service account token is empty".into(),
            });
        }
        let ca_path = dir.join("ca.crt");
        let ca = std::fs::read(&ca_path)
            .map_err(InstallError::io("reading the cluster CA", &ca_path))?;
        let namespace = std::fs::read_to_string(dir.join("namespace"))
            .ok()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty());
        Ok(ServiceAccount {
            token,
            ca,
            namespace,
        })
    }
}

/// `https://HOST:PORT`, an IPv6 address in brackets.
pub fn server_url(host: &str, port: u16) -> String {
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

/// The kubeconfig's text. Strings are written JSON-quoted, which YAML reads as double-quoted
/// scalars, so no value can break the document.
pub fn render(server: &str, account: &ServiceAccount) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string always serializes");
    let ca = base64::engine::general_purpose::STANDARD.encode(&account.ca);
    let namespace = match &account.namespace {
        Some(ns) => format!("    namespace: {}\n", q(ns)),
        None => String::new(),
    };
    format!(
        "# Written by `meshcap cni install` from its pod's service account, for the meshcap-cni\n\
         # plugin; rewritten when the token rotates, removed by `meshcap cni uninstall`.\n\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: meshcap-cni\n  \
           cluster:\n    \
             server: {server}\n    \
             certificate-authority-data: {ca}\n\
         users:\n\
         - name: meshcap-cni\n  \
           user:\n    \
             token: {token}\n\
         contexts:\n\
         - name: meshcap-cni\n  \
           context:\n    \
             cluster: meshcap-cni\n    \
             user: meshcap-cni\n\
         {namespace}\
         current-context: meshcap-cni\n",
        server = q(server),
        ca = q(&ca),
        token = q(&account.token),
    )
}

/// Writes `text` to `path` (mode 0600) unless the file already holds exactly that with that
/// mode. Returns whether it wrote.
pub fn install(path: &Path, text: &str) -> Result<bool> {
    let current = std::fs::read(path).ok();
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .ok();
    if current.as_deref() == Some(text.as_bytes()) && mode == Some(MODE) {
        return Ok(false);
    }
    atomic::write(path, MODE, text.as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(server_url("10.96.0.1", 443), "https://10.96.0.1:443");
        assert_eq!(
            server_url("fd00:10:96::1", 6443),
            "https://[fd00:10:96::1]:6443"
        );
        assert_eq!(server_url("api.example", 443), "https://api.example:443");
    }

    #[test]
    fn renders_the_standard_fields_quoted() {
        let account = ServiceAccount {
            token: "tok\"en".into(),
            ca: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
            namespace: Some("istio-system".into()),
        };
        let text = render("https://10.96.0.1:443", &account);
        assert!(
            text.contains("    server: \"https://10.96.0.1:443\"\n"),
            "{text}"
        );
        assert!(text.contains("    token: \"tok\\\"en\"\n"), "{text}");
        assert!(
            text.contains(
                "certificate-authority-data: \"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==\""
            ),
            "{text}"
        );
        assert!(text.contains("    namespace: \"istio-system\"\n"), "{text}");
        assert!(text.ends_with("current-context: meshcap-cni\n"));
        let without = render(
            "https://h:1",
            &ServiceAccount {
                namespace: None,
                ..account
            },
        );
        assert!(!without.contains("namespace"));
    }

    #[test]
    fn the_plugin_reads_it() {
        let ca = rcgen::generate_simple_self_signed(vec!["kubernetes".into()]).unwrap();
        let account = ServiceAccount {
            token: "token-one".into(),
            ca: ca.cert.pem().into_bytes(),
            namespace: Some("kube-system".into()),
        };
        let text = render(&server_url("fd00:10:96::1", 443), &account);
        let path = Path::new("/etc/cni/net.d/meshcap-cni.kubeconfig");
        let read = crate::cni::k8s::Kubeconfig::parse(&text, path).unwrap();
        assert_eq!(read.server, "https://[fd00:10:96::1]:443");
        assert_eq!(read.token.as_deref(), Some("token-one"));
        assert_eq!(read.ca.as_ref().map(Vec::len), Some(1));
    }
}
