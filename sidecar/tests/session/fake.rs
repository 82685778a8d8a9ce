//! A scripted shard: a TCP server on 127.0.0.1 that plays Postgres's side
//! of the protocol well enough for the session to drive it — startup,
//! simple and extended queries (replies held until Sync or Flush, skipping
//! to Sync after an error, portals with a row limit), transaction status,
//! COPY FROM STDIN, two-phase commit statements — and logs every message
//! it receives, so a test can say which shard saw what.
//!
//! What a statement answers is decided by its text: `fail` anywhere is an
//! error (42000), a SELECT returns the shard's rows (one text column `v`),
//! other statements answer their tag.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, BytesMut};
use shardcar::sqlerror::SqlError;
use shardcar::wire::reply;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// shardcar's config in front of `s0` and `s1`: users `u` (trust) and `p`
/// (password `pw`), table `t` sharded by `k` with the `hash` plugin;
/// `listen`, `pool` and `routing` are added to those sections.
pub fn config(s0: &Fake, s1: &Fake, cache: &Path, listen: &str, pool: &str, routing: &str) -> String {
    format!(
        r#"
[listen]
addr = "127.0.0.1:0"
admin = "127.0.0.1:1"
{listen}

[[users]]
name = "u"
trust = true

[[users]]
name = "p"
password = "pw"

[pool]
size = 2
checkout_timeout_ms = 2000
{pool}

[plugins]
cache_dir = "{cache}"

[[shards]]
name = "s0"
primary = "postgres://u@127.0.0.1:{p0}/db"

[[shards]]
name = "s1"
primary = "postgres://u@127.0.0.1:{p1}/db"

[routing]
default_shard = "s0"
read_replicas = false
{routing}

[[policies]]
name = "by-k"
plugin = "hash"
config = {{ shards = ["s0", "s1"] }}

[[tables]]
name = "t"
key = "k"
policy = "by-k"
"#,
        p0 = s0.port,
        p1 = s1.port,
        cache = cache.display(),
    )
}

#[derive(Clone)]
pub struct Fake {
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
    rows: Arc<Mutex<Vec<String>>>,
    prepared_xacts: Arc<Mutex<Vec<String>>>,
    /// `COMMIT PREPARED` fails (the shard cannot be told).
    pub refuse_commit_prepared: Arc<std::sync::atomic::AtomicBool>,
    /// The next Describe ends its connection, as a server terminated
    /// (`pg_terminate_backend`) while the connection sat idle does.
    pub end_at_next_describe: Arc<std::sync::atomic::AtomicBool>,
    /// Schema changes so far: a `SELECT *` statement parsed before the last
    /// one fails at Bind or Describe with 0A000, as Postgres's plan cache
    /// refuses a statement whose result type would change.
    pub schema_changes: Arc<std::sync::atomic::AtomicU64>,
    /// Open connections that are not idle (replies owed, in a transaction,
    /// a COPY or skipping to Sync), by backend pid: what they are in.
    busy: Arc<Mutex<HashMap<i32, String>>>,
    /// Named statements each open connection holds, by backend pid.
    named: Arc<Mutex<HashMap<i32, Vec<String>>>>,
    /// Transaction ids handed out (`pg_current_xact_id()`) and how each
    /// ended: "in progress", "committed" or "aborted".
    xids: Arc<Mutex<HashMap<u64, &'static str>>>,
}

