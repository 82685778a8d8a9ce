//! Real parts for end-to-end tests: Postgres clusters started here (shared
//! by the tests of this binary, or owned by one test that breaks them), the
//! real `shardcar` binary, and real clients.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use shardcar::localpg::{self, Cluster, Workspace};
use tokio_postgres::{Client, NoTls};

/// Two shards; s0 has a streaming replica.
pub struct Fleet {
    pub s0: Cluster,
    pub s0_replica: Cluster,
    pub s1: Cluster,
}

impl Fleet {
    /// A fleet of this test's own, stopped and removed when dropped.
    pub fn new() -> Fleet {
        let ws = Workspace::new().expect("workspace for local clusters");
        let s0 = ws.primary("s0").expect("start s0");
        let s1 = ws.primary("s1").expect("start s1");
        let s0_replica = ws.replica(&s0, "s0-replica").expect("start s0's replica");
        Fleet { s0, s0_replica, s1 }
    }

    /// The fleet shared by all tests in this binary; stopped at process exit.
    pub fn shared() -> &'static Fleet {
        static FLEET: OnceLock<&'static Fleet> = OnceLock::new();
        FLEET.get_or_init(|| {
            let fleet: &'static Fleet = Box::leak(Box::new(Fleet::new()));
            *SHARED.lock().unwrap() = Some(fleet);
            // SAFETY: registering a plain extern "C" function has no preconditions.
            unsafe { libc::atexit(stop_shared) };
            fleet
        })
    }

    /// A config for this fleet with `extra` TOML appended (policies, tables).
    pub fn config_with(&self, pool_size: usize, extra: &str) -> String {
        format!("{}\n{extra}\n", self.config(pool_size))
    }

    /// A config whose table `t` is sharded by `customer_id` with the `hash`
    /// plugin over s0 and s1 (policy `by-customer`), with `extra` appended.
    pub fn hashed_config(&self, t: &str, extra: &str) -> String {
        self.config_with(4, &format!("{}\n{extra}\n", hashed_tables(&[(t, "customer_id")])))
    }

    /// A new table `(customer_id bigint, note text)` on both shards.
    pub async fn hashed_table(&self, prefix: &str) -> String {
        let t = table(prefix);
        for shard in [&self.s0, &self.s1] {
            let create = format!("CREATE TABLE {t} (customer_id bigint, note text)");
            direct(shard).await.batch_execute(&create).await.unwrap();
        }
        t
    }

    /// A config for this fleet that sends plain reads to s0's replica.
    pub fn config_reading_replicas(&self, pool_size: usize) -> String {
        self.config(pool_size).replace("read_replicas = false", "read_replicas = true")
    }

    /// A config for this fleet, every statement on a primary (so tests read
    /// their own writes at once).
    pub fn config(&self, pool_size: usize) -> String {
        format!(
            r#"
[listen]
addr = "127.0.0.1:{{PORT}}"
admin = "127.0.0.1:{{ADMIN}}"

[[users]]
name = "app"
password = "secret"

[[users]]
name = "md5user"
password = "md5secret"
auth = "md5"

[[users]]
name = "plain"
password = "plainsecret"
auth = "password"

[[users]]
name = "local"
trust = true

[pool]
size = {pool_size}
checkout_timeout_ms = 2000
health_check_interval_ms = 200

# The test binary's wasmtime is a debug build, on a 2-core box running
# the suite in parallel: a 500,000-key COPY once met the product's 10 ms
# CPU limit in one hash-plugin call. Tests of the limit set their own.
[plugins]
cache_dir = "{cache}"
call_timeout_ms = 100

[[shards]]
name = "s0"
primary = "{}"
replicas = ["{}"]

[[shards]]
name = "s1"
primary = "{}"

[routing]
default_shard = "s0"
read_replicas = false
"#,
            self.s0.url(),
            self.s0_replica.url(),
            self.s1.url(),
            cache = plugin_cache().display(),
        )
    }
}

/// TOML for a third shard `s2` on `cluster` (a test's own).
pub fn third_shard(cluster: &Cluster) -> String {
    format!("[[shards]]\nname = \"s2\"\nprimary = \"{}\"\n", cluster.url())
}

/// TOML for policy `by-customer` (the `hash` plugin over s0 and s1) and
/// `tables` (name, key column) routed by it.
pub fn hashed_tables(tables: &[(&str, &str)]) -> String {
    let mut toml = String::from(
        "[[policies]]\nname = \"by-customer\"\nplugin = \"hash\"\nconfig = { shards = [\"s0\", \"s1\"] }\n",
    );
    for (t, key) in tables {
        toml.push_str(&format!("\n[[tables]]\nname = \"{t}\"\nkey = \"{key}\"\npolicy = \"by-customer\"\n"));
    }
    toml
}

