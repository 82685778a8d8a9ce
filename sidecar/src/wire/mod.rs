//! The client side of the wire: framing, decoding (pgwire's codec, and
//! `fields` for the messages that start every statement), and encoding the
//! replies shardcar writes itself.
//!
//! Frames are split here by their length word and decoded whole, so a
//! message with a lying inner length can never read into the next one; the
//! raw frame is kept so that forwarding stays byte-exact.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::copy::CopyFail;
use pgwire::messages::data::{DataRow, FieldDescription, NoData, ParameterDescription, RowDescription};
use pgwire::messages::extendedquery::{
    Bind, BindComplete, Close, CloseComplete, Describe, Parse, ParseComplete, PortalSuspended,
};
use pgwire::messages::response::{
    CommandComplete, EmptyQueryResponse, ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, GssEncRequest, NegotiateProtocolVersion, ParameterStatus, PasswordMessageFamily,
    SecretKey, SslRequest, Startup,
};
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};
use postgres_protocol::message::backend::Header;
use prometheus::IntCounter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::{ClientLimits, Reservation};
use crate::panics::caught;
use crate::sqlerror::{SqlError, code};
use crate::tls::Stream;

/// Postgres's own limits (pqcomm.h): a few message types may be large.
const LARGE_MESSAGE_LIMIT: usize = 0x3fff_ffff - 1;
const SMALL_MESSAGE_LIMIT: usize = 10_000;

/// One length-delimited frontend message: its type byte and all its bytes.
#[derive(Debug, Clone)]
pub struct Frame {
    pub tag: u8,
    pub raw: Bytes,
}

/// A decoded frontend message, with its raw bytes where it may be forwarded.
#[derive(Debug)]
pub enum ClientMsg {
    Query {
        raw: Bytes,
        sql: String,
    },
    Parse {
        raw: Bytes,
        msg: Parse,
    },
    Bind {
        raw: Bytes,
        msg: Bind,
    },
    Describe {
        raw: Bytes,
        msg: Describe,
    },
    Close {
        raw: Bytes,
        msg: Close,
    },
    Execute {
        raw: Bytes,
        portal: String,
        max_rows: usize,
    },
    Sync {
        raw: Bytes,
    },
    Flush {
        raw: Bytes,
    },
    CopyData {
        raw: Bytes,
    },
    CopyDone {
        raw: Bytes,
    },
    CopyFail {
        raw: Bytes,
        message: String,
    },
    Terminate,
    /// A message whose frame was sound but whose content was not: answered
    /// with this ERROR, as Postgres does, and the session goes on.
    Invalid {
        tag: u8,
        error: SqlError,
    },
}

impl ClientMsg {
    /// Bytes this message holds in memory (for the inbox limit).
    pub fn size(&self) -> usize {
        match self {
            ClientMsg::Query { raw, .. }
            | ClientMsg::Parse { raw, .. }
            | ClientMsg::Describe { raw, .. }
            | ClientMsg::Close { raw, .. }
            | ClientMsg::Execute { raw, .. }
            | ClientMsg::Sync { raw }
            | ClientMsg::Flush { raw }
            | ClientMsg::CopyData { raw }
            | ClientMsg::CopyDone { raw }
            | ClientMsg::CopyFail { raw, .. }
            | ClientMsg::Bind { raw, .. } => raw.len(),
            ClientMsg::Terminate | ClientMsg::Invalid { .. } => 5,
        }
    }

