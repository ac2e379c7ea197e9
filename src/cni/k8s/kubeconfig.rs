//! Reading a kubeconfig file (the format `kubectl` uses, YAML or JSON): the current context's
//! API server, its certificate authority and the user's credentials.
//!
//! Relative file paths in it are relative to the kubeconfig's directory, as for `kubectl`.
//! `insecure-skip-tls-verify: true` is refused, and so is plain `http`: the answer decides how a
//! pod's traffic is captured, and the request carries a bearer token, so the server must be
//! authenticated. Credentials meshcap cannot use (`exec`, `auth-provider`, basic auth) are
//! refused by name rather than ignored, which would only surface later as a puzzling 401.

use super::error::K8sError;
use base64::Engine;
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::path::{Path, PathBuf};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey};

/// What the client needs from a kubeconfig: where the API server is, how to trust it, and how
/// to authenticate.
#[derive(Clone)]
pub struct Kubeconfig {
    /// The kubeconfig file, for error messages.
    pub path: PathBuf,
    /// The API server's base URL (`https://…`, without a trailing `/`).
    pub server: String,
    /// The certificate authority to verify the server with; `None`: the public web roots.
    pub(crate) ca: Option<Vec<Certificate<'static>>>,
    pub(crate) client_cert: Option<ClientCert>,
    pub(crate) token: Option<String>,
    /// The credentials in words (never the secret), for error messages.
    pub credential: String,
}

impl std::fmt::Debug for Kubeconfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubeconfig")
            .field("path", &self.path)
            .field("server", &self.server)
            .field("ca_certificates", &self.ca.as_ref().map(Vec::len))
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    current_context: Option<String>,
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(default)]
    users: Vec<NamedUser>,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: Option<String>,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
    proxy_url: Option<String>,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    user: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    username: Option<String>,
    exec: Option<IgnoredAny>,
    auth_provider: Option<IgnoredAny>,
}

impl Kubeconfig {
    /// Reads and checks the kubeconfig at `path`, including the files it names.
    pub fn load(path: &Path) -> Result<Kubeconfig, K8sError> {
        let text = std::fs::read_to_string(path).map_err(|e| problem(path, e))?;
        Kubeconfig::parse(&text, path)
    }

    /// Parses kubeconfig text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Kubeconfig, K8sError> {
        let reader = Reader {
            path,
            dir: path.parent().unwrap_or(Path::new(".")),
        };
        let file = reader.decode(text)?;
        let context_name = file
            .current_context
            .filter(|c| !c.is_empty())
            .ok_or_else(|| reader.error("no current-context"))?;
        let context = &file
            .contexts
            .iter()
            .find(|c| c.name == context_name)
            .ok_or_else(|| {
                reader.error(format!(
                    "current-context {context_name:?} is not in contexts"
                ))
            })?
            .context;
        let cluster = &file
            .clusters
            .iter()
            .find(|c| c.name == context.cluster)
            .ok_or_else(|| {
                reader.error(format!(
                    "cluster {:?} of context {context_name:?} is not in clusters",
                    context.cluster
                ))
            })?
            .cluster;
        let user = match context.user.as_deref().filter(|u| !u.is_empty()) {
            None => None,
            Some(name) => Some(file.users.iter().find(|u| u.name == name).ok_or_else(|| {
                reader.error(format!(
                    "user {name:?} of context {context_name:?} is not in users"
                ))
            })?),
        };
        let server = reader.server(&context.cluster, cluster)?;
        let ca = reader.certificate_authority(&context.cluster, cluster)?;
        let (token, client_cert, credential) = match user {
            None => (None, None, "no credentials".to_owned()),
            Some(u) => reader.credentials(&u.name, &u.user)?,
        };
        Ok(Kubeconfig {
            path: path.to_owned(),
            server,
            ca,
            client_cert,
            token,
            credential,
        })
    }
}