impl Fake {
    pub async fn start(rows: &[&str]) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Fake {
            port: listener.local_addr().unwrap().port(),
            log: Arc::default(),
            rows: Arc::new(Mutex::new(rows.iter().map(|r| r.to_string()).collect())),
            prepared_xacts: Arc::default(),
            refuse_commit_prepared: Arc::default(),
            end_at_next_describe: Arc::default(),
            schema_changes: Arc::default(),
            busy: Arc::default(),
            named: Arc::default(),
            xids: Arc::default(),
        };
        let serving = fake.clone();
        tokio::spawn(async move {
            let mut next_pid = 1000;
            while let Ok((stream, _)) = listener.accept().await {
                next_pid += 1;
                tokio::spawn(serving.clone().serve(stream, next_pid));
            }
        });
        fake
    }

    /// Every message received so far (`Q <sql>`, `P <sql>`, `B`, `E <max rows>`, `S`, ...).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The simple queries and parsed statements received, without shardcar's
    /// own settings changes.
    pub fn statements(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter_map(|l| l.strip_prefix("Q ").or(l.strip_prefix("P ")).map(str::to_string))
            .filter(|q| !q.starts_with("RESET "))
            .collect()
    }

    /// Open connections that are not idle: what each is in.
    #[allow(dead_code, reason = "the session fuzz target uses it; the session tests do not")]
    pub fn busy(&self) -> Vec<String> {
        self.busy.lock().unwrap().values().cloned().collect()
    }

    /// The named statements the connection with backend `pid` holds, sorted.
    #[allow(dead_code, reason = "the session fuzz target uses it; the session tests do not")]
    pub fn named(&self, pid: i32) -> Vec<String> {
        self.named.lock().unwrap().get(&pid).cloned().unwrap_or_default()
    }

    /// Forgets what was received (a long fuzzing run would keep it all).
    #[allow(dead_code, reason = "the session fuzz target uses it; the session tests do not")]
    pub fn forget(&self) {
        self.log.lock().unwrap().clear();
    }

    /// Transactions prepared and not yet finished.
    pub fn prepared(&self) -> Vec<String> {
        self.prepared_xacts.lock().unwrap().clone()
    }

    /// A transaction left prepared, as a crash would leave it.
    pub fn leave_prepared(&self, gid: &str) {
        self.prepared_xacts.lock().unwrap().push(gid.to_string());
    }

    /// How the transaction with id `xid` ended here (`pg_xact_status`).
    pub fn xact_status(&self, xid: u64) -> &'static str {
        self.xids.lock().unwrap().get(&xid).copied().unwrap_or("aborted")
    }

    fn record(&self, entry: String) {
        self.log.lock().unwrap().push(entry);
    }

    async fn serve(self, mut stream: TcpStream, pid: i32) {
        let mut rbuf = BytesMut::new();
        let mut out = BytesMut::new();
        // Startup packet: length, protocol, parameters.
        if read_exact(&mut stream, &mut rbuf, 4).await.is_none() {
            return;
        }
        let len = (&rbuf[..4]).get_i32() as usize;
        if read_exact(&mut stream, &mut rbuf, len).await.is_none() {
            return;
        }
        // Health probes (any shardcar's control plane, on a port reused
        // by this fake) are not what a test asks about.
        let params = String::from_utf8_lossy(&rbuf[8..len]).into_owned();
        let control =
            params.split('\0').collect::<Vec<_>>().windows(2).any(|w| w == ["application_name", "shardcar-control"]);
        rbuf.advance(len);
        reply::auth(&mut out, pgwire::messages::startup::Authentication::Ok);
        for (k, v) in [("server_version", "15.0"), ("client_encoding", "UTF8"), ("integer_datetimes", "on")] {
            reply::parameter_status(&mut out, k, v);
        }
        reply::backend_key(&mut out, pid, 7);
        reply::ready(&mut out, b'I');
        let mut fake = self;
        if control {
            fake.log = Arc::default();
        }
        let mut conn = Conn {
            fake,
            status: b'I',
            statements: HashMap::new(),
            parsed_at: HashMap::new(),
            portals: HashMap::new(),
            skipping: false,
            copying: None,
            xid: None,
        };
        let (busy, named) = (conn.fake.busy.clone(), conn.fake.named.clone());
        let ended = async {
            loop {
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                let mut flushed = false;
                while !flushed {
                    conn.note_busy(pid, !out.is_empty());
                    let Some((tag, body)) = read_message(&mut stream, &mut rbuf).await else { return };
                    match conn.on_message(tag, body, &mut out) {
                        Next::Hold => {}
                        Next::Flush => flushed = true,
                        Next::Close => {
                            let _ = stream.write_all(&out).await;
                            return;
                        }
                    }
                }
            }
        };
        ended.await;
        // A transaction open when its connection went is rolled back.
        conn.end_xact("aborted");
        busy.lock().unwrap().remove(&pid);
        named.lock().unwrap().remove(&pid);
    }
}