    /// The message's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            ClientMsg::Query { .. } => "Query",
            ClientMsg::Parse { .. } => "Parse",
            ClientMsg::Bind { .. } => "Bind",
            ClientMsg::Describe { .. } => "Describe",
            ClientMsg::Close { .. } => "Close",
            ClientMsg::Execute { .. } => "Execute",
            ClientMsg::Sync { .. } => "Sync",
            ClientMsg::Flush { .. } => "Flush",
            ClientMsg::CopyData { .. } => "CopyData",
            ClientMsg::CopyDone { .. } => "CopyDone",
            ClientMsg::CopyFail { .. } => "CopyFail",
            ClientMsg::Terminate => "Terminate",
            ClientMsg::Invalid { .. } => "an invalid message",
        }
    }

    /// Part of the extended protocol: a failure there skips to the next Sync.
    pub fn is_extended(tag: u8) -> bool {
        matches!(tag, b'P' | b'B' | b'D' | b'C' | b'E')
    }

    /// Decodes a whole frame. A message type that does not exist is FATAL
    /// (nothing after it can be trusted); content that cannot be read is
    /// an ERROR for that message alone, as on Postgres.
    pub fn decode(frame: Frame) -> Result<ClientMsg, SqlError> {
        let tag = frame.tag;
        match Self::decode_content(frame) {
            Err(error) if !error.fatal => Ok(ClientMsg::Invalid { tag, error }),
            decoded => decoded,
        }
    }

    fn decode_content(frame: Frame) -> Result<ClientMsg, SqlError> {
        let raw = frame.raw;
        Ok(match frame.tag {
            b'Q' => ClientMsg::Query { sql: fields::query(&raw)?, raw },
            b'P' => ClientMsg::Parse { msg: fields::parse(&raw)?, raw },
            b'B' => ClientMsg::Bind { msg: fields::bind(&raw)?, raw },
            b'D' => {
                let msg = fields::describe(&raw)?;
                subtype("DESCRIBE", msg.target_type)?;
                ClientMsg::Describe { msg, raw }
            }
            b'C' => {
                let msg = fields::close(&raw)?;
                subtype("CLOSE", msg.target_type)?;
                ClientMsg::Close { msg, raw }
            }
            b'E' => {
                let (portal, max_rows) = fields::execute(&raw)?;
                ClientMsg::Execute { portal, max_rows, raw }
            }
            b'S' => ClientMsg::Sync { raw },
            b'H' => ClientMsg::Flush { raw },
            b'd' => ClientMsg::CopyData { raw },
            b'c' => ClientMsg::CopyDone { raw },
            b'f' => {
                let f: CopyFail = decode(&raw)?;
                ClientMsg::CopyFail { message: f.message, raw }
            }
            b'X' => ClientMsg::Terminate,
            b'F' => {
                return Err(SqlError::new(
                    code::FEATURE_NOT_SUPPORTED,
                    "the FunctionCall protocol message (fast-path, e.g. lo_* functions) is not supported by shardcar",
                )
                .hint("call the function from SQL instead, e.g. SELECT lo_import(...)"));
            }
            other => {
                return Err(SqlError::fatal(
                    code::PROTOCOL_VIOLATION,
                    format!("invalid frontend message type {}", printable(other)),
                ));
            }
        })
    }
}

/// Describe and Close name a statement (`S`) or a portal (`P`).
fn subtype(message: &str, target: u8) -> Result<(), SqlError> {
    match target {
        b'S' | b'P' => Ok(()),
        other => Err(SqlError::new(code::PROTOCOL_VIOLATION, format!("invalid {message} message subtype {other}"))),
    }
}

fn printable(tag: u8) -> String {
    if tag.is_ascii_graphic() { format!("'{}'", tag as char) } else { format!("0x{tag:02x}") }
}

fn context() -> DecodeContext {
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = false;
    ctx
}

/// Decodes one whole frame with pgwire. pgwire's decoders index past the end
/// of a truncated body (a panic); that is caught and turned into a protocol
/// error, and trailing bytes the decoder did not consume are an error too.
fn decode<M: Message>(raw: &Bytes) -> Result<M, SqlError> {
    let mut buf = BytesMut::from(&raw[..]);
    let ctx = context();
    let decoded = caught(|| M::decode(&mut buf, &ctx));
    let malformed = |why: String| fields::malformed(raw[0], why);
    match decoded {
        Ok(Ok(Some(msg))) if buf.is_empty() => Ok(msg),
        Ok(Ok(Some(_))) => Err(malformed(format!("{} bytes after its end", buf.len()))),
        Ok(Ok(None)) => Err(malformed("truncated".into())),
        Ok(Err(e)) => Err(malformed(e.to_string())),
        Err(_) => Err(malformed("fields run past the message length".into())),
    }
}

