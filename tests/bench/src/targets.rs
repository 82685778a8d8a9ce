//! What pgbench runs against: Postgres itself, PgBouncer, shardcar (one
//! shard, or two with the hash plugin) and PgCat, each started here with
//! the same pool size.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shardcar::localpg::{self, Cluster};

pub struct Target {
    pub name: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    /// Supports `pgbench -M prepared` (named statements) in transaction mode.
    pub prepared: bool,
    child: Option<Child>,
}

impl Target {
    /// The serving process: the one started, or its child when it was
    /// started through `runuser` (PgBouncer as `postgres`).
    pub fn pid(&self) -> Option<u32> {
        let pid = self.child.as_ref().map(Child::id)?;
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        Some(children.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(pid))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Killing `runuser` would leave PgBouncer running: stop the server itself first.
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn direct(cluster: &Cluster) -> Target {
    Target {
        name: "direct".into(),
        port: cluster.port,
        user: localpg::SUPERUSER.into(),
        password: None,
        prepared: true,
        child: None,
    }
}

/// PgBouncer from the Debian package, transaction pooling, run as `postgres`.
pub fn pgbouncer(dir: &Path, cluster: &Cluster, pool: usize) -> anyhow::Result<Target> {
    let version = Command::new("pgbouncer").arg("--version").output().context("pgbouncer is not installed")?;
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    // Prepared statements in transaction mode came with 1.21.
    let prepared = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            Some((parts.next()?, parts.next()?))
        })
        .is_some_and(|(major, minor)| (major, minor) >= (1, 21));
    let port = localpg::free_port()?;
    let ini = dir.join("pgbouncer.ini");
    let mut text = format!(
        "[databases]\napp = host=127.0.0.1 port={} dbname={} user={}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
         listen_port = {port}\nunix_socket_dir =\nauth_type = any\npool_mode = transaction\n\
         default_pool_size = {pool}\nmax_client_conn = 2000\nignore_startup_parameters = extra_float_digits,options\n\
         server_tls_sslmode = disable\nlogfile = {}\n",
        cluster.port,
        localpg::DATABASE,
        localpg::SUPERUSER,
        dir.join("pgbouncer.log").display()
    );
    if prepared {
        text.push_str("max_prepared_statements = 200\n");
    }
    std::fs::write(&ini, text)?;
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        // PgBouncer refuses to run as root.
        chown_postgres(dir)?;
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "pgbouncer"]);
        c
    } else {
        Command::new("pgbouncer")
    };
    let child = cmd.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("start pgbouncer")?;
    let target = Target {
        name: format!("pgbouncer {}", version.split_whitespace().nth(1).unwrap_or("?")),
        port,
        user: localpg::SUPERUSER.into(),
        password: None,
        prepared,
        child: Some(child),
    };
    wait_for(port, &target.name)?;
    Ok(target)
}

/// shardcar with `threads` worker threads in front of `shards`, pgbench's
/// tables routed by the hash plugin (accounts by aid, and so on): with one
/// shard every statement still goes through parsing and the plugin.
/// `url_query` is appended to every shard URL (`?sslmode=require` for the
/// TLS runs).
pub fn shardcar(
    bin: &Path,
    dir: &Path,
    name: &str,
    shards: &[&Cluster],
    url_query: &str,
    pool: usize,
    threads: usize,
) -> anyhow::Result<Target> {
    let port = localpg::free_port()?;
    let admin = localpg::free_port()?;
    let mut config = format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin}\"\nmax_client_connections = 2000\nthreads = {threads}\n\n\
         [[users]]\nname = \"app\"\npassword = \"bench\"\n\n[pool]\nsize = {pool}\n\n"
    );
    // Like PgCat's prepared-statement cache (on in its target below), the
    // unnamed statement is not parsed again on a server that holds it.
    config.push_str("reuse_unnamed_statements = true\n\n");
    let names: Vec<String> = (0..shards.len()).map(|i| format!("s{i}")).collect();
    for (name, shard) in names.iter().zip(shards) {
        config.push_str(&format!("[[shards]]\nname = \"{name}\"\nprimary = \"{}{url_query}\"\n\n", shard.url()));
    }
    config.push_str("[routing]\ndefault_shard = \"s0\"\nread_replicas = false\n\n");
    let list = names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
    config
        .push_str(&format!("[[policies]]\nname = \"hashed\"\nplugin = \"hash\"\nconfig = {{ shards = [{list}] }}\n\n"));
    let tables = [
        ("pgbench_accounts", "aid"),
        ("pgbench_branches", "bid"),
        ("pgbench_tellers", "tid"),
        (crate::copy::TABLE, "id"),
    ];
    for (table, key) in tables {
        config.push_str(&format!("[[tables]]\nname = \"{table}\"\nkey = \"{key}\"\npolicy = \"hashed\"\n\n"));
    }
    let path = dir.join(format!("{}.toml", name.replace(' ', "-")));
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(dir.join(format!("{}.log", name.replace(' ', "-"))))?;
    let child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&path)
        .env("SHARDCAR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let target = Target {
        name: name.into(),
        port,
        user: "app".into(),
        password: Some("bench".into()),
        prepared: true,
        child: Some(child),
    };
    wait_for(port, name)?;
    Ok(target)
}

/// PgCat refuses clients without a password: its pool user has one, and
/// logs in to the shard as the superuser (the test clusters trust it).
const PGCAT_PASSWORD: &str = "bench";

/// PgCat (`PGCAT_BIN`), transaction mode, the same pool size.
pub fn pgcat(bin: &Path, dir: &Path, cluster: &Cluster, pool: usize) -> anyhow::Result<Target> {
    let port = localpg::free_port()?;
    let admin_password = "bench-admin";
    let config = format!(
        "[general]\nhost = \"127.0.0.1\"\nport = {port}\nadmin_username = \"admin\"\nadmin_password = \"{admin_password}\"\n\n\
         [pools.app]\npool_mode = \"transaction\"\nprepared_statements_cache_size = 500\n\n\
         [pools.app.users.0]\nusername = \"app\"\npassword = \"{password}\"\nserver_username = \"{user}\"\n\
         server_password = \"{user}\"\npool_size = {pool}\n\n\
         [pools.app.shards.0]\nservers = [[\"127.0.0.1\", {pg}, \"primary\"]]\ndatabase = \"{db}\"\n",
        user = localpg::SUPERUSER,
        password = PGCAT_PASSWORD,
        pg = cluster.port,
        db = localpg::DATABASE,
    );
    let path = dir.join("pgcat.toml");
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(dir.join("pgcat.log"))?;
    let child = Command::new(bin).arg(&path).stdout(Stdio::null()).stderr(log).spawn().context("start pgcat")?;
    let target = Target {
        name: "pgcat".into(),
        port,
        user: "app".into(),
        password: Some(PGCAT_PASSWORD.into()),
        prepared: true,
        child: Some(child),
    };
    wait_for(port, "pgcat")?;
    Ok(target)
}

fn chown_postgres(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown").args(["-R", "postgres"]).arg(dir).status()?;
    if !status.success() {
        bail!("cannot give {} to the postgres user", dir.display());
    }
    Ok(())
}

fn wait_for(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not start listening on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The release shardcar binary next to this one (built by tests/bench/run.sh).
pub fn shardcar_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("shardcar");
    if !bin.exists() {
        bail!("{} is missing: build it first (cargo build --release -p shardcar)", bin.display());
    }
    Ok(bin)
}