enum Next {
    /// Keep replies until Sync or Flush, as Postgres does.
    Hold,
    Flush,
    Close,
}

struct Conn {
    fake: Fake,
    status: u8,
    statements: HashMap<String, String>,
    /// The schema change each statement was parsed after.
    parsed_at: HashMap<String, u64>,
    /// Portal → (statement text, rows sent so far).
    portals: HashMap<String, (String, usize)>,
    skipping: bool,
    /// Rows received by a COPY in progress, and whether one was bad.
    copying: Option<(u64, bool)>,
    /// The open transaction's id, once asked for.
    xid: Option<u64>,
}

enum Answer {
    Rows(Vec<String>),
    /// COPY ... TO STDOUT of these rows.
    CopyOut(Vec<String>),
    Tag(String),
    Error(&'static str),
    CopyIn,
}

impl Conn {
    /// Records whether this connection is idle, as a pooled one must be.
    fn note_busy(&self, pid: i32, replies_held: bool) {
        let mut what = Vec::new();
        if replies_held {
            what.push("replies held until a Sync or Flush".to_string());
        }
        if self.status != b'I' {
            what.push(format!("transaction status {}", self.status as char));
        }
        if self.skipping {
            what.push("skipping to Sync".into());
        }
        if self.copying.is_some() {
            what.push("in COPY FROM STDIN".into());
        }
        let mut names: Vec<String> = self.statements.keys().filter(|n| !n.is_empty()).cloned().collect();
        names.sort();
        self.fake.named.lock().unwrap().insert(pid, names);
        let mut busy = self.fake.busy.lock().unwrap();
        if what.is_empty() {
            busy.remove(&pid);
        } else {
            busy.insert(pid, format!("backend {pid}: {}", what.join(", ")));
        }
    }

