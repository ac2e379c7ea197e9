//! The meshcap binary: dispatch on the program name and the first word ([`FirstWord`], clap), then
//! parse, build, pick a backend, report.

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshcap::backend::Applied;
use meshcap::backend::session::{self, Namespace, Session, Waits};
use meshcap::config::Config;
use meshcap::{logging, validation};
use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let default_logging = || logging::init(&logging::Settings::default());
    // Runtimes execute a CNI plugin by its file name, with no arguments.
    if meshcap::cni::invoked_as_plugin(args.first()) {
        default_logging();
        return meshcap::cni::main();
    }
    // The first word picks the subcommand; each subcommand's own clap declaration parses the
    // rest (its first argument is the word itself, which names it in its usage line).
    let mode = match FirstWord::of(&args) {
        Some(Command::Proxy) => {
            default_logging();
            return meshcap::proxy::main(args[1..].to_vec());
        }
        Some(Command::Explain) => {
            default_logging();
            return meshcap::explain::main(args[1..].to_vec());
        }
        Some(Command::Trace) => {
            default_logging();
            return meshcap::trace::main(args[1..].to_vec());
        }
        Some(Command::Cni) => {
            default_logging();
            return meshcap::cni::install::main(args[1..].to_vec());
        }
        Some(Command::Ambient) => {
            default_logging();
            return meshcap::ambient::cli::main(args[1..].to_vec());
        }
        Some(Command::ValidationDial) => return validation::dial_main(args[1..].to_vec()),
        // The installer's flags after a word that says what to do with them.
        Some(Command::Diff) => {
            args.remove(1);
            Mode::Diff
        }
        Some(Command::IstioIptables) => {
            args.remove(1);
            Mode::Install
        }
        Some(Command::IstioCleanIptables) => {
            args.remove(1);
            Mode::Clean
        }
        None => Mode::Install,
    };

    let (mut config, log) = match meshcap::cli::installer_or_exit(args, std::env::vars().collect())
    {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    logging::init(&log.settings());
    if mode == Mode::Clean {
        config.run.cleanup_only = true;
    }
    match run(&config, mode) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshcap: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The first word of meshcap's command line. Only the word is parsed here: the arguments after
/// it go, as they were written, to the subcommand's own parser (or to the installer's), so that
/// each keeps its help text, its errors and its exit statuses.
#[derive(Parser)]
#[command(
    name = "meshcap",
    disable_help_flag = true,
    disable_version_flag = true,
    disable_help_subcommand = true,
    args_conflicts_with_subcommands = true
)]
struct FirstWord {
    #[command(subcommand)]
    command: Option<Command>,
    /// Any other first word (`-p`, `--help`, none) starts the installer's flat command line:
    /// Istio's istio-iptables flags, as Istio's injector writes them.
    #[arg(allow_hyphen_values = true)]
    installer: Option<OsString>,
}

#[derive(Subcommand, Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    /// `meshcap proxy`: the L4 proxy.
    Proxy,
    /// `meshcap explain`: what the rules do to a connection.
    Explain,
    /// `meshcap trace`: what the kernel did to packets.
    Trace,
    /// `meshcap cni install|uninstall`: the node installer of the CNI plugin.
    Cni,
    /// `meshcap ambient`: ambient mode's node agent and its commands.
    Ambient,
    /// The validation's dial, started by the installer inside the pod's namespace.
    #[command(name = validation::DIAL_SUBCOMMAND)]
    ValidationDial,
    /// The installer's flags, compared with what the kernel holds instead of applied.
    Diff,
    /// pilot-agent's subcommand words, which Istio's injector puts before the installer's flags.
    IstioIptables,
    IstioCleanIptables,
}

impl FirstWord {
    /// The subcommand `args` (the program name first) names, `None` for the installer.
    fn of(args: &[OsString]) -> Option<Command> {
        let word = &args[..args.len().min(2)];
        // The one positional takes any word that is not a subcommand, so this cannot fail; if
        // it did, the installer's parser would report the argument.
        FirstWord::try_parse_from(word).ok()?.command
    }
}

