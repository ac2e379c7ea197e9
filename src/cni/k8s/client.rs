//! The pod lookup: one blocking HTTPS GET of `/api/v1/namespaces/NS/pods/NAME`, retried with a
//! bounded backoff while the API server is unreachable, slow or overloaded. Ambient mode also
//! reads the pod's namespace ([`fetch_namespace_with`]) and writes the pod's redirection
//! annotation ([`patch_pod_status_with`], a JSON merge patch), with the same retries.

use super::error::K8sError;
use super::kubeconfig::Kubeconfig;
use super::pod::{Namespace, Pod};
use super::stanza::PodRef;
use crate::inputs::shortened;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use ureq::config::Config;
use ureq::http::Uri;
use ureq::tls::{RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// How long [`fetch_pod`] keeps trying. Attempts stop once `budget` has passed since the first
/// one started; no attempt runs past it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The whole time allowed, attempts and pauses together.
    pub budget: Duration,
    /// The longest one attempt may take (connection, TLS, request and response).
    pub attempt_timeout: Duration,
    /// The pause after the first failed attempt; it doubles after each further one.
    pub first_backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Five seconds in all: the runtime retries a failed sandbox itself, so the plugin fails
    /// with "try again later" rather than holding up the kubelet.
    fn default() -> RetryPolicy {
        RetryPolicy {
            budget: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// Reads the kubeconfig at `kubeconfig` and fetches the pod.
pub fn fetch_pod(kubeconfig: &Path, pod: &PodRef, retry: &RetryPolicy) -> Result<Pod, K8sError> {
    let config = Kubeconfig::load(kubeconfig)?;
    fetch_pod_with(&config, pod, retry)
}

/// Fetches the pod with an already read kubeconfig.
pub fn fetch_pod_with(
    config: &Kubeconfig,
    pod: &PodRef,
    retry: &RetryPolicy,
) -> Result<Pod, K8sError> {
    let path = format!("/api/v1/namespaces/{}/pods/{}", pod.namespace, pod.name);
    let found = call(config, &Call::Get, &path, &Target::Pod(pod), retry)?;
    let got: Pod = decode(config, &Target::Pod(pod), &found)?;
    let meta = &got.metadata;
    if meta.namespace != pod.namespace || meta.name != pod.name {
        return Err(decode_error(
            config,
            &Target::Pod(pod),
            format!("it is pod {:?}/{:?}", meta.namespace, meta.name),
        ));
    }
    Ok(got)
}

/// Fetches the pod's namespace (its labels decide ambient enrolment).
pub fn fetch_namespace_with(
    config: &Kubeconfig,
    namespace: &str,
    retry: &RetryPolicy,
) -> Result<Namespace, K8sError> {
    let target = Target::Namespace(namespace);
    let found = call(
        config,
        &Call::Get,
        &format!("/api/v1/namespaces/{namespace}"),
        &target,
        retry,
    )?;
    let got: Namespace = decode(config, &target, &found)?;
    if got.metadata.name != namespace {
        return Err(decode_error(
            config,
            &target,
            format!("it is namespace {:?}", got.metadata.name),
        ));
    }
    Ok(got)
}

/// Applies a JSON merge patch (RFC 7386) to the pod through its `status` subresource, as
/// Istio's node agent writes its annotation: `pods/status` may change the metadata too, and is
/// the lower privilege.
pub fn patch_pod_status_with(
    config: &Kubeconfig,
    pod: &PodRef,
    patch: &serde_json::Value,
    retry: &RetryPolicy,
) -> Result<(), K8sError> {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/status",
        pod.namespace, pod.name
    );
    call(
        config,
        &Call::MergePatch(patch.to_string()),
        &path,
        &Target::Pod(pod),
        retry,
    )
    .map(drop)
}

/// What a request does.
enum Call {
    Get,
    /// `PATCH` with `Content-Type: application/merge-patch+json` and this body.
    MergePatch(String),
}

/// What a request is about, for its errors.
enum Target<'a> {
    Pod(&'a PodRef),
    Namespace(&'a str),
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pod(pod) => write!(f, "pod {pod}"),
            Target::Namespace(ns) => write!(f, "namespace {ns}"),
        }
    }
}

/// One request at `path` of the API server, retried within `retry`'s budget; the body of the
/// 2xx answer.
fn call(
    config: &Kubeconfig,
    call: &Call,
    path: &str,
    target: &Target<'_>,
    retry: &RetryPolicy,
) -> Result<Vec<u8>, K8sError> {
    let agent = agent(config);
    let url = format!("{}{path}", config.server);
    let start = Instant::now();
    let deadline = start + retry.budget;
    let mut backoff = retry.first_backoff;
    let mut attempts = 0;
    loop {
        let timeout = retry
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        attempts += 1;
        let (failure, retry_after) = match attempt(&agent, config, call, &url, target, timeout) {
            Ok(body) => return Ok(body),
            Err(FetchAttemptError::Final(e)) => return Err(e),
            Err(FetchAttemptError::Transient(why)) => (why, None),
            Err(FetchAttemptError::RetryAfter(why, after)) => (why, Some(after)),
        };
        tracing::debug!(%url, attempts, %failure, "Kubernetes API attempt failed");
        // The server's own Retry-After (429, 503) replaces the backoff: asking earlier would
        // only be refused again.
        let pause = retry_after.map_or(backoff, |after| after.max(backoff));
        // Another attempt only when the pause leaves time for it.
        if deadline.saturating_duration_since(Instant::now()) <= pause {
            return Err(K8sError::Unavailable {
                server: config.server.clone(),
                attempts,
                elapsed: start.elapsed(),
                last: failure,
            });
        }
        std::thread::sleep(pause);
        backoff = (backoff * 2).min(retry.max_backoff);
    }
}

/// Why one attempt of [`call`] failed: worth retrying or not. The retry loop turns the
/// last transient one into [`K8sError::Unavailable`].
enum FetchAttemptError {
    /// Worth another attempt: what went wrong.
    Transient(String),
    /// Worth another attempt after the pause the server asked for (`Retry-After`).
    RetryAfter(String, Duration),
    Final(K8sError),
}

fn agent(config: &Kubeconfig) -> ureq::Agent {
    let roots = match &config.ca {
        Some(certs) => RootCerts::new_with_certs(certs),
        None => RootCerts::WebPki,
    };
    let tls = TlsConfig::builder()
        .root_certs(roots)
        .client_cert(config.client_cert.clone())
        .build();
    let config = ureq::Agent::config_builder()
        .tls_config(tls)
        .https_only(true)
        .http_status_as_error(false)
        // The API server does not redirect these requests; a redirect would carry the token away.
        .max_redirects(0)
        .max_redirects_will_error(false)
        .user_agent(concat!("meshcap-cni/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::with_parts(config, DefaultConnector::default(), HostsFirst::default())
}

/// Resolves the API server's host name through the root's /etc/hosts first, read in Rust: the
/// release binary is static, and a static glibc may find no NSS modules on the node (see
/// [`crate::backend::host`]). Names the file does not hold (and addresses) go to the default
/// resolver.
#[derive(Debug, Default)]
struct HostsFirst(DefaultResolver);

/// Where the host names are (the root's own: the CNI plugin runs in the node's root).
const HOSTS: &str = "/etc/hosts";

impl Resolver for HostsFirst {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16().or(match uri.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        });
        // An address literal (IPv6 ones in brackets) needs no lookup.
        let literal = host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok();
        if let (Some(port), false) = (port, literal) {
            let found = crate::backend::host::hosts_file_lookup(Path::new(HOSTS), host);
            if !found.is_empty() {
                let mut out = self.empty();
                for ip in found.into_iter().take(16) {
                    out.push(SocketAddr::new(ip, port));
                }
                tracing::debug!(host, addresses = ?out, "resolved through {HOSTS}");
                return Ok(out);
            }
        }
        self.0.resolve(uri, config, timeout)
    }
}

fn attempt(
    agent: &ureq::Agent,
    config: &Kubeconfig,
    call: &Call,
    url: &str,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<Vec<u8>, FetchAttemptError> {
    let token = config.token.as_ref().map(|t| format!("Bearer {t}"));
    let token = token.as_deref();
    let sent = match call {
        Call::Get => prepared(agent.get(url), token, timeout).call(),
        Call::MergePatch(body) => prepared(
            agent
                .patch(url)
                .header("Content-Type", "application/merge-patch+json"),
            token,
            timeout,
        )
        .send(body.as_bytes()),
    };
    let mut response = sent.map_err(|e| transport(config, e, timeout))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after_seconds);
    let body = response
        .body_mut()
        .read_to_vec()
        .map_err(|e| transport(config, e, timeout))?;
    let server = || config.server.clone();
    match status {
        200..=299 => Ok(body),
        401 | 403 => Err(FetchAttemptError::Final(K8sError::Credentials {
            server: server(),
            kubeconfig: config.path.clone(),
            credential: config.credential.clone(),
            status,
            message: status_message(&body),
        })),
        404 => Err(FetchAttemptError::Final(match target {
            Target::Pod(pod) => K8sError::PodNotFound {
                server: server(),
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            },
            Target::Namespace(_) => K8sError::Status {
                server: server(),
                pod: target.to_string(),
                status,
                message: status_message(&body),
            },
        })),
        429 | 500..=599 => {
            let why = format!("HTTP {status}: {}", status_message(&body));
            Err(match retry_after {
                Some(after) if matches!(status, 429 | 503) => FetchAttemptError::RetryAfter(
                    format!("{why} (Retry-After: {}s)", after.as_secs()),
                    after,
                ),
                _ => FetchAttemptError::Transient(why),
            })
        }
        _ => Err(FetchAttemptError::Final(K8sError::Status {
            server: server(),
            pod: target.to_string(),
            status,
            message: status_message(&body),
        })),
    }
}

/// A `Retry-After` in delay-seconds, the form the API server sends (an HTTP date is ignored: the
/// backoff applies).
fn retry_after_seconds(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The headers and the timeout every API call carries.
fn prepared<B>(
    request: ureq::RequestBuilder<B>,
    token: Option<&str>,
    timeout: Duration,
) -> ureq::RequestBuilder<B> {
    let request = request
        .header("Accept", "application/json")
        .config()
        .timeout_global(Some(timeout))
        .build();
    match token {
        Some(token) => request.header("Authorization", token),
        None => request,
    }
}

/// Connection failures and timeouts are transient; TLS failures (a certificate that does not
/// verify, a refused client certificate) are not, and neither is anything else ureq reports.
fn transport(config: &Kubeconfig, error: ureq::Error, timeout: Duration) -> FetchAttemptError {
    use ureq::Error as E;
    let tls = |problem: String| {
        FetchAttemptError::Final(K8sError::Tls {
            server: config.server.clone(),
            kubeconfig: config.path.clone(),
            problem,
        })
    };
    match error {
        E::Timeout(_) => FetchAttemptError::Transient(format!("no answer within {timeout:?}")),
        E::HostNotFound | E::ConnectionFailed | E::Protocol(_) => {
            FetchAttemptError::Transient(error.to_string())
        }
        // rustls reports handshake failures through the stream as InvalidData.
        E::Io(ref io) if io.kind() == std::io::ErrorKind::InvalidData => tls(error.to_string()),
        E::Io(_) => FetchAttemptError::Transient(error.to_string()),
        E::Tls(_) | E::Rustls(_) | E::Pem(_) => tls(error.to_string()),
        _ => FetchAttemptError::Final(K8sError::Request {
            server: config.server.clone(),
            problem: error.to_string(),
        }),
    }
}

/// The `message` of a Kubernetes `Status` body, else the start of the body as text.
fn status_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Status {
        message: String,
    }
    if let Ok(status) = serde_json::from_slice::<Status>(body) {
        return shortened(&status.message).to_string();
    }
    shortened(String::from_utf8_lossy(body).trim()).to_string()
}

fn decode<T: serde::de::DeserializeOwned>(
    config: &Kubeconfig,
    target: &Target<'_>,
    body: &[u8],
) -> Result<T, K8sError> {
    serde_json::from_slice(body).map_err(|e| decode_error(config, target, e.to_string()))
}

fn decode_error(config: &Kubeconfig, target: &Target<'_>, problem: String) -> K8sError {
    K8sError::Decode {
        server: config.server.clone(),
        pod: target.to_string(),
        problem,
    }
}