    fn on_message(&mut self, tag: u8, mut body: BytesMut, out: &mut BytesMut) -> Next {
        let fake = self.fake.clone();
        match tag {
            // After an error in the extended protocol, Postgres ignores
            // every message up to Sync, a simple Query too.
            b'Q' if self.skipping => {
                fake.record("skipped Q".into());
                return Next::Hold;
            }
            b'Q' => {
                let sql = cstr(&mut body);
                fake.record(format!("Q {sql}"));
                // A simple query destroys the unnamed statement.
                self.statements.remove("");
                self.simple(&sql, out);
                return Next::Flush;
            }
            b'X' => return Next::Close,
            b'd' => {
                if let Some((n, bad)) = self.copying.as_mut() {
                    let text = String::from_utf8_lossy(&body).to_string();
                    *n += text.lines().count() as u64;
                    *bad |= text.contains("bad");
                }
                return Next::Hold;
            }
            b'c' | b'f' => {
                fake.record(if tag == b'c' { "c".into() } else { "f".into() });
                match self.copying.take() {
                    Some((n, false)) if tag == b'c' => reply::command_complete(out, &format!("COPY {n}")),
                    _ => self.error(out, "22P04", "bad COPY data"),
                }
                // A COPY begun by a simple query ends with ReadyForQuery:
                // its error skips nothing (only the extended protocol
                // skips to Sync).
                if !self.extended_copy() {
                    self.skipping = false;
                    reply::ready(out, self.status);
                }
                return Next::Flush;
            }
            // Postgres ignores Sync and Flush during COPY FROM STDIN.
            b'S' | b'H' if self.copying.is_some() => {
                fake.record("ignored during COPY".into());
                return Next::Hold;
            }
            b'S' => {
                fake.record("S".into());
                self.skipping = false;
                if self.status == b'I' {
                    self.portals.clear();
                }
                reply::ready(out, self.status);
                return Next::Flush;
            }
            b'H' => {
                fake.record("H".into());
                return Next::Flush;
            }
            _ => {}
        }
        if self.skipping {
            fake.record(format!("skipped {}", tag as char));
            return Next::Hold;
        }
        match tag {
            b'P' => {
                let name = cstr(&mut body);
                let sql = cstr(&mut body);
                fake.record(format!("P {sql}"));
                if sql.contains("syntax error") {
                    self.error(out, "42601", "syntax error at or near \"syntax\"");
                } else if !name.is_empty() && self.statements.contains_key(&name) {
                    self.error(out, "42P05", &format!("prepared statement \"{name}\" already exists"));
                } else {
                    self.parsed_at.insert(name.clone(), fake.schema_changes.load(std::sync::atomic::Ordering::SeqCst));
                    self.statements.insert(name, sql);
                    out.extend_from_slice(&[b'1', 0, 0, 0, 4]);
                }
            }
            b'B' => {
                let portal = cstr(&mut body);
                let stmt = cstr(&mut body);
                fake.record(format!("B {stmt}"));
                if self.stale(&stmt) {
                    self.stale_plan(out);
                    return Next::Hold;
                }
                match self.statements.get(&stmt) {
                    Some(sql) => {
                        self.portals.insert(portal, (sql.clone(), 0));
                        reply::bind_complete(out);
                    }
                    None => self.error(out, "26000", &format!("prepared statement \"{stmt}\" does not exist")),
                }
            }
            b'D' => {
                let kind = body.get_u8();
                let name = cstr(&mut body);
                fake.record(format!("D {}", kind as char));
                if fake.end_at_next_describe.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    reply::error(out, &SqlError::fatal("57P01", "terminating connection due to administrator command"));
                    return Next::Close;
                }
                if kind == b'S' && self.stale(&name) {
                    self.stale_plan(out);
                    return Next::Hold;
                }
                let sql = match kind {
                    b'S' => self.statements.get(&name).cloned(),
                    _ => self.portals.get(&name).map(|p| p.0.clone()),
                };
                match sql {
                    None => self.error(out, "34000", "no such statement or portal"),
                    Some(sql) => {
                        if kind == b'S' {
                            reply::parameter_description(out);
                        }
                        if is_select(&sql) {
                            reply::text_column(out, "v");
                        } else {
                            reply::no_data(out);
                        }
                    }
                }
            }
            b'E' => {
                let portal = cstr(&mut body);
                let max = body.get_i32().max(0) as usize;
                fake.record(format!("E {max}"));
                let Some((sql, sent)) = self.portals.get(&portal).cloned() else {
                    self.error(out, "34000", &format!("portal \"{portal}\" does not exist"));
                    return Next::Hold;
                };
                match self.answer(&sql) {
                    Answer::Rows(rows) => {
                        let rest: Vec<_> = rows.into_iter().skip(sent).collect();
                        let take = if max == 0 { rest.len() } else { max.min(rest.len()) };
                        for r in &rest[..take] {
                            reply::text_row(out, r);
                        }
                        if take < rest.len() {
                            self.portals.insert(portal, (sql, sent + take));
                            out.extend_from_slice(&[b's', 0, 0, 0, 4]);
                        } else {
                            reply::command_complete(out, &format!("SELECT {}", sent + take));
                        }
                    }
                    Answer::Tag(t) => reply::command_complete(out, &t),
                    Answer::CopyOut(rows) => copy_out(out, &rows),
                    Answer::Error(code) => self.error(out, code, "the statement failed"),
                    Answer::CopyIn => {
                        self.copying = Some((0, false));
                        copy_in_response(out);
                        self.portals.insert("\u{1}copy".into(), (String::new(), 0));
                        return Next::Flush;
                    }
                }
            }
            b'C' => {
                let kind = body.get_u8();
                let name = cstr(&mut body);
                fake.record(format!("C {}", kind as char));
                if kind == b'S' {
                    self.statements.remove(&name);
                } else {
                    self.portals.remove(&name);
                }
                out.extend_from_slice(&[b'3', 0, 0, 0, 4]);
            }
            other => fake.record(format!("unexpected {}", other as char)),
        }
        Next::Hold
    }