/// What the invocation asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Install the rules (Istio's istio-iptables).
    Install,
    /// Remove the rules (Istio's istio-clean-iptables, the installer's `--cleanup-only`).
    Clean,
    /// Compare the plan with what the kernel holds: exit 0 when equal, 3 when drifted.
    Diff,
}

/// Exit status of `meshcap diff` when the kernel's rules differ from the plan.
const EXIT_DRIFTED: u8 = 3;

fn run(config: &Config, mode: Mode) -> anyhow::Result<ExitCode> {
    let plan = meshcap::plan::build(&config.capture);
    if config.run.dry_run {
        print!("{}", session::render(&config.run, &plan));
        return Ok(ExitCode::SUCCESS);
    }
    let ns = match &config.run.network_namespace {
        Some(path) => Namespace::open(path)?,
        None => Namespace::current(),
    };
    // Istio's istio-iptables waits as long as the locks take; so does the installer.
    let session = Session::open(ns, &config.run, plan, Waits::default())?;
    if mode == Mode::Diff {
        let diff = session.drift().context("reading the kernel's rules")?;
        if diff.is_empty() {
            println!("in sync: the kernel holds exactly the planned rules");
            return Ok(ExitCode::SUCCESS);
        }
        print!("{diff}");
        return Ok(ExitCode::from(EXIT_DRIFTED));
    }
    if config.run.cleanup_only {
        session.clean().context("cleaning up")?;
        tracing::info!("removed meshcap's rules");
        return Ok(ExitCode::SUCCESS);
    }
    if config.run.skip_rule_apply {
        tracing::info!("--skip-rule-apply: no rules applied");
    } else {
        match session.apply().context("applying rules")? {
            Applied::Installed => tracing::info!("rules installed"),
            Applied::AlreadyInPlace => tracing::info!("rules already in place; nothing changed"),
            Applied::Replaced => tracing::info!("rules of another configuration replaced"),
        }
    }
    if config.run.run_validation {
        let validation = validation::Validation::from(config);
        if let Err(e) = session.namespace().run(|| validation::run(&validation))? {
            eprintln!("meshcap: validation failed: {e}");
            return Ok(ExitCode::from(validation::EXIT_VALIDATION_FAILED));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_word(args: &[&str]) -> Option<Command> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        FirstWord::of(&args)
    }

    #[test]
    fn each_word_names_its_subcommand() {
        let words = [
            ("proxy", Command::Proxy),
            ("explain", Command::Explain),
            ("trace", Command::Trace),
            ("cni", Command::Cni),
            ("ambient", Command::Ambient),
            (validation::DIAL_SUBCOMMAND, Command::ValidationDial),
            ("diff", Command::Diff),
            ("istio-iptables", Command::IstioIptables),
            ("istio-clean-iptables", Command::IstioCleanIptables),
        ];
        for (word, command) in words {
            assert_eq!(
                first_word(&["meshcap", word, "--help"]),
                Some(command),
                "{word}"
            );
        }
    }

    #[test]
    fn anything_else_is_the_installers_command_line() {
        for args in [
            &["meshcap"][..],
            &["meshcap", "-p", "15001"],
            &["meshcap", "--help"],
            &["meshcap", "-h"],
            &["meshcap", "--version"],
            &["meshcap", "help"],
            &["meshcap", "--"],
            &["meshcap", ""],
            &["meshcap", "Proxy"],
            &["meshcap", "prox"],
            &["meshcap", "--dry-run", "diff"],
        ] {
            assert_eq!(first_word(args), None, "{args:?}");
        }
        use std::os::unix::ffi::OsStrExt;
        let not_utf8 = OsString::from(std::ffi::OsStr::from_bytes(b"\xff"));
        assert_eq!(FirstWord::of(&["meshcap".into(), not_utf8]), None);
    }
}
