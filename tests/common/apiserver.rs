//! A Kubernetes API server for tests: real TLS on 127.0.0.1 (an ephemeral port) with a CA of
//! its own, a bearer token it checks (or a client certificate signed by its CA), serving the Pod
//! JSON it is given at `/api/v1/namespaces/NS/pods/NAME` (and Namespaces at
//! `/api/v1/namespaces/NS`), with fault modes. JSON merge patches of a pod (`PATCH
//! …/pods/NAME[/status]`) are applied to the served pod and recorded. It writes kubeconfig files
//! for its clients and stops on drop.

use nix::sys::socket::Shutdown;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The token the server accepts.
pub const TOKEN: &str = "meshcap-test-token";

/// How the server misbehaves.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answers as the real API does.
    None,
    /// Nothing listens on the port.
    Down,
    /// Waits this long before each answer (longer than the client's timeout).
    Slow(Duration),
    /// Answers every request with this status and a Kubernetes Status body.
    Status(u16),
    /// Answers 200 with a body that is not JSON.
    Garbage,
    /// Answers the first `count` requests with `status`, then as the real API does.
    FailFirst { count: usize, status: u16 },
    /// Answers every PATCH with this status (GETs as the real API does): an account without
    /// the right to write the pod.
    RefusePatch(u16),
    /// As `FailFirst`, each failure with `Retry-After: SECONDS`, as an overloaded API server
    /// (429) or one shutting down (503) answers.
    RetryAfter {
        count: usize,
        status: u16,
        seconds: u64,
    },
}

/// How a written kubeconfig gives the certificate authority.
#[derive(Clone, Copy, Debug)]
pub enum CaForm {
    /// `certificate-authority-data`.
    Data,
    /// `certificate-authority`, a file beside the kubeconfig, named relatively.
    File,
    /// The data of another CA, which did not sign the server's certificate.
    Foreign,
}

/// How a written kubeconfig authenticates.
#[derive(Clone, Copy, Debug)]
pub enum Credential {
    Token,
    /// `tokenFile`, a file beside the kubeconfig, named absolutely.
    TokenFile,
    /// A token the server does not accept.
    WrongToken,
    /// `client-certificate-data` and `client-key-data`, signed by the server's CA.
    ClientCertificate,
    /// `client-certificate` and `client-key` files.
    ClientCertificateFiles,
    /// No user at all.
    Anonymous,
}

/// A CA and the certificates it signs.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate and its key (DER, PKCS#8), for these names and this purpose.
    fn leaf(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (rcgen::Certificate, KeyPair) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert, key)
    }
}

struct Shared {
    stop: AtomicBool,
    requests: AtomicUsize,
    fault: Fault,
    /// Answer bodies by request path.
    pods: Mutex<BTreeMap<String, String>>,
    /// The merge patches received: the pod's path and the patch.
    patches: Mutex<Vec<(String, serde_json::Value)>>,
}

pub struct ApiServer {
    pub port: u16,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
    ca: TestCa,
    /// Kubeconfigs and the files they name.
    dir: PathBuf,
    written: AtomicUsize,
    /// The accepting socket, shut down on drop to wake the accept loop from any namespace.
    listener: Option<TcpListener>,
    thread: Option<JoinHandle<()>>,
}

fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "meshcap-apiserver-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

