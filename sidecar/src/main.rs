use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shardcar::config::Config;

/// shardcar: sharded PostgreSQL behind one localhost address.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print every problem with its field path.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start throwaway local Postgres shards (2 primaries, 1 replica) with a
    /// sample schema, and shardcar in front of them. Ctrl-C stops and cleans up.
    Demo {
        /// Port for clients.
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Port for the admin HTTP listener.
        #[arg(long, default_value_t = 9930)]
        admin_port: u16,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SHARDCAR_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    shardcar::panics::install_hook();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(cfg) => {
                let replicas: usize = cfg.shards.iter().map(|s| s.replicas.len()).sum();
                println!(
                    "{}: OK ({} shard(s), {replicas} replica(s), {} user(s))",
                    config.display(),
                    cfg.shards.len(),
                    cfg.users.len()
                );
                ExitCode::SUCCESS
            }
            Err(invalid) => {
                for problem in &invalid.0 {
                    eprintln!("{}: {problem}", config.display());
                }
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(cfg) => cfg,
                Err(invalid) => {
                    for problem in &invalid.0 {
                        eprintln!("{}: {problem}", config.display());
                    }
                    return ExitCode::FAILURE;
                }
            };
            report(runtime().and_then(|rt| rt.block_on(shardcar::server::run(cfg))))
        }
        Command::Demo { port, admin_port } => {
            report(runtime().and_then(|rt| rt.block_on(shardcar::demo::run(port, admin_port))))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardcar: {e:#}");
            ExitCode::FAILURE
        }
    }
}
