use super::*;
use base64::engine::general_purpose::STANDARD;

/// A directory of its own under the system's temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("meshcap-kubeconfig-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate and its key, in PEM.
fn pem_pair() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn yaml(cluster: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: ctx\n\
         clusters:\n- name: c\n  cluster:\n{cluster}\n\
         contexts:\n- name: ctx\n  context:\n    cluster: c\n    user: u\n\
         users:\n- name: u\n  user:\n{user}\n"
    )
}

fn parse(text: &str) -> Result<Kubeconfig, K8sError> {
    Kubeconfig::parse(text, Path::new("/etc/cni/net.d/meshcap-kubeconfig"))
}

fn problem_of(result: Result<Kubeconfig, K8sError>) -> String {
    match result {
        Err(K8sError::Kubeconfig { problem, .. }) => problem,
        other => panic!("expected a kubeconfig error, got {other:?}"),
    }
}

#[test]
fn yaml_with_inline_ca_and_token() {
    let (ca, _) = pem_pair();
    let text = yaml(
        &format!(
            "    server: https://10.96.0.1:443/\n    certificate-authority-data: {}",
            STANDARD.encode(&ca)
        ),
        "    token: \"  abc.def \"",
    );
    let k = parse(&text).unwrap();
    assert_eq!(k.server, "https://10.96.0.1:443");
    assert_eq!(k.ca.as_ref().map(Vec::len), Some(1));
    assert_eq!(k.token.as_deref(), Some("abc.def"));
    assert!(k.client_cert.is_none());
    assert_eq!(k.credential, "user \"u\" token");
    assert!(
        !format!("{k:?}").contains("abc.def"),
        "Debug shows the token"
    );
}

#[test]
fn json_with_relative_files() {
    let dir = Scratch::new("json");
    let (ca, _) = pem_pair();
    let (cert, key) = pem_pair();
    dir.write("ca.crt", &ca);
    dir.write("token", "tok\n");
    dir.write("client.crt", &cert);
    dir.write("client.key", &key);
    let path = dir.write(
        "kubeconfig.json",
        r#"{"current-context": "ctx",
	"clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443",
	              "certificate-authority": "ca.crt"}}],
	"contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
	"users": [{"name": "u", "user": {"tokenFile": "token",
	           "client-certificate": "client.crt", "client-key": "client.key"}}]}"#,
    );
    let k = Kubeconfig::load(&path).unwrap();
    assert_eq!(k.server, "https://127.0.0.1:6443");
    assert_eq!(k.ca.as_ref().map(Vec::len), Some(1));
    assert_eq!(k.token.as_deref(), Some("tok"));
    assert!(k.client_cert.is_some());
    assert_eq!(
        k.credential,
        format!(
            "user \"u\" tokenFile {} and user \"u\" client-certificate {}",
            dir.0.join("token").display(),
            dir.0.join("client.crt").display()
        )
    );
}

#[test]
fn inline_token_wins_over_token_file_and_anonymous_is_allowed() {
    let k = parse(&yaml(
        "    server: https://h",
        "    token: inline\n    tokenFile: /nonexistent/token",
    ))
    .unwrap();
    assert_eq!(k.token.as_deref(), Some("inline"));
    assert!(k.ca.is_none());

    let anonymous = "current-context: ctx\nclusters:\n- name: c\n  cluster:\n    server: https://h\n\
                     contexts:\n- name: ctx\n  context:\n    cluster: c\n";
    let k = parse(anonymous).unwrap();
    assert!(k.token.is_none() && k.client_cert.is_none());
    assert_eq!(k.credential, "no credentials");
}

#[test]
fn a_missing_file_is_named() {
    let err = Kubeconfig::load(Path::new("/nonexistent/meshcap/kubeconfig")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("kubeconfig /nonexistent/meshcap/kubeconfig: ")
            && text.contains("No such file"),
        "{text}"
    );
    assert_eq!(err.cni_code(), 7);
    assert!(!err.retryable());
}

