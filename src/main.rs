//! The meshcap binary: parse, build, pick a backend, report.

use anyhow::Context;
use meshcap::backend::iptables::IptablesBackend;
use meshcap::backend::{Applied, Firewall};
use meshcap::cli::Inputs;
use meshcap::config::{BackendKind, Config, SystemHost};
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHCAP_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();

    // Subcommands have their own flags; the installer keeps Istio's flat command line.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "proxy") {
        return meshcap::proxy::main(args[1..].to_vec());
    }

    let inputs = match Inputs::from_process() {
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
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshcap: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(config: &Config) -> anyhow::Result<()> {
    let plan = meshcap::plan::build(&config.capture);
    let backend: Box<dyn Firewall> = match config.run.backend {
        BackendKind::Iptables => Box::new(IptablesBackend {
            variant: config.run.iptables_variant,
            reconcile: config.run.reconcile,
            force_apply: config.run.force_apply,
        }),
        BackendKind::Nftables => {
            anyhow::bail!("the nftables backend is not available in this build")
        }
    };
    if config.run.dry_run {
        print!("{}", backend.render(&plan));
        return Ok(());
    }
    if let Some(ns) = &config.run.network_namespace {
        enter_namespace(ns)?;
    }
    if config.run.cleanup_only {
        backend.clean(&plan).context("cleaning up")?;
        tracing::info!("removed meshcap's rules");
        return Ok(());
    }
    if config.run.skip_rule_apply {
        tracing::info!("--skip-rule-apply: no rules applied");
        return Ok(());
    }
    match backend.apply(&plan).context("applying rules")? {
        Applied::Installed => tracing::info!("rules installed"),
        Applied::AlreadyInPlace => tracing::info!("rules already in place; nothing changed"),
        Applied::Replaced => tracing::info!("rules of another configuration replaced"),
    }
    Ok(())
}

fn enter_namespace(path: &std::path::Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", path.display()))?;
    Ok(())
}
