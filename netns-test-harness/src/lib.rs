//! Throwaway network namespaces for meshcap's integration tests.
//!
//! [`Netns::new`] creates a uniquely named namespace (`meshcap-…`) with `lo` up; dropping it
//! deletes the namespace and kills what runs in it, also when the test panics. Namespaces left
//! behind by a crashed run (their creating process is gone) are removed by the next
//! [`Netns::new`].
//!
//! Tests that need root call [`require_root`] first: without root it reports the test as skipped
//! ([`skip`]) and returns `false`; with `MESHCAP_REQUIRE_NETNS=1` it panics instead, so CI cannot
//! pass by skipping.
//!
//! On top of the namespaces: [`Netns::thread`] / [`Netns::run_as`] run code inside a namespace as
//! a chosen uid/gid (only that thread changes identity), [`probe`] has TCP/UDP listeners that
//! say who accepted a connection and where it was going, clients that classify what happened,
//! and the table format of expected classifications; [`pod`] builds a standard pod with peers
//! (documentation addresses only) and the standard probe matrix; [`install`] loads restore text
//! or `nft -f` scripts and Istio's routing commands into a namespace.

pub mod install;
pub mod pod;
pub mod probe;
pub mod skip;

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

/// Istio's default injected istio-init flags, as the tests and benchmarks run meshcap with them:
/// REDIRECT, every inbound port but the proxy's own (15090, 15021, 15020), every outbound
/// destination. A later flag overrides one of these (e.g. `-m TPROXY`), as in Istio's CLI.
pub const ISTIO_DEFAULT_ARGS: [&str; 16] = [
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
];

/// Prefix of every namespace the harness creates.
pub const PREFIX: &str = "meshcap-";

