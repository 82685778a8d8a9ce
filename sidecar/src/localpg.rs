//! Throwaway local PostgreSQL clusters for the demo and the tests: initdb
//! once into a cached template, copy it per cluster, start on a free
//! 127.0.0.1 port, and stop and delete everything on drop. As root, the
//! server runs as the `postgres` user (Postgres refuses root).

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};

/// The database every cluster is created with.
pub const DATABASE: &str = "app";
/// The superuser every cluster is created with (trust on 127.0.0.1).
pub const SUPERUSER: &str = "postgres";

const SETTINGS: &str = "
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
# Throwaway clusters: checkpoint often rather than keep up to 1 GB of WAL
# each (a test run holds several clusters on a disk it shares with the build).
min_wal_size = 32MB
max_wal_size = 64MB
max_connections = 200
max_prepared_transactions = 20
logging_collector = off
";

/// Where the server binaries are and whom they run as.
#[derive(Clone)]
struct Binaries {
    dir: PathBuf,
    as_postgres: bool,
}

impl Binaries {
    fn find() -> anyhow::Result<Binaries> {
        let candidates = std::env::var_os("PG_BIN")
            .map(PathBuf::from)
            .into_iter()
            .chain((13..=18).rev().map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"))));
        for dir in candidates {
            if dir.join("initdb").exists() {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let as_postgres = unsafe { libc::geteuid() } == 0;
                return Ok(Binaries { dir, as_postgres });
            }
        }
        bail!("PostgreSQL server binaries not found (set PG_BIN, or apt-get install postgresql)")
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let path = self.dir.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(args).current_dir("/");
        let out = cmd.output().with_context(|| format!("cannot run {}", path.display()))?;
        if !out.status.success() {
            bail!(
                "{program} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    fn version(&self) -> String {
        self.dir.parent().and_then(|p| p.file_name()).map_or_else(|| "pg".into(), |v| v.to_string_lossy().into_owned())
    }

    /// Hands a path we created to the server's user.
    fn give(&self, path: &Path) -> anyhow::Result<()> {
        if self.as_postgres {
            let out = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).output()?;
            if !out.status.success() {
                bail!("chown {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }
}

/// Path of a PostgreSQL client or server program (psql, pgbench, ...).
pub fn tool(program: &str) -> anyhow::Result<PathBuf> {
    Ok(Binaries::find()?.dir.join(program))
}

/// A directory holding throwaway clusters; deleted when the last cluster
/// and the workspace itself are dropped.
#[derive(Clone)]
pub struct Workspace {
    root: Arc<tempfile::TempDir>,
    bin: Binaries,
    template: PathBuf,
}

impl Workspace {
    pub fn new() -> anyhow::Result<Workspace> {
        let bin = Binaries::find()?;
        let template = ensure_template(&bin)?;
        let root = tempfile::Builder::new().prefix("shardcar-pg-").tempdir()?;
        bin.give(root.path())?;
        Ok(Workspace { root: Arc::new(root), bin, template })
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// A new primary with the `app` database, started.
    pub fn primary(&self, name: &str) -> anyhow::Result<Cluster> {
        let dir = self.root.path().join(name);
        std::fs::create_dir(&dir)?;
        let data = dir.join("data");
        let status = Command::new("cp").arg("-a").arg(&self.template).arg(&data).status()?;
        if !status.success() {
            bail!("cannot copy the template cluster to {}", data.display());
        }
        self.bin.give(&dir)?;
        let mut cluster = self.cluster(name, dir)?;
        cluster.start()?;
        Ok(cluster)
    }

    /// A streaming replica of `primary` (pg_basebackup -R), started.
    pub fn replica(&self, primary: &Cluster, name: &str) -> anyhow::Result<Cluster> {
        let dir = self.root.path().join(name);
        std::fs::create_dir(&dir)?;
        self.bin.give(&dir)?;
        let data = dir.join("data");
        let port = primary.port.to_string();
        self.bin.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                SUPERUSER,
                "-D",
                &data.to_string_lossy(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        )?;
        let mut cluster = self.cluster(name, dir)?;
        cluster.start()?;
        Ok(cluster)
    }

    fn cluster(&self, name: &str, dir: PathBuf) -> anyhow::Result<Cluster> {
        let port = free_port()?;
        let data = dir.join("data");
        // Appended last, so it overrides the port a base backup copied.
        let conf = format!("{SETTINGS}port = {port}\n");
        let path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&conf);
        std::fs::write(&path, text)?;
        Ok(Cluster {
            name: name.to_string(),
            port,
            data,
            log: dir.join("server.log"),
            bin: self.bin.clone(),
            _root: self.root.clone(),
            running: false,
        })
    }
}

/// initdb once per machine and server version, cached in the temp dir.
fn ensure_template(bin: &Binaries) -> anyhow::Result<PathBuf> {
    let template = std::env::temp_dir().join(format!("shardcar-template-pg{}", bin.version()));
    if template.join("PG_VERSION").exists() && template.join("shardcar-ready").exists() {
        return Ok(template);
    }
    let staging = std::env::temp_dir().join(format!("shardcar-template-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging)?;
    bin.give(&staging)?;
    let data = staging.join("data");
    let data_s = data.to_string_lossy().to_string();
    bin.run("initdb", &["-D", &data_s, "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])?;
    // Create the app database in single-user mode: no server to start or stop.
    let mut single = if bin.as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.dir.join("postgres"));
        c
    } else {
        Command::new(bin.dir.join("postgres"))
    };
    let mut child = single
        .args(["--single", "-D", &data_s, "postgres"])
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        writeln!(stdin, "CREATE DATABASE {DATABASE}")?;
    }
    if !child.wait()?.success() {
        bail!("creating the template database failed");
    }
    std::fs::write(data.join("shardcar-ready"), "")?;
    if template.exists() && !template.join("shardcar-ready").exists() {
        // Left over from an interrupted run.
        let _ = std::fs::remove_dir_all(&template);
    }
    match std::fs::rename(&data, &template) {
        Ok(()) => {}
        // Another process made it first; use theirs.
        Err(_) if template.join("shardcar-ready").exists() => {}
        Err(e) => return Err(e).context("cannot move the template cluster into place"),
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(template)
}

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free 127.0.0.1 port not handed out before by this process.
pub fn free_port() -> anyhow::Result<u16> {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if handed.insert(port) {
            return Ok(port);
        }
    }
    bail!("no free port found")
}

/// The processes whose parent is `pid`, from /proc.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            // `pid (comm) state ppid ...`: the comm may hold spaces, not `)`.
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<i32>().ok())
                == Some(pid)
        })
        .collect()
}

/// One running (or stopped) local server.
pub struct Cluster {
    pub name: String,
    pub port: u16,
    pub data: PathBuf,
    pub log: PathBuf,
    bin: Binaries,
    _root: Arc<tempfile::TempDir>,
    running: bool,
}

impl Cluster {
    /// `postgres://postgres@127.0.0.1:<port>/app`
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let data = self.data.to_string_lossy().to_string();
        let log = self.log.to_string_lossy().to_string();
        self.bin
            .run("pg_ctl", &["-D", &data, "-l", &log, "-w", "-t", "60", "start"])
            .with_context(|| format!("starting {} (log: {log})", self.name))?;
        self.running = true;
        Ok(())
    }

    /// Stops the server at once (no checkpoint: these clusters are throwaway).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.running {
            let data = self.data.to_string_lossy().to_string();
            self.bin.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])?;
            self.running = false;
        }
        Ok(())
    }

    /// Kills the server and every process of it with SIGKILL, as a
    /// crashed machine would leave it (its clients' connections drop).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid"))?;
        let pid: i32 = pid_file.lines().next().unwrap_or_default().trim().parse()?;
        // Its children first: once it is gone they would be init's.
        for p in std::iter::once(pid).chain(children_of(pid)) {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        for _ in 0..200 {
            // Dead once gone, or a zombie its parent has not reaped yet.
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')')?.1.split_whitespace().next().map(str::to_string));
            if state.is_none_or(|s| s == "Z") {
                self.running = false;
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        bail!("{} (pid {pid}) did not die", self.name)
    }

    /// Promotes a replica to primary and waits until it is one.
    pub fn promote(&self) -> anyhow::Result<()> {
        let data = self.data.to_string_lossy().to_string();
        self.bin.run("pg_ctl", &["-D", &data, "-w", "-t", "60", "promote"])?;
        Ok(())
    }

    /// Turns TLS on with this certificate and key (PEM); with `client_ca`,
    /// client certificates signed by it are accepted (`cert` auth in
    /// pg_hba). Reloads the running server.
    pub fn enable_tls(&self, cert: &str, key: &str, client_ca: Option<&str>) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let file = |name: &str, text: &str| -> anyhow::Result<()> {
            let path = self.data.join(name);
            std::fs::write(&path, text)?;
            // Postgres refuses a key others can read.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            self.bin.give(&path)
        };
        file("server.crt", cert)?;
        file("server.key", key)?;
        let mut conf = String::from("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        if let Some(ca) = client_ca {
            file("client-ca.crt", ca)?;
            conf.push_str("ssl_ca_file = 'client-ca.crt'\n");
        }
        let path = self.data.join("postgresql.conf");
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(&path, text + &conf)?;
        self.reload()
    }

    /// Puts `rules` first in pg_hba.conf and reloads the server.
    pub fn prepend_hba(&self, rules: &str) -> anyhow::Result<()> {
        let path = self.data.join("pg_hba.conf");
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(&path, format!("{rules}\n{text}"))?;
        self.reload()
    }

    /// Reloads the configuration and waits until the server has read it.
    fn reload(&self) -> anyhow::Result<()> {
        const LOADED: &str = "SELECT pg_conf_load_time()";
        let before = self.psql(LOADED)?;
        let data = self.data.to_string_lossy().to_string();
        self.bin.run("pg_ctl", &["-D", &data, "reload"])?;
        for _ in 0..100 {
            if self.psql(LOADED)? != before {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("{} did not reload its configuration", self.name)
    }

    /// Runs SQL with psql against the `app` database; returns unaligned output.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let port = self.port.to_string();
        let out = self.bin.run(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                SUPERUSER,
                "-d",
                DATABASE,
                "-c",
                sql,
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("could not stop cluster {}: {e:#}", self.name);
        }
    }
}