fn problem(path: &Path, problem: impl std::fmt::Display) -> K8sError {
    K8sError::Kubeconfig {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

/// Reads one kubeconfig and the files it names, with errors naming the kubeconfig.
struct Reader<'a> {
    path: &'a Path,
    dir: &'a Path,
}

impl Reader<'_> {
    fn error(&self, message: impl std::fmt::Display) -> K8sError {
        problem(self.path, message)
    }

    /// YAML, or JSON (strict JSON first, as YAML parsers are unkind to tabs in JSON).
    fn decode(&self, text: &str) -> Result<File, K8sError> {
        if text.trim().is_empty() {
            return Err(self.error("the file is empty"));
        }
        if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| self.error(format!("not a kubeconfig: {e}")))
        } else {
            yaml_serde::from_str(text).map_err(|e| self.error(format!("not a kubeconfig: {e}")))
        }
    }

    fn resolve(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn read_file(&self, what: &str, file: &str) -> Result<Vec<u8>, K8sError> {
        let path = self.resolve(file);
        std::fs::read(&path).map_err(|e| self.error(format!("{what} {}: {e}", path.display())))
    }

    fn base64(&self, what: &str, data: &str) -> Result<Vec<u8>, K8sError> {
        let compact: String = data.split_whitespace().collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| self.error(format!("{what} is not base64: {e}")))
    }

    /// The PEM of a `NAME` (a file) or `NAME-data` (base64) pair, and words saying which.
    fn file_or_data(
        &self,
        owner: &str,
        name: &str,
        file: Option<&str>,
        data: Option<&str>,
    ) -> Result<Option<(Vec<u8>, String)>, K8sError> {
        match (
            file.filter(|f| !f.is_empty()),
            data.filter(|d| !d.is_empty()),
        ) {
            (_, Some(data)) => {
                let what = format!("{owner} {name}-data");
                Ok(Some((self.base64(&what, data)?, what)))
            }
            (Some(file), None) => {
                let what = format!("{owner} {name}");
                let pem = self.read_file(&what, file)?;
                Ok(Some((
                    pem,
                    format!("{what} {}", self.resolve(file).display()),
                )))
            }
            (None, None) => Ok(None),
        }
    }

    fn server(&self, name: &str, cluster: &Cluster) -> Result<String, K8sError> {
        let owner = format!("cluster {name:?}");
        let server = cluster
            .server
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| self.error(format!("{owner} has no server")))?;
        if !server.starts_with("https://") || server.len() == "https://".len() {
            return Err(self.error(format!(
                "{owner} server {server:?} is not an https:// URL (the API server must be \
                 reached over TLS)"
            )));
        }
        if cluster.insecure_skip_tls_verify {
            return Err(self.error(format!(
                "{owner} sets insecure-skip-tls-verify, which meshcap refuses: the pod's \
                 capture settings must come from an authenticated API server"
            )));
        }
        for (field, value) in [
            ("tls-server-name", &cluster.tls_server_name),
            ("proxy-url", &cluster.proxy_url),
        ] {
            if value.is_some() {
                return Err(self.error(format!("{owner} {field} is not supported by meshcap")));
            }
        }
        Ok(server.trim_end_matches('/').to_owned())
    }

    fn certificate_authority(
        &self,
        name: &str,
        cluster: &Cluster,
    ) -> Result<Option<Vec<Certificate<'static>>>, K8sError> {
        let Some((pem, what)) = self.file_or_data(
            &format!("cluster {name:?}"),
            "certificate-authority",
            cluster.certificate_authority.as_deref(),
            cluster.certificate_authority_data.as_deref(),
        )?
        else {
            return Ok(None);
        };
        let certs = self.certificates(&what, &pem)?;
        Ok(Some(certs))
    }

    fn certificates(&self, what: &str, pem: &[u8]) -> Result<Vec<Certificate<'static>>, K8sError> {
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => return Err(self.error(format!("{what}: bad PEM: {e}"))),
            }
        }
        if certs.is_empty() {
            return Err(self.error(format!("{what} holds no PEM certificate")));
        }
        Ok(certs)
    }

    fn private_key(&self, what: &str, pem: &[u8]) -> Result<PrivateKey<'static>, K8sError> {
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(PemItem::PrivateKey(k)) => return Ok(k),
                Ok(_) => {}
                Err(e) => return Err(self.error(format!("{what}: bad PEM: {e}"))),
            }
        }
        Err(self.error(format!("{what} holds no PEM private key")))
    }

    /// The bearer token, the client certificate, and words describing them.
    fn credentials(
        &self,
        name: &str,
        user: &User,
    ) -> Result<(Option<String>, Option<ClientCert>, String), K8sError> {
        let owner = format!("user {name:?}");
        let unsupported = [
            ("exec", user.exec.is_some()),
            ("auth-provider", user.auth_provider.is_some()),
            ("username", user.username.is_some()),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(self.error(format!(
                "{owner} uses {field}, which meshcap does not support (use token, tokenFile \
                 or client-certificate and client-key)"
            )));
        }
        let mut words = Vec::new();
        // As kubectl: an inline token wins over tokenFile.
        let token = match (
            user.token.as_deref().filter(|t| !t.is_empty()),
            user.token_file.as_deref().filter(|t| !t.is_empty()),
        ) {
            (Some(token), _) => {
                words.push(format!("{owner} token"));
                Some(token.trim().to_owned())
            }
            (None, Some(file)) => {
                let what = format!("{owner} tokenFile");
                let bytes = self.read_file(&what, file)?;
                let token = String::from_utf8(bytes)
                    .map_err(|_| self.error(format!("{what} is not text")))?
                    .trim()
                    .to_owned();
                if token.is_empty() {
                    return Err(
                        self.error(format!("{what} {} is empty", self.resolve(file).display()))
                    );
                }
                words.push(format!("{what} {}", self.resolve(file).display()));
                Some(token)
            }
            (None, None) => None,
        };
        let cert = self.file_or_data(
            &owner,
            "client-certificate",
            user.client_certificate.as_deref(),
            user.client_certificate_data.as_deref(),
        )?;
        let key = self.file_or_data(
            &owner,
            "client-key",
            user.client_key.as_deref(),
            user.client_key_data.as_deref(),
        )?;
        let client_cert = match (cert, key) {
            (Some((cert_pem, cert_what)), Some((key_pem, key_what))) => {
                let chain = self.certificates(&cert_what, &cert_pem)?;
                let key = self.private_key(&key_what, &key_pem)?;
                words.push(cert_what);
                Some(ClientCert::new_with_certs(&chain, key))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.error(format!(
                    "{owner} has a client certificate but no client-key"
                )));
            }
            (None, Some(_)) => {
                return Err(self.error(format!(
                    "{owner} has a client-key but no client certificate"
                )));
            }
        };
        if words.is_empty() {
            words.push(format!("{owner} has no credentials"));
        }
        Ok((token, client_cert, words.join(" and ")))
    }
}

#[cfg(test)]
mod tests;
