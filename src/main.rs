//! The meshcap binary: dispatch on the program name and the first argument, then parse, build,
//! pick a backend, report.

use anyhow::Context;
use meshcap::backend::{self, Applied};
use meshcap::config::Config;
use meshcap::validation;
use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    // A plain level filter when MESHCAP_LOG is unset (or invalid): an EnvFilter is costly to
    // build, and every pod start pays for it.
    // Colours only for a person: runtimes keep a CNI plugin's stderr in their logs.
    let ansi = std::io::stderr().is_terminal();
    match tracing_subscriber::EnvFilter::try_from_env("MESHCAP_LOG") {
        Ok(filter) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .without_time()
            .init(),
        Err(_) => tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .without_time()
            .init(),
    }

    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Runtimes execute a CNI plugin by its file name, with no arguments.
    if meshcap::cni::invoked_as_plugin(args.first()) {
        return meshcap::cni::main();
    }
    // Subcommands have their own flags; the installer keeps Istio's flat command line.
    let subcommand = args.get(1).and_then(|a| a.to_str()).map(str::to_owned);
    let mode = match subcommand.as_deref() {
        Some("proxy") => return meshcap::proxy::main(args[1..].to_vec()),
        Some("explain") => return meshcap::explain::main(args[1..].to_vec()),
        Some("trace") => return meshcap::trace::main(args[1..].to_vec()),
        Some("ambient") => return meshcap::ambient::cli::main(args[1..].to_vec()),
        Some("cni") => return meshcap::cni::install::main(args[1..].to_vec()),
        Some(validation::DIAL_SUBCOMMAND) if args.len() == 4 => {
            let (local, probe) = (args[2].to_string_lossy(), args[3].to_string_lossy());
            return match validation::dial(&local, &probe) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            };
        }
        // `meshcap diff FLAGS…`: the installer's flags, compared instead of applied.
        Some("diff") => {
            args.remove(1);
            Mode::Diff
        }
        _ => Mode::Install,
    };

    let config = match meshcap::cli::config_or_exit(args, std::env::vars().collect()) {
        Ok(config) => config,
        Err(code) => return code,
    };
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
