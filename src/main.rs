//! The meshcap binary: dispatch on the program name and the first argument, then parse, build,
//! pick a backend, report.

use anyhow::Context;
use meshcap::backend::{self, Applied};
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
    let backend = backend::select(&config.run);
    if config.run.dry_run {
        print!("{}", backend.render(&plan));
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(ns) = &config.run.network_namespace {
        backend::enter_namespace(ns)?;
    }
    if mode == Mode::Diff {
        let diff = backend::drift(&*backend, &plan).context("reading the kernel's rules")?;
        if diff.is_empty() {
            println!("in sync: the kernel holds exactly the planned rules");
            return Ok(ExitCode::SUCCESS);
        }
        print!("{diff}");
        return Ok(ExitCode::from(EXIT_DRIFTED));
    }
    if config.run.cleanup_only {
        backend.clean(&plan).context("cleaning up")?;
        tracing::info!("removed meshcap's rules");
        return Ok(ExitCode::SUCCESS);
    }
    if config.run.skip_rule_apply {
        tracing::info!("--skip-rule-apply: no rules applied");
    } else {
        match backend.apply(&plan).context("applying rules")? {
            Applied::Installed => tracing::info!("rules installed"),
            Applied::AlreadyInPlace => tracing::info!("rules already in place; nothing changed"),
            Applied::Replaced => tracing::info!("rules of another configuration replaced"),
        }
    }
    if config.run.run_validation {
        if let Err(e) = validation::run(&validation::Validation::from(config)) {
            eprintln!("meshcap: validation failed: {e}");
            return Ok(ExitCode::from(validation::EXIT_VALIDATION_FAILED));
        }
    }
    Ok(ExitCode::SUCCESS)
}