/// The type and length (after the type byte) of the message `buf` starts
/// with, once its header is there; FATAL when the length is impossible for
/// its type (Postgres's own limits), since nothing after it can be framed.
pub fn frame_header(buf: &[u8]) -> Result<Option<(u8, usize)>, SqlError> {
    let header =
        Header::parse(buf).map_err(|e| SqlError::fatal(code::PROTOCOL_VIOLATION, format!("invalid message: {e}")))?;
    let Some(header) = header else { return Ok(None) };
    let len = header.len() as usize;
    let limit = match header.tag() {
        b'B' | b'F' | b'P' | b'Q' | b'd' => LARGE_MESSAGE_LIMIT,
        _ => SMALL_MESSAGE_LIMIT,
    };
    if len > limit {
        return Err(SqlError::fatal(
            code::PROTOCOL_VIOLATION,
            format!("invalid message length {len} for message type {}", printable(header.tag())),
        ));
    }
    Ok(Some((header.tag(), len)))
}

/// Every whole message at the front of `buf`, decoded, up to the first
/// that cannot be framed (what a session reads, without the socket).
pub fn decode_stream(buf: &mut BytesMut) -> Vec<Result<ClientMsg, SqlError>> {
    let mut out = Vec::new();
    loop {
        match frame_header(buf) {
            Ok(Some((tag, len))) if buf.len() > len => {
                let raw = buf.split_to(len + 1).freeze();
                out.push(ClientMsg::decode(Frame { tag, raw }));
            }
            Ok(_) => return out,
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
}

/// The first packet of a connection.
#[derive(Debug)]
pub enum StartupPacket {
    Ssl,
    Gss,
    Cancel(CancelRequest),
    Startup(Startup),
}

/// A client's TCP stream with its read buffer and pending output.
pub struct ClientConn {
    stream: Stream,
    /// The client's address, read once.
    peer: Option<std::net::SocketAddr>,
    rbuf: BytesMut,
    /// Bytes to write to the client at the next flush.
    pub out: BytesMut,
    received: IntCounter,
    sent: IntCounter,
    limits: Arc<ClientLimits>,
    /// Budget held for the large message being received.
    reserved: Option<Reservation>,
    /// A statement is in flight: its buffers are about to be used again,
    /// so they are kept while the client's next message is awaited.
    pub busy: bool,
}

impl ClientConn {
    /// `received` and `sent` count the bytes that cross the connection;
    /// `limits` bound the messages it may send.
    pub fn new(stream: TcpStream, received: IntCounter, sent: IntCounter, limits: Arc<ClientLimits>) -> ClientConn {
        ClientConn {
            peer: stream.peer_addr().ok(),
            stream: Stream::Plain(stream),
            rbuf: BytesMut::new(),
            out: BytesMut::new(),
            received,
            sent,
            limits,
            reserved: None,
            busy: false,
        }
    }

    /// Reads the untyped first packet (startup, SSL/GSS request or cancel).
    pub async fn read_startup(&mut self) -> Result<Option<StartupPacket>, SqlError> {
        loop {
            if self.rbuf.len() >= 8 {
                let len = i32::from_be_bytes([self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]]);
                if !(8..=SMALL_MESSAGE_LIMIT as i32).contains(&len) {
                    return Err(SqlError::fatal(
                        code::PROTOCOL_VIOLATION,
                        format!("invalid length of startup packet: {len}"),
                    ));
                }
                if self.rbuf.len() >= len as usize {
                    let mut packet = self.rbuf.split_to(len as usize);
                    return decode_startup(&mut packet).map(Some);
                }
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads one typed message; `None` at end of stream. Cancel-safe: partial
    /// input stays in the buffer.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, SqlError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(Some(frame));
            }
            if self.fill().await? == 0 {
                if self.rbuf.is_empty() {
                    return Ok(None);
                }
                return Err(SqlError::fatal(code::PROTOCOL_VIOLATION, "connection closed in the middle of a message"));
            }
        }
    }

    /// A frame already read in full, without waiting.
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, SqlError> {
        let Some((tag, len)) = frame_header(&self.rbuf)? else { return Ok(None) };
        if self.rbuf.len() < len + 1 {
            // Room for a large message is granted before it is buffered.
            if self.reserved.is_none() {
                self.reserved = self.limits.reserve(len + 1)?;
            }
            self.rbuf.reserve(len + 1 - self.rbuf.len());
            return Ok(None);
        }
        self.reserved = None;
        let raw = self.rbuf.split_to(len + 1).freeze();
        Ok(Some(Frame { tag, raw }))
    }

    async fn fill(&mut self) -> Result<usize, SqlError> {
        if self.rbuf.is_empty() && self.out.is_empty() {
            if self.busy {
                // Kept for the reply on its way, unless grown for a large
                // message: that room is not held beyond the message.
                for buf in [&mut self.rbuf, &mut self.out] {
                    if buf.capacity() > spare::LARGEST {
                        *buf = BytesMut::new();
                    }
                }
            } else if let Stream::Plain(tcp) = &self.stream {
                // A client waiting between statements holds no buffers: a
                // thousand idle clients cost a thousand small tasks, not 16 MiB.
                // They go back to this thread's spares, not to the allocator.
                // (Not under TLS: rustls may hold decrypted bytes while the
                // socket is quiet.)
                spare::give(std::mem::take(&mut self.rbuf));
                spare::give(std::mem::take(&mut self.out));
                tcp.readable().await.map_err(io_error)?;
                self.rbuf = spare::take();
                self.out = spare::take();
            }
        }
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(spare::SIZE);
        }
        // `read_buf` (not `try_read_buf`): a short read tells tokio the
        // socket is drained, so the next wait costs no failed recv.
        let n = self.stream.read_buf(&mut self.rbuf).await.map_err(io_error)?;
        self.received.inc_by(n as u64);
        Ok(n)
    }

    /// Reads a password-family message during authentication.
    pub async fn read_password(&mut self) -> Result<Option<PasswordMessageFamily>, SqlError> {
        let Some(frame) = self.read_frame().await? else { return Ok(None) };
        if frame.tag != b'p' {
            return Err(SqlError::fatal(
                code::PROTOCOL_VIOLATION,
                format!("expected a password message, got {}", printable(frame.tag)),
            ));
        }
        // Authentication cannot go on after a message it cannot read.
        decode(&frame.raw).map(Some).map_err(|e| SqlError { fatal: true, ..e })
    }

    pub async fn flush(&mut self) -> Result<(), SqlError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await.map_err(io_error)?;
            // For TLS: rustls may hold the last record until flushed.
            self.stream.flush().await.map_err(io_error)?;
            self.sent.inc_by(self.out.len() as u64);
            self.out.clear();
        }
        Ok(())
    }

    /// Writes a single raw byte (the answer to an SSL/GSS request).
    pub async fn write_byte(&mut self, b: u8) -> Result<(), SqlError> {
        self.stream.write_all(&[b]).await.map_err(io_error)?;
        self.sent.inc();
        Ok(())
    }

    /// Answers an SSLRequest with `S` and performs the TLS handshake.
    pub async fn start_tls(&mut self, acceptor: tokio_rustls::TlsAcceptor) -> Result<(), SqlError> {
        if !self.rbuf.is_empty() {
            // Bytes sent in clear after the request would be taken as if
            // they had come encrypted (CVE-2021-23214).
            return Err(SqlError::fatal(code::PROTOCOL_VIOLATION, "received unencrypted data after SSL request"));
        }
        self.write_byte(b'S').await?;
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Detached) else {
            return Err(SqlError::fatal(code::PROTOCOL_VIOLATION, "encryption requested twice"));
        };
        let tls = acceptor.accept(tcp).await.map_err(|e| {
            SqlError::fatal(code::CONNECTION_FAILURE, format!("TLS handshake with the client failed: {e}"))
        })?;
        self.stream = Stream::Tls(Box::new(tls.into()));
        Ok(())
    }

    /// Protocol and cipher when the client negotiated TLS.
    pub fn encryption(&self) -> Option<String> {
        self.stream.encryption()
    }
    /// The client connects from this machine; on a dual-stack (`[::]`)
    /// listener an IPv4 client shows as `::ffff:127.0.0.1`, which counts.
    pub fn peer_is_loopback(&self) -> bool {
        self.peer.is_some_and(|a| a.ip().to_canonical().is_loopback())
    }

    /// The client's address, as `ip:port`.
    pub fn peer(&self) -> String {
        self.peer.map_or_else(|| "?".into(), |a| a.to_string())
    }
}