/// `config` with transactions across shards on.
pub fn two_phase(config: &str) -> String {
    config.replace("read_replicas = false", "read_replicas = false\ntwo_phase_commit = true")
}

static SHARED: Mutex<Option<&'static Fleet>> = Mutex::new(None);

/// Compiled plugins, shared by every sidecar the tests start (compiling is
/// the slow part of loading a plugin in a debug build).
pub fn plugin_cache() -> PathBuf {
    std::env::temp_dir().join("shardcar-test-plugin-cache")
}

extern "C" fn stop_shared() {
    let fleet = SHARED.lock().ok().and_then(|mut f| f.take());
    if let Some(fleet) = fleet {
        // The leaked fleet is dropped in place: stops the servers, removes the files.
        let fleet = fleet as *const Fleet as *mut Fleet;
        // SAFETY: the pointer came from Box::leak and nothing uses it after exit starts.
        drop(unsafe { Box::from_raw(fleet) });
    }
}

/// A running `shardcar run` process.
pub struct Sidecar {
    /// Taken when a test stops the process itself.
    child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts the real binary with `config` (`{PORT}`/`{ADMIN}` filled in)
    /// and waits until it accepts connections.
    pub fn start(config: &str) -> Sidecar {
        Sidecar::start_with_env(config, &[])
    }

