//! One raw protocol connection to a shard server, as the data path uses it:
//! startup and authentication with postgres-protocol, then frames read and
//! written as bytes so that everything reaches the client unchanged.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::{ErrorResponseBody, Header, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::oids::ShardOids;
use crate::config::Endpoint;
use crate::passthrough::{Proof, ScramClient, UserLogin, md5_response};
use crate::settings::Settings;
use crate::tls::Stream;
use crate::tls::shard::Encrypted;

/// `application_name` of pooled connections until a client's own is applied.
pub const APPLICATION_NAME: &str = "shardcar";

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach {addr}: {source}")]
    Io { addr: String, source: io::Error },
    #[error("timed out after {0:?} connecting to {1}")]
    Timeout(Duration, String),
    #[error("{addr} refused the login: {message}")]
    Rejected { addr: String, message: String },
    #[error("{addr}: {message}")]
    Protocol { addr: String, message: String },
    #[error("{addr}: {message}")]
    Tls { addr: String, message: String },
}

/// The text of a prepared statement: the SQL and its declared parameter types.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct StatementText {
    pub sql: String,
    pub param_types: Vec<u32>,
}

/// The server's unnamed statement still holds `text` after `sent`.
fn unnamed_survives(sent: &[u8], text: &StatementText) -> bool {
    crate::wire::messages(sent).all(|msg| match msg[0] {
        b'Q' => false,
        b'P' => msg.get(5) != Some(&0) || parses(msg, text),
        _ => true,
    })
}