fn io_error(e: std::io::Error) -> SqlError {
    SqlError::fatal(code::CONNECTION_FAILURE, format!("client connection: {e}"))
}

/// Decodes a whole first packet (its length checked by the caller).
pub fn decode_startup(packet: &mut BytesMut) -> Result<StartupPacket, SqlError> {
    let invalid = |why: String| SqlError::fatal(code::PROTOCOL_VIOLATION, format!("invalid startup packet: {why}"));
    if SslRequest::is_ssl_request_packet(packet) {
        return Ok(StartupPacket::Ssl);
    }
    if GssEncRequest::is_gss_enc_request_packet(packet) {
        return Ok(StartupPacket::Gss);
    }
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_frontend_ssl = false;
    let total = packet.len();
    let decoded = caught(|| {
        if CancelRequest::is_cancel_request_packet(packet) {
            CancelRequest::decode(packet, &ctx).map(|m| m.map(StartupPacket::Cancel))
        } else {
            Startup::decode(packet, &ctx).map(|m| m.map(StartupPacket::Startup))
        }
    });
    match decoded {
        Ok(Ok(Some(p))) => Ok(p),
        Ok(Ok(None)) => Err(invalid(format!("{total} bytes is too short"))),
        Ok(Err(e)) => Err(invalid(e.to_string())),
        Err(_) => Err(invalid("fields run past the packet length".into())),
    }
}