    /// A COPY begun by Execute ends with the client's Sync, not by itself.
    fn extended_copy(&mut self) -> bool {
        self.portals.remove("\u{1}copy").is_some()
    }

    fn simple(&mut self, sql: &str, out: &mut BytesMut) {
        let statements: Vec<&str> = sql.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
        if statements.is_empty() {
            reply::empty_query(out);
        }
        for stmt in statements {
            match self.answer(stmt) {
                Answer::Rows(rows) => {
                    reply::text_column(out, "v");
                    for r in &rows {
                        reply::text_row(out, r);
                    }
                    reply::command_complete(out, &format!("SELECT {}", rows.len()));
                }
                Answer::Tag(t) => reply::command_complete(out, &t),
                Answer::CopyOut(rows) => copy_out(out, &rows),
                Answer::Error(code) => {
                    self.error(out, code, "the statement failed");
                    break;
                }
                Answer::CopyIn => {
                    self.copying = Some((0, false));
                    copy_in_response(out);
                    return;
                }
            }
        }
        self.skipping = false;
        reply::ready(out, self.status);
    }

    fn answer(&mut self, sql: &str) -> Answer {
        let mut u = sql.trim().to_ascii_uppercase();
        // A leading comment (a shardcar hint) is not the statement.
        while u.starts_with("/*")
            && let Some(end) = u.find("*/")
        {
            u = u[end + 2..].trim_start().to_string();
        }
        let word = u.split_whitespace().next().unwrap_or("").to_string();
        if self.status == b'E' && !matches!(word.as_str(), "ROLLBACK" | "COMMIT") {
            return Answer::Error("25P02");
        }
        if u.contains("FAIL") {
            return Answer::Error("42000");
        }
        let tag = match word.as_str() {
            "BEGIN" | "START" => {
                self.status = b'T';
                "BEGIN".to_string()
            }
            "COMMIT" if u.starts_with("COMMIT PREPARED") => {
                if self.fake.refuse_commit_prepared.load(std::sync::atomic::Ordering::Relaxed) {
                    return Answer::Error("08006");
                }
                self.finish_prepared(sql);
                "COMMIT PREPARED".into()
            }
            "ROLLBACK" if u.starts_with("ROLLBACK PREPARED") => {
                self.finish_prepared(sql);
                "ROLLBACK PREPARED".into()
            }
            "COMMIT" => {
                let failed = self.status == b'E';
                self.status = b'I';
                self.end_xact(if failed { "aborted" } else { "committed" });
                if failed { "ROLLBACK".into() } else { "COMMIT".into() }
            }
            "ROLLBACK" if u.starts_with("ROLLBACK TO") => {
                // Back to a savepoint: the transaction goes on, failed or not.
                if self.status == b'E' {
                    self.status = b'T';
                }
                "ROLLBACK".into()
            }
            "ROLLBACK" => {
                self.status = b'I';
                self.end_xact("aborted");
                "ROLLBACK".into()
            }
            "PREPARE" => {
                let gid = sql.split('\'').nth(1).unwrap_or_default().to_string();
                self.fake.prepared_xacts.lock().unwrap().push(gid);
                self.status = b'I';
                "PREPARE TRANSACTION".into()
            }
            "SET" | "RESET" => "SET".into(),
            "SHOW" => return Answer::Rows(vec!["C".into()]),
            "COPY" if u.contains("FROM STDIN") => return Answer::CopyIn,
            "COPY" if u.contains("TO STDOUT") => return Answer::CopyOut(self.fake.rows.lock().unwrap().clone()),
            "SELECT" if u.contains("PG_PREPARED_XACTS") => {
                // `gid LIKE 'shardcar\_%'`
                return Answer::Rows(self.fake.prepared().into_iter().filter(|g| g.starts_with("shardcar_")).collect());
            }
            "SELECT" if u.contains("PG_CURRENT_XACT_ID()") => {
                let mut xids = self.fake.xids.lock().unwrap();
                let xid = *self.xid.get_or_insert(1000 + xids.len() as u64);
                xids.insert(xid, "in progress");
                return Answer::Rows(vec![xid.to_string()]);
            }
            "SELECT" if u.contains("PG_XACT_STATUS(") => {
                let xid = sql.split("pg_xact_status('").nth(1).and_then(|r| r.split('\'').next()).unwrap_or("");
                return Answer::Rows(vec![self.fake.xact_status(xid.parse().unwrap_or(0)).to_string()]);
            }
            "SELECT" if u.contains("TO_REGCLASS(") || u.contains("ADVISORY_LOCK(") => {
                return Answer::Rows(vec!["t".into()]);
            }
            "SELECT" => {
                if u.contains(" FROM ") {
                    return Answer::Rows(self.fake.rows.lock().unwrap().clone());
                }
                return Answer::Rows(vec!["1".into()]);
            }
            "INSERT" => "INSERT 0 1".into(),
            "UPDATE" => "UPDATE 1".into(),
            "DELETE" => "DELETE 1".into(),
            "CREATE" => "CREATE TABLE".into(),
            other => other.to_string(),
        };
        Answer::Tag(tag)
    }