/// An unnamed Parse message (`P`, length, empty name) creates `text`.
fn parses(msg: &[u8], text: &StatementText) -> bool {
    let Some(body) = msg.get(6..) else { return false };
    let Some(end) = body.iter().position(|&b| b == 0) else { return false };
    if body[..end] != *text.sql.as_bytes() {
        return false;
    }
    let types = &body[end + 1..];
    let count = types.get(..2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    count == Some(text.param_types.len())
        && types[2..]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .eq(text.param_types.iter().copied())
}

/// Statements prepared on one connection under shardcar's content-addressed
/// names, oldest first so the set can be bounded. A name whose text is
/// unknown may or may not be held by the server.
#[derive(Debug, Default)]
pub struct PreparedSet {
    by_name: foldhash::HashMap<String, Option<Arc<StatementText>>>,
    order: VecDeque<String>,
}

impl PreparedSet {
    /// True when `name` is prepared here with exactly this text.
    pub fn has(&self, name: &str, text: &Arc<StatementText>) -> bool {
        self.by_name.get(name).is_some_and(|t| t.as_ref().is_some_and(|t| Arc::ptr_eq(t, text) || **t == **text))
    }

    /// Every name the server may hold, oldest first, and whether its text
    /// is known (the server holds it) or not (it may hold it).
    pub fn names(&self) -> impl Iterator<Item = (&str, bool)> {
        self.order.iter().map(|n| (n.as_str(), self.by_name.get(n).is_some_and(Option::is_some)))
    }

    /// The server may hold `name`: it must be closed before it is prepared again.
    pub fn contains_name(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn insert(&mut self, name: String, text: Arc<StatementText>) {
        if self.by_name.insert(name.clone(), Some(text)).is_none() {
            self.order.push_back(name);
        }
    }

    /// A Parse of `name` failed, or was skipped after an earlier error
    /// together with the Close before it: the server may hold the old
    /// statement or none. Closing a statement that does not exist is no
    /// error, so the next Parse of it closes it first.
    pub fn unsure(&mut self, name: &str) {
        if let Some(text) = self.by_name.get_mut(name) {
            *text = None;
        }
    }

    /// Names to close so that one more statement fits under `max`.
    pub fn evict_for_one_more(&mut self, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        while self.by_name.len() + 1 > max {
            let Some(name) = self.order.pop_front() else { break };
            self.by_name.remove(&name);
            out.push(name);
        }
        out
    }
}

pub struct BackendConn {
    stream: Stream,
    /// Counts this connection among its server's encrypted ones while open.
    pub encrypted: Option<Encrypted>,
    /// Counts it among the connections of its server's budget while open.
    pub counted: Option<super::budget::Counted>,
    rbuf: BytesMut,
    /// Bytes to send at the next flush.
    pub wbuf: BytesMut,
    /// This session's cancel key on the server.
    pub pid: i32,
    pub secret: i32,
    /// `host:port`, for cancel requests and messages.
    pub addr: std::sync::Arc<str>,
    /// ParameterStatus values reported at startup.
    pub server_params: Vec<(String, String)>,
    /// Transaction status from the last ReadyForQuery (`I`, `T` or `E`).
    pub status: u8,
    /// Set when the connection is in an unknown state; it is never reused.
    pub broken: bool,
    pub prepared: PreparedSet,
    /// Text of the unnamed statement currently parsed on this connection.
    pub unnamed: Option<Arc<StatementText>>,
    /// Settings in effect here, in the same terms as a client's.
    pub settings: Settings,
    /// Settings from this connection's startup packet: what RESET returns to.
    pub startup_settings: Settings,
    /// Descriptions read here are rewritten to the default shard's OIDs
    /// (none on the default shard itself).
    pub oids: Option<Arc<ShardOids>>,
}

impl BackendConn {
    /// Connects and logs in as the URL's user, or as `login`'s (passthrough).
    pub async fn connect(
        endpoint: &Endpoint,
        login: Option<&UserLogin>,
        timeout: Duration,
    ) -> Result<BackendConn, ConnectError> {
        let addr = endpoint.address();
        match tokio::time::timeout(timeout, Self::connect_inner(endpoint, login, addr.clone())).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout(timeout, addr)),
        }
    }

    async fn connect_inner(
        endpoint: &Endpoint,
        login: Option<&UserLogin>,
        addr: String,
    ) -> Result<BackendConn, ConnectError> {
        let io_err = |source| ConnectError::Io { addr: addr.clone(), source };
        let tcp = TcpStream::connect(&addr).await.map_err(io_err)?;
        tcp.set_nodelay(true).map_err(io_err)?;
        let stream =
            endpoint.tls.negotiate(tcp).await.map_err(|message| ConnectError::Tls { addr: addr.clone(), message })?;
        let startup = [
            ("user", login.map_or(endpoint.user.as_str(), |l| l.user.as_str())),
            ("database", endpoint.dbname.as_str()),
            ("application_name", APPLICATION_NAME),
            ("client_encoding", "UTF8"),
        ];
        let mut conn = BackendConn {
            stream,
            encrypted: None,
            counted: None,
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(8 * 1024),
            pid: 0,
            secret: 0,
            addr: addr.as_str().into(),
            server_params: Vec::new(),
            status: b'I',
            broken: false,
            prepared: PreparedSet::default(),
            unnamed: None,
            settings: Settings::from_startup(startup[2..].iter().copied()),
            startup_settings: Settings::from_startup(startup[2..].iter().copied()),
            oids: None,
        };
        frontend::startup_message(startup.iter().copied(), &mut conn.wbuf).map_err(io_err)?;
        conn.flush().await.map_err(io_err)?;
        match login {
            None => conn.authenticate(endpoint).await?,
            Some(login) => conn.authenticate_as(login).await?,
        }
        loop {
            match conn.read_message().await.map_err(io_err)? {
                Message::ParameterStatus(p) => {
                    if let (Ok(n), Ok(v)) = (p.name(), p.value()) {
                        conn.server_params.push((n.to_string(), v.to_string()));
                    }
                }
                Message::BackendKeyData(k) => {
                    conn.pid = k.process_id();
                    conn.secret = k.secret_key();
                }
                Message::ReadyForQuery(r) => {
                    conn.status = r.status();
                    return Ok(conn);
                }
                Message::NoticeResponse(_) => {}
                Message::ErrorResponse(e) => {
                    return Err(ConnectError::Rejected { addr, message: error_text(&e) });
                }
                _ => return Err(conn.protocol("unexpected message during startup")),
            }
        }
    }

    async fn authenticate(&mut self, endpoint: &Endpoint) -> Result<(), ConnectError> {
        let addr = self.addr.to_string();
        let io_err = |source| ConnectError::Io { addr: addr.clone(), source };
        let password = || {
            endpoint.password().ok_or_else(|| ConnectError::Rejected {
                addr: addr.clone(),
                message: "the server asks for a password; put it in the shard URL or its password_file".into(),
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            match self.read_message().await.map_err(io_err)? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut self.wbuf).map_err(io_err)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(endpoint.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf).map_err(io_err)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mechanisms: Vec<&str> = body.mechanisms().collect().map_err(io_err)?;
                    if !mechanisms.contains(&sasl::SCRAM_SHA_256) {
                        return Err(self.protocol(&format!("no supported SASL mechanism in {mechanisms:?}")));
                    }
                    let s = sasl::ScramSha256::new(password()?.as_bytes(), sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut self.wbuf)
                        .map_err(io_err)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| self.protocol("SASL continue before SASL start"))?;
                    s.update(body.data()).map_err(io_err)?;
                    frontend::sasl_response(s.message(), &mut self.wbuf).map_err(io_err)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| self.protocol("SASL final before SASL start"))?;
                    s.finish(body.data()).map_err(io_err)?;
                    continue;
                }
                Message::ErrorResponse(e) => {
                    return Err(ConnectError::Rejected { addr, message: error_text(&e) });
                }
                _ => return Err(self.protocol("unsupported authentication request")),
            }
            self.flush().await.map_err(io_err)?;
        }
    }

    /// Passthrough: answers the server's challenge with what the client's
    /// own login proved (see passthrough.rs); a cleartext request cannot be
    /// answered, since shardcar never learns the password.
    async fn authenticate_as(&mut self, login: &UserLogin) -> Result<(), ConnectError> {
        let addr = self.addr.to_string();
        let io_err = |source| ConnectError::Io { addr: addr.clone(), source };
        let refuse = |message: String| ConnectError::Rejected { addr: addr.clone(), message };
        let mut scram: Option<ScramClient> = None;
        loop {
            match self.read_message().await.map_err(io_err)? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationMd5Password(body) => match &login.proof {
                    Proof::Md5(stored) => {
                        let answer = md5_response(stored, body.salt());
                        frontend::password_message(answer.as_bytes(), &mut self.wbuf).map_err(io_err)?;
                    }
                    Proof::Scram(_) => {
                        return Err(refuse(format!(
                            "the server asks \"{}\" for md5, but the user's verifier is SCRAM-SHA-256",
                            login.user
                        )));
                    }
                },
                Message::AuthenticationSasl(body) => {
                    let Proof::Scram(keys) = &login.proof else {
                        return Err(refuse(format!(
                            "the server asks \"{}\" for SCRAM-SHA-256, but the user's stored password is md5",
                            login.user
                        )));
                    };
                    let mechanisms: Vec<&str> = body.mechanisms().collect().map_err(io_err)?;
                    if !mechanisms.contains(&sasl::SCRAM_SHA_256) {
                        return Err(self.protocol(&format!("no supported SASL mechanism in {mechanisms:?}")));
                    }
                    let client = ScramClient::new(keys);
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, &client.first(), &mut self.wbuf)
                        .map_err(io_err)?;
                    scram = Some(client);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| self.protocol("SASL continue before SASL start"))?;
                    let answer = s.finish(body.data()).map_err(refuse)?;
                    frontend::sasl_response(&answer, &mut self.wbuf).map_err(io_err)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_ref().ok_or_else(|| self.protocol("SASL final before SASL start"))?;
                    s.verify(body.data()).map_err(refuse)?;
                    continue;
                }
                Message::AuthenticationCleartextPassword => {
                    return Err(refuse(format!(
                        "the server asks \"{}\" for a cleartext password, which shardcar does not know \
                         (passthrough answers md5 and SCRAM-SHA-256)",
                        login.user
                    )));
                }
                Message::ErrorResponse(e) => return Err(refuse(error_text(&e))),
                _ => return Err(self.protocol("unsupported authentication request")),
            }
            self.flush().await.map_err(io_err)?;
        }
    }

    fn protocol(&self, message: &str) -> ConnectError {
        ConnectError::Protocol { addr: self.addr.to_string(), message: message.into() }
    }

    /// Reads and parses one message (startup and control use only).
    async fn read_message(&mut self) -> io::Result<Message> {
        let mut frame = self.read_frame().await?;
        Message::parse(&mut frame)?.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short message"))
    }

    /// Reads one whole message frame. Cancel-safe: partial input stays buffered.
    pub async fn read_frame(&mut self) -> io::Result<BytesMut> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(frame);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(16 * 1024);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                self.broken = true;
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
            }
        }
    }

    /// Queues a Parse message, with this shard's type OIDs for those the
    /// client declared (the default shard's).
    pub fn write_parse(&mut self, parse: &[u8]) {
        let at = self.wbuf.len();
        self.wbuf.extend_from_slice(parse);
        if let Some(oids) = &self.oids {
            oids.localize_parse(&mut self.wbuf[at..]);
        }
    }

    /// The server holds `text` under `name` (empty: its unnamed statement).
    pub fn holds(&self, name: &str, text: &Arc<StatementText>) -> bool {
        if name.is_empty() {
            self.unnamed.as_ref().is_some_and(|t| Arc::ptr_eq(t, text) || **t == **text)
        } else {
            self.prepared.has(name, text)
        }
    }

    /// Keeps `unnamed` true to what the server will hold once `wbuf` is
    /// sent, whoever wrote it (a session, a leg across shards, shardcar's
    /// own SQL): a simple query destroys the unnamed statement, an unnamed
    /// Parse of another text replaces it.
    fn track_unnamed(&mut self) {
        if self.unnamed.as_ref().is_some_and(|text| !unnamed_survives(&self.wbuf, text)) {
            self.unnamed = None;
        }
    }

    /// A frame that is already fully buffered, without waiting.
    pub fn buffered_frame(&mut self) -> io::Result<Option<BytesMut>> {
        let Some(header) = Header::parse(&self.rbuf)? else { return Ok(None) };
        let total = header.len() as usize + 1;
        if self.rbuf.len() < total {
            self.rbuf.reserve(total - self.rbuf.len());
            return Ok(None);
        }
        let mut frame = self.rbuf.split_to(total);
        if let Some(oids) = &self.oids
            && matches!(frame[0], b'T' | b't')
        {
            oids.translate(&mut frame);
        }
        Ok(Some(frame))
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.track_unnamed();
            // The flush matters for TLS only: rustls may hold the last record.
            let r = match self.stream.write_all(&self.wbuf).await {
                Ok(()) => self.stream.flush().await,
                Err(e) => Err(e),
            };
            self.wbuf.clear();
            if r.is_err() {
                self.broken = true;
            }
            r?;
        }
        Ok(())
    }

    /// Runs SQL with the simple protocol and waits for ReadyForQuery; returns
    /// the first error's text. Used for shardcar's own statements (settings,
    /// rollback), whose replies the client never sees.
    pub async fn run_hidden(&mut self, sql: &str) -> io::Result<Result<(), String>> {
        let answer = self.run_control(sql).await?;
        Ok(match answer.error {
            None => Ok(()),
            Some(frame) => Err(frame_error_text(frame)),
        })
    }

    /// Runs shardcar's own SQL (simple protocol) to ReadyForQuery: its rows
    /// as text and its first error as the server sent it.
    pub async fn run_control(&mut self, sql: &str) -> io::Result<Answer> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut answer = Answer::default();
        loop {
            let frame = self.read_frame().await?;
            match frame[0] {
                b'E' if answer.error.is_none() => answer.error = Some(frame),
                b'D' => {
                    let mut frame = frame;
                    if let Some(Message::DataRow(row)) = Message::parse(&mut frame)? {
                        let buf = row.buffer();
                        let values = row
                            .ranges()
                            .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
                            .collect()?;
                        answer.rows.push(values);
                    }
                }
                b'Z' => {
                    self.status = frame.get(5).copied().unwrap_or(b'I');
                    return Ok(answer);
                }
                _ => {}
            }
        }
    }

    /// True when an idle connection can be handed out again: no protocol
    /// state left over and nothing (EOF, a FATAL error) waiting on the socket.
    pub fn is_reusable(&mut self) -> bool {
        if self.broken || self.status != b'I' || !self.rbuf.is_empty() || !self.wbuf.is_empty() {
            return false;
        }
        self.stream.is_quiet()
    }

    /// "TLSv1.3 TLS13_AES_256_GCM_SHA384", or None for a plain connection.
    pub fn encryption(&self) -> Option<String> {
        self.stream.encryption()
    }
}