/// Encoders for the backend messages shardcar writes itself.
mod fields;

pub mod reply {
    use super::*;

    fn put<M: Message>(out: &mut BytesMut, msg: M) {
        // Only shardcar's own small messages come here; a failure would be a bug.
        if let Err(e) = msg.encode(out) {
            tracing::error!("cannot encode a reply: {e}");
        }
    }

    pub fn error(out: &mut BytesMut, e: &SqlError) {
        put(out, ErrorResponse::from(e.to_info()));
    }

    pub fn notice(out: &mut BytesMut, severity: &str, code: &str, message: &str) {
        let mut info = pgwire::error::ErrorInfo::new(severity.into(), code.into(), message.into());
        info.severity_nonlocalized = Some(severity.into());
        put(out, NoticeResponse::from(info));
    }

    pub fn ready(out: &mut BytesMut, status: u8) {
        let status = match status {
            b'T' => TransactionStatus::Transaction,
            b'E' => TransactionStatus::Error,
            _ => TransactionStatus::Idle,
        };
        put(out, ReadyForQuery::new(status));
    }

    pub fn command_complete(out: &mut BytesMut, tag: &str) {
        put(out, CommandComplete::new(tag.into()));
    }

    pub fn empty_query(out: &mut BytesMut) {
        put(out, EmptyQueryResponse::new());
    }

    pub fn parse_complete(out: &mut BytesMut) {
        put(out, ParseComplete::new());
    }

    pub fn bind_complete(out: &mut BytesMut) {
        put(out, BindComplete::new());
    }

    pub fn close_complete(out: &mut BytesMut) {
        put(out, CloseComplete::new());
    }

    pub fn portal_suspended(out: &mut BytesMut) {
        put(out, PortalSuspended::new());
    }

    pub fn no_data(out: &mut BytesMut) {
        put(out, NoData::new());
    }

    pub fn parameter_description(out: &mut BytesMut) {
        put(out, ParameterDescription::new(vec![]));
    }