    fn end_xact(&mut self, how: &'static str) {
        if let Some(xid) = self.xid.take() {
            self.fake.xids.lock().unwrap().insert(xid, how);
        }
    }

    fn finish_prepared(&mut self, sql: &str) {
        let gid = sql.split('\'').nth(1).unwrap_or_default().to_string();
        self.fake.prepared_xacts.lock().unwrap().retain(|g| *g != gid);
    }

    /// A `SELECT *` parsed before the last schema change.
    fn stale(&self, name: &str) -> bool {
        let changes = self.fake.schema_changes.load(std::sync::atomic::Ordering::SeqCst);
        self.statements.get(name).is_some_and(|sql| sql.contains("SELECT *"))
            && self.parsed_at.get(name).is_some_and(|&at| at < changes)
    }

    /// Postgres's error for it, with the routine that raises it.
    fn stale_plan(&mut self, out: &mut BytesMut) {
        let fields = "SERROR\0VERROR\0C0A000\0Mcached plan must not change result type\0Fplancache.c\0RRevalidateCachedQuery\0\0";
        out.put_u8(b'E');
        out.put_i32(4 + fields.len() as i32);
        out.extend_from_slice(fields.as_bytes());
        self.skipping = true;
        if self.status == b'T' {
            self.status = b'E';
        }
    }

    fn error(&mut self, out: &mut BytesMut, code: &'static str, message: &str) {
        reply::error(out, &SqlError::new(code, message));
        self.skipping = true;
        if self.status == b'T' {
            self.status = b'E';
        }
    }
}

fn is_select(sql: &str) -> bool {
    let u = sql.trim_start().to_ascii_uppercase();
    u.starts_with("SELECT") || u.starts_with("/*") && u.contains("*/ SELECT")
}

/// CopyOutResponse (text, one column), a CopyData per row, CopyDone, the tag.
fn copy_out(out: &mut BytesMut, rows: &[String]) {
    out.extend_from_slice(&[b'H', 0, 0, 0, 9, 0, 0, 1, 0, 0]);
    for r in rows {
        let line = format!("{r}\n");
        out.extend_from_slice(b"d");
        out.extend_from_slice(&(line.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(&[b'c', 0, 0, 0, 4]);
    reply::command_complete(out, &format!("COPY {}", rows.len()));
}

fn copy_in_response(out: &mut BytesMut) {
    // Text format, one column.
    out.extend_from_slice(&[b'G', 0, 0, 0, 9, 0, 0, 1, 0, 0]);
}

fn cstr(body: &mut BytesMut) -> String {
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    body.advance((end + 1).min(body.len()));
    s
}

async fn read_exact(stream: &mut TcpStream, buf: &mut BytesMut, n: usize) -> Option<()> {
    while buf.len() < n {
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
    Some(())
}

async fn read_message(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    read_exact(stream, buf, 5).await?;
    let len = (&buf[1..5]).get_i32() as usize;
    read_exact(stream, buf, 1 + len).await?;
    let tag = buf[0];
    buf.advance(5);
    Some((tag, buf.split_to(len - 4)))
}