    /// Starts it with extra environment variables (`OTEL_*`).
    pub fn start_with_env(config: &str, env: &[(&str, String)]) -> Sidecar {
        let port = localpg::free_port().unwrap();
        let admin_port = localpg::free_port().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shardcar.toml");
        let config = config.replace("{PORT}", &port.to_string()).replace("{ADMIN}", &admin_port.to_string());
        std::fs::write(&path, config).unwrap();
        let log = dir.path().join("shardcar.log");
        let child = Command::new(env!("CARGO_BIN_EXE_shardcar"))
            .args(["run", "--config"])
            .arg(&path)
            .env("SHARDCAR_LOG", "shardcar=trace,info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn shardcar");
        let sidecar = Sidecar { child: Some(child), port, admin_port, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "shardcar did not start:\n{}", sidecar.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        sidecar
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` (SIGTERM, SIGKILL) and waits for the process to exit;
    /// true when it exited with status 0.
    pub async fn signal_and_wait(mut self, signal: i32) -> bool {
        let Some(mut child) = self.child.take() else { return false };
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        tokio::task::spawn_blocking(move || child.wait().map(|s| s.success()).unwrap_or(false)).await.unwrap()
    }

    /// The process's resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Connection string for tokio-postgres.
    pub fn conninfo(&self, user: &str, password: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} password={password} dbname=app", self.port)
    }

    /// A tokio-postgres client as user `app`.
    pub async fn connect(&self) -> Client {
        self.connect_as("app", "secret").await.expect("connect to shardcar")
    }

    pub async fn connect_as(&self, user: &str, password: &str) -> Result<Client, tokio_postgres::Error> {
        connect(&self.conninfo(user, password)).await
    }

    /// Environment for psql/pgbench to reach the sidecar.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", "127.0.0.1".into()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", "app".into()),
            ("PGPASSWORD", "secret".into()),
            ("PGDATABASE", "app".into()),
        ]
    }

    /// GET on the admin listener: (status code, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = self.admin_request("GET", path, &[]);
        (status, body)
    }

    /// A request to the admin listener: (status code, head, body).
    pub fn admin_request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        http_request(self.admin_port, method, path, headers)
    }

    /// A JSON answer of the admin API, as its shared type (so its shape is checked).
    pub fn admin_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        admin_json(self.admin_port, path)
    }
}

/// An HTTP/1.1 request to 127.0.0.1:`port`: (status code, head, body).
pub fn http_request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (status, head.to_string(), body.to_string())
}

/// A JSON answer of the admin API on `port`, as its shared type.
pub fn admin_json<T: serde::de::DeserializeOwned>(port: u16, path: &str) -> T {
    let (status, _, body) = http_request(port, "GET", path, &[]);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}\n{body}"))
}

/// A running `shardcar demo` (README command 1), as a user starts it.
pub struct Demo {
    child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    /// Printed by the banner.
    pub banner: String,
    pub config: PathBuf,
    /// Each shard's primary port, by shard name.
    pub primaries: Vec<(String, u16)>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// Starts the demo (`extra` arguments, e.g. `--rate 0`) and waits for its banner.
    pub async fn start(extra: &[&str]) -> Demo {
        use std::io::{BufRead, BufReader};
        let port = localpg::free_port().unwrap();
        let admin_port = localpg::free_port().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("demo.err");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardcar"))
            .args(["demo", "--port", &port.to_string(), "--admin-port", &admin_port.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let banner = tokio::task::spawn_blocking(move || {
            let mut text = String::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                text.push_str(&line);
                text.push('\n');
                if line.starts_with("Ctrl-C") {
                    break;
                }
            }
            text
        });
        let banner = tokio::time::timeout(Duration::from_secs(180), banner).await.expect("the demo starts").unwrap();
        let config: PathBuf = banner
            .lines()
            .find_map(|l| l.trim().strip_prefix("config").map(|p| PathBuf::from(p.trim())))
            .unwrap_or_else(|| panic!("the banner names the config file:\n{banner}"));
        // "s1  primary 127.0.0.1:PORT ..." lines.
        let primaries = banner
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace().skip_while(|w| *w == "shards");
                let shard = words.next()?;
                (words.next()? == "primary").then_some(())?;
                let port = words.next()?.rsplit(':').next()?.parse().ok()?;
                Some((shard.to_string(), port))
            })
            .collect();
        Demo { child: Some(child), port, admin_port, banner, config, primaries, stderr, _dir: dir }
    }

    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=app password=app dbname=app", self.port)
    }

    /// A direct client to one shard's primary.
    pub async fn shard(&self, name: &str) -> Client {
        let port = self.primaries.iter().find(|(n, _)| n == name).map(|(_, p)| *p).expect("a demo shard");
        connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=app")).await.expect("direct connection")
    }

    /// Ctrl-C, as a user stops it: (exited cleanly, what it printed on stderr).
    pub async fn interrupt(mut self) -> (bool, String) {
        let mut child = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
        (status.success(), std::fs::read_to_string(&self.stderr).unwrap_or_default())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `interrupt`; SIGINT lets it remove its clusters.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("---- demo stderr ----\n{}", std::fs::read_to_string(&self.stderr).unwrap_or_default());
            }
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- shardcar log ----\n{}", self.log_text());
        }
    }
}

/// A tokio-postgres client for a conninfo string.
pub async fn connect(conninfo: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A direct client to one cluster, bypassing shardcar.
pub async fn direct(cluster: &Cluster) -> Client {
    connect(&format!("host=127.0.0.1 port={} user=postgres dbname=app", cluster.port)).await.expect("direct connection")
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A table name unique to the calling test, so tests can share clusters.
pub fn table(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}_{}_{n}", std::process::id())
}

/// Runs a PostgreSQL client program against the sidecar; returns (success, stdout+stderr).
pub fn run_tool(sidecar: &Sidecar, program: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut cmd = Command::new(localpg::tool(program).unwrap());
    cmd.args(args).envs(sidecar.client_env()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn client program");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The value of an unlabelled metric in a `/metrics` text (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A metric summed over all its label sets in a `/metrics` text (0 when absent).
pub fn metric_total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The first column of every row a simple query returned.
pub fn first_column(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect()
}

/// The SQLSTATE of a tokio-postgres error.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// Polls `check` until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Reads a simple query's answer up to ReadyForQuery, keeping nothing:
/// (DataRows, bytes read).
pub async fn count_rows(socket: &mut tokio::net::TcpStream) -> (u64, u64) {
    use postgres_protocol::message::backend::Header;
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::with_capacity(1 << 16);
    let (mut rows, mut bytes) = (0, 0);
    loop {
        while let Ok(Some(header)) = Header::parse(&buf) {
            let len = header.len() as usize + 1;
            if buf.len() < len {
                break;
            }
            match header.tag() {
                b'D' => rows += 1,
                b'E' => panic!("the query failed: {:?}", String::from_utf8_lossy(&buf[..len])),
                b'Z' => return (rows, bytes + len as u64),
                _ => {}
            }
            bytes += len as u64;
            let _ = buf.split_to(len);
        }
        let n = socket.read_buf(&mut buf).await.expect("read from shardcar");
        assert!(n > 0, "shardcar closed the connection");
    }
}

/// Logs in as the trust user with a raw socket, up to ReadyForQuery; returns
/// the socket and what was read past it.
pub async fn logged_in(port: u16) -> (tokio::net::TcpStream, bytes::BytesMut) {
    use postgres_protocol::message::backend::Message;
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message([("user", "local"), ("database", "app")], &mut buf).unwrap();
    s.write_all(&buf).await.unwrap();
    let mut rbuf = bytes::BytesMut::new();
    loop {
        match next_message(&mut s, &mut rbuf).await {
            Some(Message::ReadyForQuery(_)) => return (s, rbuf),
            Some(_) => {}
            None => panic!("connection closed during login"),
        }
    }
}

/// The next backend message on a raw socket; `None` at end of stream.
pub async fn next_message(
    s: &mut tokio::net::TcpStream,
    rbuf: &mut bytes::BytesMut,
) -> Option<postgres_protocol::message::backend::Message> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(m) = postgres_protocol::message::backend::Message::parse(rbuf).unwrap() {
            return Some(m);
        }
        if s.read_buf(rbuf).await.ok()? == 0 {
            return None;
        }
    }
}

/// A test plugin from tests/fixtures/plugins, built (once) for wasm32-wasip2.
pub fn fixture_plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = root.join("target/plugins");
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root.join("tests/fixtures/plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(target.join("wasm32-wasip2/release"))
    });
    match dir {
        Ok(dir) => dir.join(format!("{}.wasm", name.replace('-', "_"))),
        Err(e) => panic!("building the fixture plugins failed:\n{e}"),
    }
}

/// TLS on both sides for the shared fleet: its primaries serve a
/// certificate for `localhost` from a CA made here (turned on once per test
/// binary; plain clients of the fleet are unaffected), and shardcar gets a
/// certificate of its own from the same CA.
pub struct FleetTls {
    dir: tempfile::TempDir,
    pub ca: PathBuf,
}

impl FleetTls {
    pub fn shared() -> &'static FleetTls {
        static TLS: OnceLock<FleetTls> = OnceLock::new();
        TLS.get_or_init(|| {
            let fleet = Fleet::shared();
            let dir = tempfile::tempdir().unwrap();
            let ca = crate::pki::Ca::new("shardcar fleet CA");
            for shard in [&fleet.s0, &fleet.s1] {
                let issued = ca.server(&["localhost"]);
                shard.enable_tls(&issued.cert, &issued.key, None).unwrap();
            }
            let issued = ca.server(&["localhost"]);
            crate::pki::write(dir.path(), "shardcar.crt", &issued.cert);
            crate::pki::write(dir.path(), "shardcar.key", &issued.key);
            let ca = crate::pki::write(dir.path(), "ca.pem", &ca.pem());
            FleetTls { dir, ca }
        })
    }

    /// `config` (the shared fleet's) with every primary reached by name
    /// with sslmode=verify-full, and TLS offered to clients (required of
    /// all but loopback ones, so that tests can still look in clear).
    pub fn apply(&self, config: &str) -> String {
        let fleet = Fleet::shared();
        let mut config = config.to_string();
        for shard in [&fleet.s0, &fleet.s1] {
            let url = format!(
                "postgres://postgres@localhost:{}/app?sslmode=verify-full&sslrootcert={}",
                shard.port,
                self.ca.display()
            );
            config = config.replace(&format!("\"{}\"", shard.url()), &format!("\"{url}\""));
        }
        let admin = "admin = \"127.0.0.1:{ADMIN}\"\n";
        let listen = format!(
            "{admin}tls_cert = \"{}\"\ntls_key = \"{}\"\nrequire_tls = true\n",
            self.dir.path().join("shardcar.crt").display(),
            self.dir.path().join("shardcar.key").display()
        );
        config.replacen(admin, &listen, 1)
    }
}

/// A simple query's rows as text (`None` for NULL).
pub async fn text_rows(c: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    Ok(c.simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// Asserts that shardcar (`via`) answers `sql` as one plain Postgres does:
/// the same rows, in the same order when `ordered` (a total ORDER BY).
pub async fn assert_same_rows(via: &Client, one: &Client, sql: &str, ordered: bool) {
    let mut got = text_rows(via, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut want = text_rows(one, sql).await.unwrap_or_else(|e| panic!("plain Postgres: {sql}: {e}"));
    if !ordered {
        got.sort();
        want.sort();
    }
    assert_eq!(got, want, "{sql}");
}

/// What a client that reads a result as it comes (keeping none of it) saw,
/// and the sidecar's RSS before and at most while it streamed.
pub struct Streamed {
    pub rows: u64,
    pub bytes: u64,
    pub before_kib: u64,
    pub peak_kib: u64,
}

/// Sends `sql` as a simple query on a raw connection and reads its rows,
/// sampling the sidecar's RSS every 20 ms meanwhile.
pub async fn stream_measuring_rss(sidecar: &Sidecar, sql: &str) -> Streamed {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let pid = sidecar.pid();
    let (mut socket, _) = logged_in(sidecar.port).await;
    let before_kib = rss_kib(pid);
    let mut query = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut query).unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut socket, &query).await.unwrap();
    // Sampled while the client reads (the test's runtime runs the sampler between reads).
    let peak = Arc::new(AtomicU64::new(before_kib));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let (rows, bytes) = count_rows(&mut socket).await;
    sampler.abort();
    let peak_kib = peak.load(Ordering::Relaxed).max(rss_kib(pid));
    Streamed { rows, bytes, before_kib, peak_kib }
}