    /// A one-column text row description (for `SHOW shardcar.*`).
    pub fn text_column(out: &mut BytesMut, name: &str) {
        text_columns(out, &[name]);
    }

    /// A row description of text columns.
    pub fn text_columns(out: &mut BytesMut, names: &[&str]) {
        const TEXT_OID: u32 = 25;
        let fields = names.iter().map(|n| FieldDescription::new((*n).into(), 0, 0, TEXT_OID, -1, -1, 0)).collect();
        put(out, RowDescription::new(fields));
    }

    pub fn text_row(out: &mut BytesMut, value: &str) {
        text_values(out, &[Some(value)]);
    }

    /// A row of text values (`None`: NULL).
    pub fn text_values(out: &mut BytesMut, values: &[Option<&str>]) {
        let mut data = BytesMut::new();
        for v in values {
            match v {
                Some(v) => {
                    data.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    data.extend_from_slice(v.as_bytes());
                }
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        put(out, DataRow::new(data, values.len() as i16));
    }

    pub fn auth(out: &mut BytesMut, msg: Authentication) {
        put(out, msg);
    }

    pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
        put(out, ParameterStatus::new(name.into(), value.into()));
    }

    pub fn backend_key(out: &mut BytesMut, pid: i32, secret: i32) {
        put(out, BackendKeyData::new(pid, SecretKey::I32(secret)));
    }

    pub fn negotiate_protocol(out: &mut BytesMut, unsupported: Vec<String>) {
        put(out, NegotiateProtocolVersion::new(0, unsupported));
    }
}

/// The whole messages at the front of `buf`, each with its type byte and
/// length, in order: what shardcar wrote to a server, read back. A partial
/// message at the end (or an impossible length) ends them.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = 1 + u32::from_be_bytes(rest.get(1..5)?.try_into().ok()?) as usize;
        let msg = rest.get(..len).filter(|m| m.len() >= 5)?;
        rest = &rest[len..];
        Some(msg)
    })
}

/// Appends `bind` (a whole Bind frame, already decoded once) to `out` with
/// its statement name replaced by `statement`: the rest of the frame is
/// copied as it came, not decoded and encoded again.
pub fn put_bind_renamed(out: &mut BytesMut, bind: &[u8], statement: &str) {
    let body = &bind[5..];
    let portal_end = body.iter().position(|&b| b == 0).map_or(body.len(), |i| i + 1);
    let name_end = body[portal_end..].iter().position(|&b| b == 0).map_or(body.len(), |i| portal_end + i + 1);
    let rest = &body[name_end..];
    let len = 4 + portal_end + statement.len() + 1 + rest.len();
    out.reserve(1 + len);
    out.put_u8(b'B');
    out.put_i32(len as i32);
    out.put_slice(&body[..portal_end]);
    out.put_slice(statement.as_bytes());
    out.put_u8(0);
    out.put_slice(rest);
}