impl ApiServer {
    pub fn start(fault: Fault) -> ApiServer {
        let ca = TestCa::new("meshcap test API CA");
        let (cert, key) = ca.leaf(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
            fault,
            pods: Mutex::new(BTreeMap::new()),
            patches: Mutex::new(Vec::new()),
        });
        let mut kept = None;
        let thread = match fault {
            // The port was free a moment ago and nobody listens on it now.
            Fault::Down => None,
            _ => {
                kept = Some(listener.try_clone().expect("clone the listener"));
                let tls = Arc::new(server_config(&ca, cert, key));
                let shared = shared.clone();
                Some(std::thread::spawn(move || {
                    accept_loop(listener, tls, shared)
                }))
            }
        };
        ApiServer {
            port,
            url: format!("https://127.0.0.1:{port}"),
            shared,
            ca,
            dir: scratch_dir(),
            written: AtomicUsize::new(0),
            listener: kept,
            thread,
        }
    }

    /// As [`ApiServer::start`], listening on the loopback of `ns` (where the plugins of a
    /// `CniNode` run, as a node's plugins reach its API server).
    pub fn start_in(ns: &netns_test_harness::Netns, fault: Fault) -> ApiServer {
        ns.run(move || ApiServer::start(fault))
    }

    /// Serves `pod` (a Pod object) at the path of its `metadata.namespace` and `metadata.name`.
    pub fn serve_pod(&self, pod: &serde_json::Value) {
        let meta = &pod["metadata"];
        let namespace = meta["namespace"].as_str().expect("metadata.namespace");
        let name = meta["name"].as_str().expect("metadata.name");
        self.serve_at(namespace, name, &pod.to_string());
    }

    /// Serves `body` as the answer for the pod `namespace`/`name`.
    pub fn serve_at(&self, namespace: &str, name: &str, body: &str) {
        self.shared
            .pods
            .lock()
            .unwrap()
            .insert(pod_path(namespace, name), body.to_owned());
    }

    /// Serves a Namespace `name` with these labels at `/api/v1/namespaces/NAME`.
    pub fn serve_namespace(&self, name: &str, labels: serde_json::Value) {
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
        });
        self.shared
            .pods
            .lock()
            .unwrap()
            .insert(format!("/api/v1/namespaces/{name}"), body.to_string());
    }

    /// The merge patches received so far: the pod's path (`/api/v1/namespaces/NS/pods/NAME`)
    /// and the patch.
    pub fn patches(&self) -> Vec<(String, serde_json::Value)> {
        self.shared.patches.lock().unwrap().clone()
    }

    /// The pod served at `namespace`/`name` now (with the patches applied).
    pub fn pod(&self, namespace: &str, name: &str) -> Option<serde_json::Value> {
        let pods = self.shared.pods.lock().unwrap();
        let body = pods.get(&pod_path(namespace, name))?;
        serde_json::from_str(body).ok()
    }

    /// Requests received so far (TLS handshakes that failed are not requests).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Writes a kubeconfig for this server and returns its path.
    pub fn kubeconfig(&self, ca: CaForm, credential: Credential) -> PathBuf {
        let n = self.written.fetch_add(1, Ordering::Relaxed);
        let base64 = |text: &str| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(text)
        };
        let ca_line = match ca {
            CaForm::Data => format!("certificate-authority-data: {}", base64(&self.ca.pem())),
            CaForm::File => {
                let name = format!("ca-{n}.crt");
                self.write(&name, &self.ca.pem());
                format!("certificate-authority: {name}")
            }
            CaForm::Foreign => format!(
                "certificate-authority-data: {}",
                base64(&TestCa::new("another CA").pem())
            ),
        };
        let client = || {
            self.ca
                .leaf(&["system:node:test"], ExtendedKeyUsagePurpose::ClientAuth)
        };
        let user = match credential {
            Credential::Token => Some(format!("token: {TOKEN}")),
            Credential::WrongToken => Some("token: not-the-token".to_owned()),
            Credential::TokenFile => {
                let path = self.write(&format!("token-{n}"), &format!("{TOKEN}\n"));
                Some(format!("tokenFile: {}", path.display()))
            }
            Credential::ClientCertificate => {
                let (cert, key) = client();
                Some(format!(
                    "client-certificate-data: {}\n    client-key-data: {}",
                    base64(&cert.pem()),
                    base64(&key.serialize_pem())
                ))
            }
            Credential::ClientCertificateFiles => {
                let (cert, key) = client();
                let cert_path = self.write(&format!("client-{n}.crt"), &cert.pem());
                let key_path = self.write(&format!("client-{n}.key"), &key.serialize_pem());
                Some(format!(
                    "client-certificate: {}\n    client-key: {}",
                    cert_path.display(),
                    key_path.display()
                ))
            }
            Credential::Anonymous => None,
        };
        let (context_user, users) = match user {
            Some(user) => (
                "\n    user: meshcap",
                format!("users:\n- name: meshcap\n  user:\n    {user}\n"),
            ),
            None => ("", String::new()),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: test\n  cluster:\n    server: {}\n    {ca_line}\n\
             contexts:\n- name: test\n  context:\n    cluster: test{context_user}\n{users}",
            self.url
        );
        self.write(&format!("kubeconfig-{n}"), &text)
    }

    /// The directory of the written kubeconfigs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write a kubeconfig file");
        path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            // Wakes the blocking accept (it fails with EINVAL), whatever namespace it is in.
            if let Some(listener) = &self.listener {
                let _ = nix::sys::socket::shutdown(listener.as_raw_fd(), Shutdown::Read);
            }
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pod_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{name}")
}