/// Whether the test may run: true as root. Otherwise reports `test` as skipped and returns
/// false, or panics when `MESHCAP_REQUIRE_NETNS=1`.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip::skip(
        test,
        skip::Need::Root,
        "needs root to create network namespaces",
    );
    false
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace that exists until dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `meshcap-<tag>-<pid>-<n>` with `lo` up. Panics on failure (tests only).
    pub fn new(tag: &str) -> Netns {
        remove_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Names must fit IFNAMSIZ-like limits of some tools; keep them short.
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let name = format!("{PREFIX}{tag}-{}-{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip_batch(&["link set lo up".to_owned()]);
        ns
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mount path, usable with setns or meshcap's --network-namespace.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// A command that runs `argv` inside the namespace (via `ip netns exec`).
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// Runs `argv` inside the namespace and returns its output, whatever its status.
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.command(argv)
            .stdin(Stdio::null())
            .output()
            .expect("spawn ip netns exec")
    }

    /// Runs `argv` inside the namespace; panics with its stderr unless it succeeds. Returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        run_ok(self.command(argv).stdin(Stdio::null()))
    }

    /// Runs `argv` inside the namespace with `input` on its standard input; panics on failure.
    pub fn exec_with_input(&self, argv: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip netns exec");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("wait")
    }

    /// Runs `f` on a fresh thread that has entered the namespace, and returns its result.
    /// The calling thread's namespace is untouched.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        join(self.thread(None, f))
    }

    /// Runs `f` on a fresh thread inside the namespace as `user` (see [`Netns::thread`]) and
    /// returns its result.
    pub fn run_as<T: Send + 'static>(
        &self,
        user: User,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        join(self.thread(Some(user), f))
    }

    /// Starts `f` on a fresh thread that has entered the namespace and, with `Some(user)`, taken
    /// that identity (supplementary groups, gid, then uid). Sockets the thread creates belong to
    /// the namespace and to that user, as netfilter's owner match sees it.
    ///
    /// Only this thread changes identity: the credentials are set with the raw `setresuid` /
    /// `setresgid` / `setgroups` system calls, which act on the calling thread alone (glibc's
    /// wrappers would broadcast the change to every thread of the test process). The thread
    /// cannot get root back and ends when `f` returns, so nothing else runs with that identity.
    pub fn thread<T: Send + 'static>(
        &self,
        user: Option<User>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let file = File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            drop(file);
            if let Some(user) = user {
                user.become_on_this_thread()
                    .unwrap_or_else(|e| panic!("becoming {user}: {e}"));
            }
            f()
        })
    }

    /// Runs `ip -batch` inside the namespace: one `ip` command per element, without the
    /// leading `ip` (e.g. `addr add 192.0.2.1/24 dev net0`). A command may start with global
    /// options (`-6 route add …`, `-f inet6 rule add …`); consecutive commands with the same
    /// options share one `ip` process. Panics if one fails.
    pub fn ip_batch(&self, commands: &[String]) {
        let mut groups: Vec<(Vec<&str>, Vec<String>)> = Vec::new();
        for command in commands {
            let words: Vec<&str> = command.split_whitespace().collect();
            let mut n = 0;
            while n < words.len() && words[n].starts_with('-') {
                // `-f FAMILY` takes a value; `-4`, `-6` do not.
                n += if words[n] == "-f" { 2 } else { 1 };
            }
            let (opts, rest) = words.split_at(n.min(words.len()));
            match groups.last_mut() {
                Some((o, cmds)) if *o == opts => cmds.push(rest.join(" ")),
                _ => groups.push((opts.to_vec(), vec![rest.join(" ")])),
            }
        }
        for (opts, cmds) in groups {
            let out = Command::new("ip")
                .args(["-n", &self.name])
                .args(&opts)
                .args(["-batch", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write;
                    let mut text = cmds.join("\n");
                    text.push('\n');
                    child
                        .stdin
                        .take()
                        .expect("stdin")
                        .write_all(text.as_bytes())?;
                    child.wait_with_output()
                })
                .expect("spawn ip -batch");
            assert!(
                out.status.success(),
                "ip -n {} {} -batch failed ({}): {}\ncommands:\n{}",
                self.name,
                opts.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                cmds.join("\n")
            );
        }
    }

    /// Sets sysctls of the namespace (`net.ipv4.ip_forward=1`, …). Panics on failure.
    pub fn sysctl(&self, settings: &[&str]) {
        let mut argv = vec!["sysctl", "-q", "-w"];
        argv.extend(settings);
        self.exec_ok(&argv);
    }

    /// Connects this namespace to `peer` with a veth pair and configures the addresses (CIDR
    /// notation, e.g. `192.0.2.1/24`, `2001:db8::1/64`) on each end. Returns the interface names
    /// (here, there). Use only documentation ranges: the namespaces have no other route.
    pub fn link(&self, peer: &Netns, here: &[&str], there: &[&str]) -> (String, String) {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let (a, b) = (
            format!("mcv{n}a{}", std::process::id() % 10000),
            format!("mcv{n}b{}", std::process::id() % 10000),
        );
        self.link_named(peer, &a, &b, here, there);
        (a, b)
    }

    /// Like [`Netns::link`], with chosen interface names (`here_dev` in this namespace,
    /// `there_dev` in `peer`). The ends are created directly inside their namespaces, so a name
    /// only has to be unique there: every pod of a parallel test can have its own `net0`.
    pub fn link_named(
        &self,
        peer: &Netns,
        here_dev: &str,
        there_dev: &str,
        here: &[&str],
        there: &[&str],
    ) {
        run_ok(Command::new("ip").args([
            "link", "add", here_dev, "netns", &self.name, "type", "veth", "peer", "name",
            there_dev, "netns", &peer.name,
        ]));
        for (ns, dev, addrs) in [(self, here_dev, here), (peer, there_dev, there)] {
            let mut batch: Vec<String> = addrs
                .iter()
                .map(|addr| {
                    // nodad: IPv6 addresses are usable at once instead of after duplicate
                    // detection.
                    let nodad = if addr.contains(':') { " nodad" } else { "" };
                    format!("addr add {addr} dev {dev}{nodad}")
                })
                .collect();
            batch.push(format!("link set {dev} up"));
            ns.ip_batch(&batch);
        }
    }

    /// Starts `argv` inside the namespace in the background as `uid`/`gid` (None: as root).
    /// The process is killed when the returned guard drops (and with the namespace).
    pub fn spawn(&self, argv: &[&str], user: Option<(u32, u32)>) -> Process {
        let mut full: Vec<String> = Vec::new();
        if let Some((uid, gid)) = user {
            full.extend(
                [
                    "setpriv",
                    "--reuid",
                    &uid.to_string(),
                    "--regid",
                    &gid.to_string(),
                    "--clear-groups",
                ]
                .map(String::from),
            );
        }
        full.extend(argv.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let child = self
            .command(&refs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        Process { child: Some(child) }
    }

    /// `iptables-save` (or another dump command) inside the namespace.
    pub fn dump(&self, argv: &[&str]) -> String {
        self.exec_ok(argv)
    }

    /// Everything netfilter holds in the namespace, for failure messages: `iptables-save` and
    /// `ip6tables-save` of both variants, `nft list ruleset`, and the policy routing state.
    /// A tool that fails contributes its error instead.
    pub fn dump_rulesets(&self) -> String {
        let mut text = String::new();
        for argv in [
            &["iptables-legacy-save"][..],
            &["ip6tables-legacy-save"],
            &["iptables-nft-save"],
            &["ip6tables-nft-save"],
            &["nft", "list", "ruleset"],
            &["ip", "rule"],
            &["ip", "-6", "rule"],
        ] {
            let out = self.exec(argv);
            text.push_str(&format!("### {} ({})\n", argv.join(" "), out.status));
            text.push_str(&String::from_utf8_lossy(&out.stdout));
            text.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        text
    }
}

/// A uid, a primary gid and optionally one supplementary group, as a probe's client runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub supplementary: Option<u32>,
}

impl User {
    /// `uid`/`gid` without supplementary groups.
    pub const fn new(uid: u32, gid: u32) -> User {
        User {
            uid,
            gid,
            supplementary: None,
        }
    }

    /// Sets this thread's (and only this thread's) credentials.
    fn become_on_this_thread(self) -> io::Result<()> {
        use nix::libc;
        let groups: Vec<libc::gid_t> = self.supplementary.into_iter().collect();
        let check = |rc: libc::c_long| {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // SAFETY: raw system calls with plain integer arguments and a pointer to `groups`,
        // which outlives the call.
        unsafe {
            check(libc::syscall(
                libc::SYS_setgroups,
                groups.len() as libc::c_long,
                groups.as_ptr(),
            ))?;
            let gid = self.gid as libc::c_long;
            check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
            let uid = self.uid as libc::c_long;
            check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
        }
        Ok(())
    }
}

impl std::fmt::Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)?;
        if let Some(g) = self.supplementary {
            write!(f, "+{g}")?;
        }
        Ok(())
    }
}

