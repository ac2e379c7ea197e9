//! The CNI environment variables a runtime sets for a plugin, checked as the spec requires.

use super::spec::{CniError, code};
use crate::inputs::quoted;
use std::path::PathBuf;

/// The operation the runtime asks for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Check,
    Del,
    Version,
    Status,
    Gc,
}

impl Command {
    /// The spec's name of the command.
    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Check => "CHECK",
            Command::Del => "DEL",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// The variables of one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    /// `None` for `DEL` of a namespace that is already gone, and for the commands without one.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS`: `KEY=VALUE;KEY=VALUE`.
    pub args: String,
}

impl CniEnv {
    /// Reads the invocation from `vars` (the process environment in the plugin).
    pub fn from_vars(vars: &[(String, String)]) -> Result<CniEnv, CniError> {
        let get = |name: &str| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let invalid = |msg: String| CniError::new(code::INVALID_ENVIRONMENT, msg);
        let command = match get("CNI_COMMAND").as_deref() {
            None => return Err(invalid("CNI_COMMAND is not set".into())),
            Some("ADD") => Command::Add,
            Some("CHECK") => Command::Check,
            Some("DEL") => Command::Del,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => return Err(invalid(format!("unknown CNI_COMMAND {}", quoted(other)))),
        };
        // The variables each command needs (CNI_NETNS is optional for DEL: the namespace may be
        // gone already).
        let required: &[&str] = match command {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Version | Command::Status | Command::Gc => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|name| get(name).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(invalid(format!(
                "required environment variables missing: {}",
                missing.join(", ")
            )));
        }
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        if !container_id.is_empty() && !valid_container_id(&container_id) {
            return Err(invalid(format!(
                "CNI_CONTAINERID {} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'",
                quoted(&container_id)
            )));
        }
        Ok(CniEnv {
            command,
            container_id,
            netns: get("CNI_NETNS").map(PathBuf::from),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args: get("CNI_ARGS").unwrap_or_default(),
        })
    }
}

/// The spec's rule for container ids.
fn valid_container_id(id: &str) -> bool {
    id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod",
        ),
    ];

    #[test]
    fn a_complete_add_parses() {
        let env = CniEnv::from_vars(&vars(ADD)).unwrap();
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.netns, Some(PathBuf::from("/run/netns/x")));
        assert!(env.args.contains("K8S_POD_NAME=pod"));
    }

    #[test]
    fn missing_variables_are_named() {
        let mut v = vars(ADD);
        v.retain(|(k, _)| k != "CNI_NETNS" && k != "CNI_PATH");
        let e = CniEnv::from_vars(&v).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
        assert!(
            e.msg.contains("CNI_NETNS") && e.msg.contains("CNI_PATH"),
            "{}",
            e.msg
        );
        // DEL may come after the namespace is gone.
        let mut v = vars(ADD);
        v.retain(|(k, _)| k != "CNI_NETNS");
        v.push(("CNI_COMMAND".into(), "DEL".into()));
        assert_eq!(CniEnv::from_vars(&v).unwrap().netns, None);
    }

    #[test]
    fn bad_commands_and_ids_are_refused() {
        let mut v = vars(ADD);
        v.push(("CNI_COMMAND".into(), "ATTACH".into()));
        assert!(CniEnv::from_vars(&v).unwrap_err().msg.contains("ATTACH"));
        let mut v = vars(ADD);
        v.push(("CNI_CONTAINERID".into(), "../etc".into()));
        assert_eq!(
            CniEnv::from_vars(&v).unwrap_err().code,
            code::INVALID_ENVIRONMENT
        );
        assert!(
            CniEnv::from_vars(&[])
                .unwrap_err()
                .msg
                .contains("CNI_COMMAND")
        );
    }
}