/// Encodes a message shardcar writes itself (its fields were checked when built).
pub fn encode<M: Message>(buf: &mut BytesMut, msg: M) {
    if let Err(e) = msg.encode(buf) {
        tracing::error!("cannot encode a message: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_the_whole_frames_at_the_front() {
        let sync = [b'S', 0, 0, 0, 4];
        let execute = [b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0];
        let buf = [&sync[..], &execute, &sync[..3]].concat();
        assert_eq!(messages(&buf).collect::<Vec<_>>(), [&sync[..], &execute[..]], "a partial one is left");
        let impossible = [b'S', 0, 0, 0, 2, b'S', 0, 0, 0, 4];
        assert_eq!(messages(&impossible).count(), 0, "a length below its own four bytes ends them");
    }

    fn frame(tag: u8, body: &[u8]) -> Frame {
        let mut raw = vec![tag];
        raw.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        raw.extend_from_slice(body);
        Frame { tag, raw: raw.into() }
    }

    #[test]
    fn a_renamed_bind_is_the_bind_pgwire_would_encode() {
        let bind = |statement: &str| {
            Bind::new(
                Some("portal".into()),
                Some(statement.into()),
                vec![0, 1],
                vec![Some(Bytes::from_static(b"42")), None, Some(Bytes::from_static(b"\0\x01"))],
                vec![1],
            )
        };
        let mut raw = BytesMut::new();
        encode(&mut raw, bind("client_stmt"));
        let mut want = BytesMut::new();
        encode(&mut want, bind("sc_7"));
        let mut got = BytesMut::new();
        put_bind_renamed(&mut got, &raw, "sc_7");
        assert_eq!(got, want);
    }

    /// The ERROR a message whose content cannot be read is answered with.
    fn invalid(tag: u8, body: &[u8]) -> SqlError {
        match ClientMsg::decode(frame(tag, body)) {
            Ok(ClientMsg::Invalid { tag: t, error }) if t == tag => {
                assert!(!error.fatal, "an ERROR, not FATAL: {}", error.message);
                error
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_bind_is_a_protocol_error_not_a_panic() {
        assert_eq!(invalid(b'B', b"\0s1\0\0").code, code::PROTOCOL_VIOLATION);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let err = invalid(b'E', b"\0\0\0\0\0junk");
        assert!(err.message.contains("after its end"), "{}", err.message);
    }

    #[test]
    fn describe_and_close_name_a_statement_or_a_portal() {
        assert!(invalid(b'D', b"Xname\0").message.contains("DESCRIBE message subtype"));
        assert!(invalid(b'C', b"Xname\0").message.contains("CLOSE message subtype"));
    }

    #[test]
    fn an_unknown_message_type_is_fatal() {
        assert!(ClientMsg::decode(frame(b'z', b"")).unwrap_err().fatal);
    }

    #[test]
    fn query_keeps_raw_bytes() {
        let f = frame(b'Q', b"SELECT 1\0");
        let raw = f.raw.clone();
        match ClientMsg::decode(f).unwrap() {
            ClientMsg::Query { raw: r, sql } => {
                assert_eq!(sql, "SELECT 1");
                assert_eq!(r, raw);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Inputs fuzzing found (`sidecar/fuzz/regressions/client_messages`):
    /// each decodes to messages or errors, with no panic escaping (as the
    /// `client_messages` fuzz target checks).
    #[test]
    fn inputs_the_fuzzer_found_decode_without_panicking() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/client_messages");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            let _ = decode_startup(&mut BytesMut::from(&data[..]));
            for decoded in decode_stream(&mut BytesMut::from(&data[..])) {
                if let Err(e) = decoded {
                    assert!(e.fatal, "a non-fatal error comes back as ClientMsg::Invalid");
                }
            }
            seen += 1;
        }
        assert!(seen > 0, "no inputs in {}", dir.display());
    }

    #[test]
    fn non_utf8_query_is_refused() {
        assert_eq!(invalid(b'Q', b"SELECT '\xe9'\0").code, code::CHARACTER_NOT_IN_REPERTOIRE);
    }
}

/// Client buffers between statements, kept per thread: a session that
/// goes idle gives its read and write buffers back and takes them again on
/// its next message, instead of an allocation (and its growth) each time.
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    /// What a buffer starts with: a statement and its reply, usually.
    pub const SIZE: usize = 8 * 1024;
    /// Kept per thread at most (128 KiB of idle buffers per thread).
    const KEEP: usize = 16;
    /// Larger buffers (a big result, a COPY) are not kept.
    pub const LARGEST: usize = 64 * 1024;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    pub fn give(mut buf: BytesMut) {
        buf.clear();
        // Only a buffer no frame still points into can be written again
        // from its start (`try_reclaim`), and only those are worth keeping.
        if !buf.try_reclaim(SIZE) || buf.capacity() > LARGEST {
            return;
        }
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < KEEP {
                spare.push(buf);
            }
        });
    }

    pub fn take() -> BytesMut {
        SPARE.with_borrow_mut(Vec::pop).unwrap_or_else(|| BytesMut::with_capacity(SIZE))
    }
}
