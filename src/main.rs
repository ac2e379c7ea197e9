//! The meshcap binary: parse, build, pick a backend, report.

use anyhow::Context;
use meshcap::backend::iptables::IptablesBackend;
use meshcap::backend::{Applied, Firewall};
use meshcap::cli::Inputs;
use meshcap::config::{BackendKind, Config, SystemHost};
use meshcap::validation;
use std::process::ExitCode;

fn main() -> ExitCode {
    // A plain level filter when MESHCAP_LOG is unset (or invalid): building an EnvFilter
    // showed in the start-up time every pod pays.
    match tracing_subscriber::EnvFilter::try_from_env("MESHCAP_LOG") {
        Ok(filter) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .without_time()
            .init(),
        Err(_) => tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::stderr)
            .without_time()
            .init(),
    }

    // Subcommands have their own flags; the installer keeps Istio's flat command line.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let subcommand = args.get(1).and_then(|a| a.to_str()).map(str::to_owned);
    let mode = match subcommand.as_deref() {
        Some("proxy") => return meshcap::proxy::main(args[1..].to_vec()),
        Some("explain") => return meshcap::explain::main(args[1..].to_vec()),
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

    let inputs = match Inputs::parse_from(args, std::env::vars().collect()) {
        Ok(inputs) => inputs,
        Err(e) => e.exit(),
    };
    let config = match Config::from_inputs(&inputs, &SystemHost) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("meshcap: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
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
    let backend: Box<dyn Firewall> = match config.run.backend {
        BackendKind::Iptables => Box::new(IptablesBackend {
            variant: config.run.iptables_variant,
            reconcile: config.run.reconcile,
            force_apply: config.run.force_apply,
        }),
        BackendKind::Nftables => Box::new(meshcap::backend::nftables::NftablesBackend),
    };
    if config.run.dry_run {
        print!("{}", backend.render(&plan));
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(ns) = &config.run.network_namespace {
        enter_namespace(ns)?;
    }
    if mode == Mode::Diff {
        let diff = backend
            .read_back(&plan)
            .context("reading the kernel's rules")?
            .diff(&backend.expected(&plan));
        for rule in &diff.missing {
            println!("missing: {rule}");
        }
        for rule in &diff.extra {
            println!("extra: {rule}");
        }
        for chain in &diff.reordered {
            println!("reordered: {chain}");
        }
        return Ok(if diff.is_empty() {
            println!("in sync: the kernel holds exactly the planned rules");
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_DRIFTED)
        });
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
        let c = &config.capture;
        let check = validation::Validation {
            capture_ports: vec![c.proxy_port, c.inbound_capture_port],
            probe_port: config.run.probe_port,
            ipv6: c.ipv6,
            timeout: config.run.probe_timeout,
            proxy_uid: c.proxy_uids[0],
            proxy_gid: c.proxy_gids[0],
        };
        if let Err(e) = validation::run(&check) {
            eprintln!("meshcap: validation failed: {e}");
            return Ok(ExitCode::from(validation::EXIT_VALIDATION_FAILED));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn enter_namespace(path: &std::path::Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", path.display()))?;
    Ok(())
}
