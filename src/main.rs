//! The meshcap binary: dispatch on the program name and the first argument, then parse, build,
//! pick a backend, report.

use anyhow::Context;
use meshcap::backend::Applied;
use meshcap::backend::session::{self, Namespace, Session, Waits};
use meshcap::config::Config;
use meshcap::{logging, validation};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let default_logging = || logging::init(&logging::Settings::default());
    // Runtimes execute a CNI plugin by its file name, with no arguments.
    if meshcap::cni::invoked_as_plugin(args.first()) {
        default_logging();
        return meshcap::cni::main();
    }
    // Subcommands have their own flags; the installer keeps Istio's flat command line, also
    // behind pilot-agent's subcommand words, which Istio's injector puts first in its args.
    let subcommand = args.get(1).and_then(|a| a.to_str()).map(str::to_owned);
    let mode = match subcommand.as_deref() {
        Some("proxy") => {
            default_logging();
            return meshcap::proxy::main(args[1..].to_vec());
        }
        Some("explain") => {
            default_logging();
            return meshcap::explain::main(args[1..].to_vec());
        }
        Some("trace") => {
            default_logging();
            return meshcap::trace::main(args[1..].to_vec());
        }
        Some("cni") => {
            default_logging();
            return meshcap::cni::install::main(args[1..].to_vec());
        }
        Some("ambient") => {
            default_logging();
            return meshcap::ambient::cli::main(args[1..].to_vec());
        }
        Some(validation::DIAL_SUBCOMMAND) => return validation::dial_main(args[1..].to_vec()),
        // `meshcap diff FLAGS…`: the installer's flags, compared instead of applied.
        Some("diff") => {
            args.remove(1);
            Mode::Diff
        }
        Some("istio-iptables") => {
            args.remove(1);
            Mode::Install
        }
        Some("istio-clean-iptables") => {
            args.remove(1);
            Mode::Clean
        }
        _ => Mode::Install,
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
