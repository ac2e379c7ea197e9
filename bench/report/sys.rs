//! Running programs with their wall time and peak memory, and what the machine is.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

/// What one timed run took.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// Wall time from spawn to reaped exit, seconds.
    pub secs: f64,
    /// Peak resident set of the process and the descendants it waited for (KiB): the largest
    /// one of them, as getrusage reports it (includes `ip netns exec` before its exec).
    pub maxrss_kib: u64,
}

/// Runs `cmd` (stdin and stdout null, stderr captured) and reaps it with wait4 to get its rusage.
/// Err with the status and stderr when it fails.
pub fn run_timed(mut cmd: Command) -> Result<Run, String> {
    use nix::libc;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; wait4 fills it and `status` for our own child, which std
    // has not reaped (the Child is never waited on after this).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = start.elapsed().as_secs_f64();
    if rc != pid {
        return Err(format!(
            "wait4 {cmd:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        let how = if libc::WIFEXITED(status) {
            format!("exit status {}", libc::WEXITSTATUS(status))
        } else {
            format!("wait status {status:#x}")
        };
        return Err(format!("{} ({how}): {}", program(&cmd), stderr.trim()));
    }
    Ok(Run {
        secs,
        maxrss_kib: usage.ru_maxrss as u64,
    })
}

/// The command's program and first arguments, for messages (the lists are left out).
pub fn program(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    for a in cmd.get_args().take(6) {
        let a = a.to_string_lossy();
        words.push(if a.chars().count() > 40 {
            format!("{}…", a.chars().take(40).collect::<String>())
        } else {
            a.into_owned()
        });
    }
    words.join(" ")
}

/// Output of a command (stdout, trimmed), or a note of why it failed.
pub fn output(argv: &[&str]) -> String {
    match Command::new(argv[0]).args(&argv[1..]).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => format!(
            "({} failed: {})",
            argv[0],
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("({}: {e})", argv[0]),
    }
}

/// The machine the numbers come from.
#[derive(Clone, Debug)]
pub struct Machine {
    pub nproc: usize,
    pub model: String,
    pub kernel: String,
    pub os: String,
    pub memory: String,
    pub date: String,
    pub load_start: String,
    pub tools: Vec<(String, String)>,
    pub revision: String,
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("(/proc/loadavg: {e})"))
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "(unknown: no model name in /proc/cpuinfo)".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_else(|| "(unknown)".to_owned());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "(unknown)".to_owned());
    let first_line = |s: String| s.lines().next().unwrap_or_default().to_owned();
    let tools = vec![
        (
            "iptables-nft".to_owned(),
            first_line(output(&["iptables-nft", "--version"])),
        ),
        (
            "iptables-legacy".to_owned(),
            first_line(output(&["iptables-legacy", "--version"])),
        ),
        ("nft".to_owned(), first_line(output(&["nft", "--version"]))),
        (
            "socat".to_owned(),
            output(&["socat", "-V"])
                .lines()
                .find(|l| l.contains("socat version"))
                .unwrap_or("(no version line)")
                .trim()
                .to_owned(),
        ),
        (
            "rustc".to_owned(),
            first_line(output(&["rustc", "--version"])),
        ),
    ];
    let dir = env!("CARGO_MANIFEST_DIR");
    let revision = output(&["git", "-C", dir, "describe", "--always", "--dirty"]);
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        model,
        kernel: output(&["uname", "-r"]),
        os,
        memory,
        date: output(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
        load_start: loadavg(),
        tools,
        revision,
    }
}