/// TLS with the server's certificate; client certificates are verified against the CA when
/// presented, and optional (token clients present none), as on a real API server.
fn server_config(ca: &TestCa, cert: rcgen::Certificate, key: KeyPair) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .unwrap();
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap()
}

fn accept_loop(listener: TcpListener, tls: Arc<ServerConfig>, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let (tls, shared) = (tls.clone(), shared.clone());
        std::thread::spawn(move || handle(stream, tls, &shared));
    }
}

/// One connection, one request, then close.
fn handle(stream: TcpStream, tls: Arc<ServerConfig>, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let Ok(connection) = ServerConnection::new(tls) else {
        return;
    };
    let mut tls = StreamOwned::new(connection, stream);
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let client_certificate = tls
        .conn
        .peer_certificates()
        .is_some_and(|certs| !certs.is_empty());
    let split = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut content = head.split_off(split);
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(1024 * 1024);
    while content.len() < length {
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => content.extend_from_slice(&chunk[..n]),
        }
    }
    let count = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let (status, body) = answer(&head, &content, client_certificate, count, shared);
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    let retry_after = match shared.fault {
        Fault::RetryAfter {
            count: n, seconds, ..
        } if count <= n => {
            format!("Retry-After: {seconds}\r\n")
        }
        _ => String::new(),
    };
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         {retry_after}Connection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    );
    let _ = tls.write_all(response.as_bytes());
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

fn answer(
    head: &str,
    content: &[u8],
    client_certificate: bool,
    count: usize,
    shared: &Shared,
) -> (u16, String) {
    match shared.fault {
        Fault::Slow(delay) => {
            let until = Instant::now() + delay;
            while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Fault::Status(status) => return (status, status_body(status, "injected fault")),
        Fault::FailFirst { count: n, status }
        | Fault::RetryAfter {
            count: n, status, ..
        } if count <= n => {
            return (status, status_body(status, "injected fault"));
        }
        _ => {}
    }
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let path = request.split(' ').nth(1).unwrap_or_default();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_owned());
    let token_ok = authorization.as_deref() == Some(format!("Bearer {TOKEN}").as_str());
    if !token_ok && !client_certificate {
        return (401, status_body(401, "Unauthorized"));
    }
    if request.starts_with("PATCH ") {
        if let Fault::RefusePatch(status) = shared.fault {
            return (status, status_body(status, "injected fault"));
        }
        return patch(path, content, shared);
    }
    if !request.starts_with("GET ") {
        return (405, status_body(405, "method not allowed"));
    }
    if let Fault::Garbage = shared.fault {
        return (200, "<html>502 Bad Gateway</html>{\"kind\":".to_owned());
    }
    match shared.pods.lock().unwrap().get(path) {
        Some(body) => (200, body.clone()),
        None => {
            let name = path.rsplit('/').next().unwrap_or_default();
            (404, status_body(404, &format!("pods \"{name}\" not found")))
        }
    }
}

/// A JSON merge patch (RFC 7386) of a served pod, through the pod or its `status` subresource.
fn patch(path: &str, content: &[u8], shared: &Shared) -> (u16, String) {
    let pod_path = path.strip_suffix("/status").unwrap_or(path);
    let Ok(patch) = serde_json::from_slice::<serde_json::Value>(content) else {
        return (400, status_body(400, "the patch is not JSON"));
    };
    let mut pods = shared.pods.lock().unwrap();
    let Some(body) = pods.get_mut(pod_path) else {
        let name = pod_path.rsplit('/').next().unwrap_or_default();
        return (404, status_body(404, &format!("pods \"{name}\" not found")));
    };
    let mut pod: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    merge(&mut pod, &patch);
    *body = pod.to_string();
    shared
        .patches
        .lock()
        .unwrap()
        .push((pod_path.to_owned(), patch));
    (200, body.clone())
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::json!({});
    }
    let object = target.as_object_mut().unwrap();
    for (key, value) in fields {
        if value.is_null() {
            object.remove(key);
        } else {
            merge(
                object.entry(key.clone()).or_insert(serde_json::Value::Null),
                value,
            );
        }
    }
}

/// A Kubernetes `Status` object, as the API server sends with an error.
fn status_body(code: u16, message: &str) -> String {
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason(code),
        "code": code,
    })
    .to_string()
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    }
}
