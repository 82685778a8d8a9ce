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
    /// Show where a statement would go, and why: its facts, keys, decision
    /// and the plugin that made it. Loads the config's plugins; runs nothing.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// The statement.
        sql: String,
        /// A value for $1, $2, ... (as text), in order.
        #[arg(long = "param")]
        params: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Start throwaway local Postgres shards (3 primaries, 1 replica) with a
    /// sample schema, routing plugins, shardcar in front, a skewed workload
    /// and the dashboard. Ctrl-C stops and cleans up.
    Demo {
        /// Port for clients.
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Port for the admin HTTP listener and the dashboard.
        #[arg(long, default_value_t = 9930)]
        admin_port: u16,
        /// Workload operations per second (0: no workload).
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
    },
    /// Write, build and test a routing policy of your own (Rust, Python or
    /// JavaScript), offline.
    Plugin {
        #[command(subcommand)]
        action: PluginCommand,
    },
    /// Run a Zipf-skewed mix of reads, writes and transactions against the
    /// demo schema through a running shardcar; print what ran and the keys
    /// used most (exact counts).
    BenchLoad {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 6432)]
        port: u16,
        #[arg(long, default_value = "app")]
        user: String,
        #[arg(long, default_value = "app", env = "PGPASSWORD")]
        password: String,
        #[arg(long, default_value = "app")]
        dbname: String,
        /// Concurrent client connections.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Operations per second over all clients (0: as fast as they go).
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Seconds to run (default: until Ctrl-C).
        #[arg(long)]
        seconds: Option<f64>,
        /// Customers 1..=N, seeded when missing; customer N is the N-th most used.
        #[arg(long, default_value_t = 2000)]
        customers: u64,
        /// Zipf exponent of customer (and tenant) popularity; 0 is uniform.
        #[arg(long, default_value_t = 1.3)]
        zipf: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a ready project: the built-in `hash` policy in that language,
    /// its SDK and the contract, test cases, and a README.
    New {
        #[arg(long)]
        lang: shardcar::authoring::Language,
        name: String,
        /// Where the project's directory goes.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build the project's component (`<name>.wasm`, beside its cases) with
    /// its language's tool; installs nothing.
    Build {
        #[arg(default_value = ".")]
        project: PathBuf,
    },
    /// Run the project's test cases against its component, offline; with
    /// `--same-as`, also route generated keys through it and a built-in and
    /// fail on any difference.
    Test {
        #[arg(default_value = ".")]
        project: PathBuf,
        /// A built-in plugin that must route every key the same way.
        #[arg(long)]
        same_as: Option<String>,
        /// How many keys `--same-as` tries (a quarter of them text).
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
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
        Command::Check { config } => match load(&config) {
            Some(cfg) => {
                // Plugins are loaded and initialized with their config, and
                // their own test cases run, as `run` would.
                let plugins = runtime().and_then(|rt| {
                    rt.block_on(async {
                        let router = router(&cfg)?;
                        shardcar::policy::reload::check_all(&router).await
                    })
                });
                if let Err(e) = plugins {
                    eprintln!("{}: {e:#}", config.display());
                    return ExitCode::FAILURE;
                }
                let replicas: usize = cfg.shards.iter().map(|s| s.replicas.len()).sum();
                let policies = cfg.policies.len();
                println!(
                    "{}: OK ({} shard(s), {replicas} replica(s), {} user(s), {policies} {})",
                    config.display(),
                    cfg.shards.len(),
                    cfg.users.len(),
                    if policies == 1 { "policy" } else { "policies" }
                );
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        },
        Command::Run { config } => {
            let Some(cfg) = load(&config) else { return ExitCode::FAILURE };
            report(runtime_with(cfg.listen.threads).and_then(|rt| rt.block_on(shardcar::server::run(cfg))))
        }
        Command::Explain { config, sql, params, json } => {
            let Some(cfg) = load(&config) else { return ExitCode::FAILURE };
            report(runtime().and_then(|rt| rt.block_on(explain(cfg, sql, params, json))))
        }
        Command::Demo { port, admin_port, rate } => {
            let demo = shardcar::demo::Demo { port, admin_port, rate };
            report(runtime().and_then(|rt| rt.block_on(shardcar::demo::run(demo))))
        }
        Command::Plugin { action } => report(plugin(action)),
        Command::BenchLoad { host, port, user, password, dbname, clients, rate, seconds, customers, zipf, json } => {
            let duration = match seconds.map(std::time::Duration::try_from_secs_f64) {
                Some(Err(_)) => {
                    eprintln!("--seconds must be a positive number");
                    return ExitCode::FAILURE;
                }
                Some(Ok(d)) => Some(d),
                None => None,
            };
            let opts = shardcar::workload::Options {
                host,
                port,
                user,
                password,
                dbname,
                clients,
                rate,
                duration,
                customers,
                zipf,
            };
            report(runtime().and_then(|rt| rt.block_on(bench_load(opts, json))))
        }
    }
}

fn plugin(action: PluginCommand) -> anyhow::Result<()> {
    use shardcar::authoring::{Project, scaffold, toolchain, trial};
    match action {
        PluginCommand::New { lang, name, dir } => {
            let at = scaffold::create(&dir, &name, lang)?;
            println!("wrote {} (see its README.md)", at.display());
        }
        PluginCommand::Build { project } => {
            let built = toolchain::build(&Project::open(&project)?)?;
            let size = std::fs::metadata(&built).map(|m| m.len()).unwrap_or(0);
            println!("built {} ({:.2} MB)", built.display(), size as f64 / 1e6);
        }
        PluginCommand::Test { project, same_as, keys } => {
            let project = Project::open(&project)?;
            let tested = runtime()?.block_on(trial::test(&project, same_as.as_deref(), keys))?;
            println!("{}: {} test case(s) passed", project.name, tested.cases);
            if let Some(c) = tested.compared {
                println!(
                    "{}: routes {} keys ({} integers, {} texts) as `{}` does; a statement routed by it in {:.0?} (median), {:.0?} (p99)",
                    project.name,
                    c.integers + c.texts,
                    c.integers,
                    c.texts,
                    c.reference,
                    c.p50,
                    c.p99
                );
            }
        }
    }
    Ok(())
}

/// The router as the sidecar builds it, for commands that route without
/// serving (its pools connect only when routing needs a directory or catalog).
fn router(cfg: &Config) -> anyhow::Result<shardcar::policy::Router> {
    let metrics = std::sync::Arc::new(shardcar::metrics::Metrics::new());
    let topology = std::sync::Arc::new(shardcar::topology::Topology::new(cfg));
    let pools = shardcar::pool::Pools::new(cfg, topology, &metrics)?;
    shardcar::policy::Router::new(cfg, &pools, &metrics)
}

async fn explain(cfg: Config, sql: String, params: Vec<String>, json: bool) -> anyhow::Result<()> {
    let planner = shardcar::route::Planner::new(std::sync::Arc::new(router(&cfg)?));
    let facts = std::sync::Arc::new(shardcar::classify::classify(&sql));
    let params = params.into_iter().map(Some).collect();
    let explanation = shardcar::route::explain::explain(&planner, facts, params, cfg.routing.read_replicas).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{}", shardcar::route::explain::render(&explanation));
    }
    Ok(())
}

async fn bench_load(opts: shardcar::workload::Options, json: bool) -> anyhow::Result<()> {
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = shardcar::workload::run(opts, stop).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(())
}

/// The config at `path`, or every problem with it printed.
fn load(path: &std::path::Path) -> Option<Config> {
    match Config::load(path) {
        Ok(cfg) => Some(cfg),
        Err(invalid) => {
            for problem in &invalid.0 {
                eprintln!("{}: {problem}", path.display());
            }
            None
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// The runtime serving clients: `listen.threads` workers; 0 (the default)
/// takes half the CPUs this process may run on, at least one. A sidecar
/// shares its machine with the application it serves (and, on a small
/// box, with Postgres): on two cores one worker thread costs less CPU per
/// statement than two (fewer wakeups and cross-thread handoffs; see the
/// README's benchmark), and on larger machines it still scales.
fn runtime_with(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() / 2).max(1),
        n => n,
    };
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?)
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