/// What shardcar's own statement returned.
#[derive(Debug, Default)]
pub struct Answer {
    pub rows: Vec<Vec<Option<String>>>,
    /// The first ErrorResponse, as the server sent it.
    pub error: Option<BytesMut>,
}

impl Answer {
    /// The first column of the first row, when it is not NULL.
    pub fn first_value(&self) -> Option<&str> {
        self.rows.first()?.first()?.as_deref()
    }
}

/// "SEVERITY: message (SQLSTATE)" of a raw ErrorResponse frame.
pub fn frame_error_text(mut frame: BytesMut) -> String {
    match Message::parse(&mut frame) {
        Ok(Some(Message::ErrorResponse(e))) => error_text(&e),
        _ => "an unreadable error".to_string(),
    }
}

/// "SEVERITY: message (SQLSTATE)" of an ErrorResponse.
pub fn error_text(e: &ErrorResponseBody) -> String {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    let mut fields = e.fields();
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    format!("{severity}: {message} ({code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unnamed_statement_survives_only_what_keeps_it() {
        let text = StatementText { sql: "SELECT $1".into(), param_types: vec![23] };
        let parse = |name: &str, sql: &str, types: &[u32]| {
            let mut b = BytesMut::new();
            frontend::parse(name, sql, types.iter().copied(), &mut b).unwrap();
            b
        };
        let mut sync = BytesMut::new();
        frontend::sync(&mut sync);
        let mut query = BytesMut::new();
        frontend::query("SET x = 1", &mut query).unwrap();
        assert!(unnamed_survives(&[parse("", "SELECT $1", &[23]), sync.clone()].concat(), &text));
        assert!(unnamed_survives(&parse("s1", "SELECT 2", &[]), &text), "a named one leaves it");
        assert!(!unnamed_survives(&parse("", "SELECT $1", &[25]), &text), "other types");
        assert!(!unnamed_survives(&parse("", "SELECT 2", &[]), &text));
        assert!(!unnamed_survives(&[sync, query].concat(), &text), "a simple query drops it");
    }

    #[test]
    fn prepared_set_evicts_oldest_first() {
        let mut set = PreparedSet::default();
        let text = |s: &str| Arc::new(StatementText { sql: s.into(), param_types: vec![] });
        set.insert("a".into(), text("1"));
        set.insert("b".into(), text("2"));
        assert!(set.has("a", &text("1")));
        assert!(!set.has("a", &text("other")));
        assert_eq!(set.evict_for_one_more(2), vec!["a".to_string()]);
        assert!(!set.contains_name("a"));
        assert!(set.contains_name("b"));
    }
}