#[test]
fn malformed_files_say_what_is_wrong() {
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "the file is empty"),
        ("clusters: [unclosed".into(), "not a kubeconfig"),
        ("{\"current-context\": ".into(), "not a kubeconfig"),
        ("- just\n- a list\n".into(), "not a kubeconfig"),
        ("clusters: []\n".into(), "no current-context"),
        (
            "current-context: x\n".into(),
            "current-context \"x\" is not in contexts",
        ),
        (
            "current-context: x\ncontexts:\n- name: x\n  context:\n    cluster: gone\n".into(),
            "cluster \"gone\" of context \"x\" is not in clusters",
        ),
        (
            yaml("    server: https://h", "    token: t").replace("user: u", "user: nobody"),
            "user \"nobody\" of context \"ctx\" is not in users",
        ),
        (
            yaml("    certificate-authority: ca", "    token: t"),
            "cluster \"c\" has no server",
        ),
        (
            yaml("    server: http://10.0.0.1", "    token: t"),
            "cluster \"c\" server \"http://10.0.0.1\" is not an https:// URL",
        ),
        (
            yaml(
                "    server: https://h\n    insecure-skip-tls-verify: true",
                "    token: t",
            ),
            "cluster \"c\" sets insecure-skip-tls-verify, which meshcap refuses",
        ),
        (
            yaml(
                "    server: https://h\n    proxy-url: https://p",
                "    token: t",
            ),
            "cluster \"c\" proxy-url is not supported",
        ),
        (
            yaml(
                "    server: https://h\n    certificate-authority-data: '%%%'",
                "    token: t",
            ),
            "cluster \"c\" certificate-authority-data is not base64",
        ),
        (
            yaml(
                &format!(
                    "    server: https://h\n    certificate-authority-data: {}",
                    STANDARD.encode("no pem here")
                ),
                "    token: t",
            ),
            "cluster \"c\" certificate-authority-data holds no PEM certificate",
        ),
        (
            yaml(
                "    server: https://h\n    certificate-authority: /nonexistent/ca.crt",
                "    token: t",
            ),
            "cluster \"c\" certificate-authority /nonexistent/ca.crt: No such file",
        ),
        (
            yaml("    server: https://h", "    exec:\n      command: aws"),
            "user \"u\" uses exec, which meshcap does not support",
        ),
        (
            yaml(
                "    server: https://h",
                "    username: admin\n    password: x",
            ),
            "user \"u\" uses username",
        ),
        (
            yaml("    server: https://h", "    tokenFile: /nonexistent/token"),
            "user \"u\" tokenFile /nonexistent/token: No such file",
        ),
        (
            yaml(
                "    server: https://h",
                &format!(
                    "    client-certificate-data: {}",
                    STANDARD.encode(pem_pair().0)
                ),
            ),
            "user \"u\" has a client certificate but no client-key",
        ),
        (
            yaml(
                "    server: https://h",
                &format!(
                    "    client-certificate-data: {}\n    client-key-data: {}",
                    STANDARD.encode(pem_pair().0),
                    STANDARD.encode(pem_pair().0)
                ),
            ),
            "user \"u\" client-key-data holds no PEM private key",
        ),
    ];
    for (text, expected) in cases {
        let got = problem_of(parse(&text));
        assert!(
            got.contains(expected),
            "for:\n{text}\ngot: {got}\nwanted: {expected}"
        );
    }
}

#[test]
fn an_empty_token_file_is_an_error() {
    let dir = Scratch::new("empty-token");
    dir.write("token", " \n");
    let path = dir.write(
        "kubeconfig",
        &yaml("    server: https://h", "    tokenFile: token"),
    );
    let err = Kubeconfig::load(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "kubeconfig {}: user \"u\" tokenFile {} is empty",
            path.display(),
            dir.0.join("token").display()
        )
    );
}