/// Joins a thread, re-raising its panic in the caller.
pub fn join<T>(handle: JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A background process in a namespace; killed on drop.
#[derive(Debug)]
pub struct Process {
    child: Option<std::process::Child>,
}

impl Process {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal (e.g. SIGTERM) without waiting.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal);
    }

    /// Waits for the process to exit and returns its output.
    pub fn wait(mut self) -> Output {
        self.child
            .take()
            .expect("running")
            .wait_with_output()
            .expect("wait")
    }

    /// Kills the process and returns what it printed.
    pub fn stop(mut self) -> Output {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        child.wait_with_output().expect("wait")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_namespace(&self.name);
    }
}

fn delete_namespace(name: &str) {
    // Kill what still runs inside, then remove the namespace.
    let _ = Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|out| {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        });
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Deletes `meshcap-*` namespaces whose creating process (the pid in the name) is gone.
pub fn remove_stale() {
    for name in list_namespaces() {
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(pid) = pid {
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
            if !alive {
                delete_namespace(&name);
            }
        }
    }
}

/// The names of the `meshcap-*` namespaces this process created that still exist.
pub fn own_namespaces() -> Vec<String> {
    let pid = std::process::id().to_string();
    list_namespaces()
        .into_iter()
        .filter(|name| {
            name.strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').nth(1))
                == Some(pid.as_str())
        })
        .collect()
}

/// The names of the `meshcap-*` namespaces that exist now.
pub fn list_namespaces() -> Vec<String> {
    match std::fs::read_dir("/var/run/netns") {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(PREFIX))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading /var/run/netns: {e}"),
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}
