//! The replies the client is owed, in order: the one path every byte to
//! the client takes.
//!
//! Every message sent to a server — the client's, or one shardcar injected
//! (a re-prepare, a deferred BEGIN) — gets an entry naming the shard that
//! owes its replies, how they end and whether the client sees them.
//! Replies shardcar makes itself (a ParseComplete for a statement already
//! prepared, a ReadyForQuery) sit in the same queue, so the client receives
//! everything in protocol order however many servers answer. The session
//! reads only from the server that owes the entry at the head. After an
//! error in the extended protocol Postgres skips everything up to the next
//! Sync; the queue does the same and reports what was skipped so the
//! session can undo what it assumed.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;

use super::prepared::{Effect, Prepared};
use crate::classify::Facts;
use crate::scatter::frames::command_tag;
use crate::sqlerror::SqlError;
use crate::telemetry::stages::{InFlight, ServerError};
use crate::topology::ShardId;
use crate::wire::reply;

/// How the replies to one sent message end.
#[derive(Debug)]
pub enum Reply {
    Parse,
    Bind,
    Close,
    /// Describe of a statement: the server's parameter types are kept on it.
    DescribeStatement(Option<Arc<Prepared>>),
    DescribePortal,
    /// Execute of a portal, timed for telemetry (with its statement's facts).
    Execute(Box<InFlight>),
    /// Execute of shardcar's own BEGIN, turning a batch into a block.
    Begin,
    Sync,
    /// A simple query; `done` counts its completed statements. Shardcar's
    /// own (a settings change, a deferred BEGIN) are not timed.
    Query {
        facts: Arc<Facts>,
        done: usize,
        flight: Option<Box<InFlight>>,
    },
}

#[derive(Debug)]
pub enum EntryKind {
    /// Replies come from the server; `hidden` ones never reach the client
    /// (except errors, which concern whatever follows).
    Backend { reply: Reply, hidden: bool },
    /// Replies shardcar makes itself, released when they reach the head.
    Synthetic(BytesMut),
    /// The client's ReadyForQuery, which the session writes (with the
    /// transaction status of all its shards) when it reaches the head.
    Ready,
    /// An injected failure (a Describe of a portal that cannot exist) that
    /// aborts the server's transaction like the client's error would have;
    /// the server's error is replaced by this one (`None`: swallowed).
    Abort(Option<SqlError>),
}

#[derive(Debug)]
pub struct Entry {
    /// The shard whose server owes the replies; `None` for shardcar's own.
    pub shard: Option<ShardId>,
    pub kind: EntryKind,
    /// What to apply when the message's replies complete without error.
    pub on_success: Option<Effect>,
    /// What to undo when the message fails or is skipped after an earlier error.
    pub undo: Vec<Effect>,
}

impl Entry {
    pub fn backend(shard: ShardId, reply: Reply) -> Entry {
        Entry {
            shard: Some(shard),
            kind: EntryKind::Backend { reply, hidden: false },
            on_success: None,
            undo: Vec::new(),
        }
    }

    pub fn hidden(shard: ShardId, reply: Reply) -> Entry {
        Entry {
            shard: Some(shard),
            kind: EntryKind::Backend { reply, hidden: true },
            on_success: None,
            undo: Vec::new(),
        }
    }

    pub fn synthetic(frames: BytesMut) -> Entry {
        Entry { shard: None, kind: EntryKind::Synthetic(frames), on_success: None, undo: Vec::new() }
    }

    pub fn ready() -> Entry {
        Entry { shard: None, kind: EntryKind::Ready, on_success: None, undo: Vec::new() }
    }

    pub fn abort(shard: ShardId, error: Option<SqlError>) -> Entry {
        Entry { shard: Some(shard), kind: EntryKind::Abort(error), on_success: None, undo: Vec::new() }
    }

    pub fn on_success(mut self, effect: Effect) -> Entry {
        self.on_success = Some(effect);
        self
    }

    pub fn undo(mut self, effects: Vec<Effect>) -> Entry {
        self.undo = effects;
        self
    }

    fn is_sync(&self) -> bool {
        matches!(self.kind, EntryKind::Backend { reply: Reply::Sync, .. })
    }
}

/// What happened while replies were relayed; the session acts on these.
#[derive(Debug)]
pub enum Event {
    Succeeded(Effect),
    Undone(Effect),
    /// A statement finished; `committed`: its tag was COMMIT (a COMMIT
    /// of a failed transaction says ROLLBACK).
    StatementDone {
        shard: ShardId,
        facts: Arc<Facts>,
        index: usize,
        committed: bool,
    },
    /// A server's ReadyForQuery (`shard` set) or the client's owed one
    /// (`client`); the session writes the client's.
    Ready {
        shard: Option<ShardId>,
        status: u8,
        client: bool,
    },
    /// The server waits for COPY data from the client.
    /// `extended`: it began with Execute, and a Sync must follow CopyDone.
    CopyIn {
        shard: ShardId,
        extended: bool,
    },
    /// A server reported an error; `skips` when Postgres now skips the
    /// client's messages up to Sync (an extended-protocol message failed).
    Error {
        shard: ShardId,
        fatal: bool,
        skips: bool,
    },
    /// A client statement's last reply arrived (or its connection was lost).
    Finished(Box<InFlight>),
}

/// A server sent something the queue did not expect: the connection's
/// state is unknown and it must not be reused.
#[derive(Debug, thiserror::Error)]
#[error("unexpected message '{}' from the server ({why})", *.tag as char)]
pub struct Desync {
    pub tag: u8,
    pub why: &'static str,
}

#[derive(Debug, Default)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    /// A server is discarding messages until the next Sync.
    skipping: bool,
    /// The client's session outlives a server connection that fails (no
    /// transaction is open on it): a FATAL reaches the client as an ERROR.
    pub survive_fatal: bool,
    /// A FATAL error was passed to the client (as FATAL or ERROR).
    pub fatal_told: bool,
}

impl Outbox {
    /// The session's outbox: a server's FATAL error ends only that server's connection.
    pub fn surviving_fatal() -> Outbox {
        Outbox { survive_fatal: true, ..Outbox::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The shard whose server owes the entry at the head (after what
    /// shardcar answers itself): the one to read from next.
    pub fn waiting_on(&self) -> Option<ShardId> {
        self.entries.front().and_then(|e| match e.kind {
            EntryKind::Backend { .. } | EntryKind::Abort(_) => e.shard,
            EntryKind::Synthetic(_) | EntryKind::Ready => None,
        })
    }

    /// Replies are still due from `shard`'s server.
    pub fn owes(&self, shard: ShardId) -> bool {
        self.entries.iter().any(|e| e.shard == Some(shard))
    }

    /// A client ReadyForQuery is still owed.
    pub fn owes_ready(&self) -> bool {
        self.entries.iter().any(|e| match &e.kind {
            EntryKind::Ready => true,
            EntryKind::Backend { reply: Reply::Sync | Reply::Query { .. }, hidden } => !hidden,
            _ => false,
        })
    }

    /// True while a server ignores everything up to the next Sync.
    #[cfg(test)]
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    pub fn push(&mut self, entry: Entry, events: &mut Vec<Event>) {
        if self.skipping && !entry.is_sync() && !matches!(entry.kind, EntryKind::Ready) {
            // Postgres will skip the message this entry stands for.
            events.extend(entry.undo.into_iter().map(Event::Undone));
            return;
        }
        if entry.is_sync() {
            self.skipping = false;
        }
        self.entries.push_back(entry);
    }

    /// Puts `entries` at the head, in order: replies a server owes before
    /// anything queued (shardcar's own messages sent ahead of the rest).
    pub fn push_front(&mut self, entries: Vec<Entry>) {
        for entry in entries.into_iter().rev() {
            self.entries.push_front(entry);
        }
    }

    /// Forgets what `shard` owes (its connection is gone), reporting what to
    /// undo; statements in flight finish with a connection error. Returns
    /// whether a client ReadyForQuery was among what it owed.
    pub fn abandon(&mut self, shard: ShardId, events: &mut Vec<Event>) -> bool {
        let mut ready_owed = false;
        let mut kept = VecDeque::with_capacity(self.entries.len());
        for entry in self.entries.drain(..) {
            if entry.shard != Some(shard) {
                kept.push_back(entry);
                continue;
            }
            events.extend(entry.undo.into_iter().map(Event::Undone));
            let EntryKind::Backend { reply, hidden } = entry.kind else { continue };
            ready_owed |= !hidden && matches!(reply, Reply::Sync | Reply::Query { .. });
            if let Reply::Execute(mut flight) | Reply::Query { flight: Some(mut flight), .. } = reply {
                flight.error.get_or_insert(ServerError {
                    code: crate::sqlerror::code::CONNECTION_FAILURE.into(),
                    message: "lost the connection to the server".into(),
                });
                events.push(Event::Finished(flight));
            }
        }
        self.entries = kept;
        self.skipping = false;
        ready_owed
    }

    /// Writes what shardcar answers itself once it reaches the head; stops
    /// at the client's ReadyForQuery (the session writes it).
    pub fn release_synthetic(&mut self, out: &mut BytesMut, events: &mut Vec<Event>) {
        loop {
            match self.entries.front().map(|e| &e.kind) {
                Some(EntryKind::Synthetic(_)) => {
                    let Some(entry) = self.entries.pop_front() else { break };
                    if let EntryKind::Synthetic(frames) = entry.kind {
                        out.extend_from_slice(&frames);
                    }
                    events.extend(entry.on_success.map(Event::Succeeded));
                }
                Some(EntryKind::Ready) => {
                    self.entries.pop_front();
                    events.push(Event::Ready { shard: None, status: b'I', client: true });
                    return;
                }
                _ => return,
            }
        }
    }

    /// Relays one frame from `shard`'s server: to `out` when the client
    /// should see it. True when it ended in a ReadyForQuery (the session
    /// then acts before anything more is relayed).
    pub fn on_frame(
        &mut self,
        shard: ShardId,
        frame: &[u8],
        out: &mut BytesMut,
        events: &mut Vec<Event>,
    ) -> Result<bool, Desync> {
        let tag = frame[0];
        let head = self.entries.front();
        if head.and_then(|e| e.shard) != Some(shard) {
            // Only asynchronous messages may come from a server that owes nothing now.
            return match tag {
                b'S' | b'A' => {
                    out.extend_from_slice(frame);
                    Ok(false)
                }
                b'N' => Ok(false),
                b'E' if is_fatal(frame) => Ok(false),
                _ => Err(Desync { tag, why: "its server owes nothing now" }),
            };
        }
        let hidden = matches!(head, Some(Entry { kind: EntryKind::Backend { hidden: true, .. }, .. }));
        match tag {
            // Asynchronous messages: notices belong to the statement that
            // raised them; parameter changes and notifications always matter.
            b'N' => {
                if !hidden {
                    out.extend_from_slice(frame);
                }
                return Ok(false);
            }
            b'S' | b'A' => {
                out.extend_from_slice(frame);
                return Ok(false);
            }
            b'E' => return self.on_error(shard, frame, out, events).map(|()| false),
            _ => {}
        }
        let Some(head) = self.entries.front_mut() else {
            return Err(Desync { tag, why: "nothing was outstanding" });
        };
        let EntryKind::Backend { reply, hidden } = &mut head.kind else {
            return Err(Desync { tag, why: "an injected failure was expected" });
        };
        let hidden = *hidden;
        if !hidden && tag != b'Z' {
            out.extend_from_slice(frame);
        }
        let mut ready = false;
        let extended = matches!(reply, Reply::Execute(_));
        let complete = match (reply, tag) {
            (Reply::Parse, b'1') | (Reply::Bind, b'2') | (Reply::Close, b'3') => true,
            (Reply::DescribeStatement(prepared), b't') => {
                if let Some(p) = prepared
                    && let Some(types) = parameter_types(frame)
                {
                    let _ = p.described_types.set(types);
                }
                false
            }
            (Reply::DescribeStatement(_) | Reply::DescribePortal, b'T' | b'n') => true,
            (Reply::Execute(_) | Reply::Query { .. }, b'D' | b'T' | b'H' | b'd' | b'c' | b'W') => false,
            (Reply::Execute(_) | Reply::Query { .. }, b'G') => {
                // The server ignores Syncs in COPY mode: those already sent
                // to it get no reply, and the client no ReadyForQuery for
                // them; the Sync after CopyDone ends the batch.
                let mut first = true;
                self.entries.retain(|e| {
                    std::mem::take(&mut first)
                        || !(e.is_sync() && e.shard == Some(shard) || extended && matches!(e.kind, EntryKind::Ready))
                });
                events.push(Event::CopyIn { shard, extended });
                false
            }
            (Reply::Execute(flight), b'C') => {
                events.push(Event::StatementDone {
                    shard,
                    facts: flight.facts.clone(),
                    index: 0,
                    committed: command_tag(frame) == "COMMIT",
                });
                true
            }
            (Reply::Execute(_), b'I' | b's') => true,
            (Reply::Begin, b'C') => true,
            (Reply::Query { facts, done, .. }, b'C') => {
                events.push(Event::StatementDone {
                    shard,
                    facts: facts.clone(),
                    index: *done,
                    committed: command_tag(frame) == "COMMIT",
                });
                *done += 1;
                false
            }
            (Reply::Query { .. }, b'I') => false,
            (Reply::Query { .. } | Reply::Sync, b'Z') => {
                let status = frame.get(5).copied().unwrap_or(b'I');
                events.push(Event::Ready { shard: Some(shard), status, client: !hidden });
                ready = true;
                true
            }
            _ => return Err(Desync { tag, why: "not a reply to what was sent" }),
        };
        if complete && let Some(entry) = self.entries.pop_front() {
            events.extend(entry.on_success.map(Event::Succeeded));
            if let EntryKind::Backend {
                reply: Reply::Execute(flight) | Reply::Query { flight: Some(flight), .. },
                ..
            } = entry.kind
            {
                events.push(Event::Finished(flight));
            }
        }
        Ok(ready)
    }

    fn on_error(
        &mut self,
        shard: ShardId,
        frame: &[u8],
        out: &mut BytesMut,
        events: &mut Vec<Event>,
    ) -> Result<(), Desync> {
        let fatal = is_fatal(frame);
        let survive_fatal = self.survive_fatal;
        let Some(head) = self.entries.front_mut() else {
            return Err(Desync { tag: b'E', why: "nothing was outstanding" });
        };
        match &mut head.kind {
            EntryKind::Abort(Some(err)) => reply::error(out, err),
            EntryKind::Abort(None) => {}
            // A simple query's error, or a failed commit at Sync: the entry
            // still ends with ReadyForQuery.
            EntryKind::Backend { reply: Reply::Query { flight, .. }, .. } => {
                if let Some(f) = flight {
                    f.error.get_or_insert_with(|| server_error(frame));
                }
                forward(frame, fatal && survive_fatal, out);
                self.fatal_told |= fatal;
                events.push(Event::Error { shard, fatal, skips: false });
                return Ok(());
            }
            EntryKind::Backend { reply: Reply::Sync, .. } => {
                forward(frame, fatal && survive_fatal, out);
                self.fatal_told |= fatal;
                events.push(Event::Error { shard, fatal, skips: false });
                return Ok(());
            }
            _ => forward(frame, fatal && survive_fatal, out),
        }
        self.fatal_told |= fatal;
        // An extended-protocol message failed: this server now skips to its
        // Sync. The first statement among what is skipped is the one that
        // failed (its Parse, Bind or Execute); the rest never ran. Other
        // servers' replies up to then are read but not shown: for the
        // client, nothing ran after the error — a simple query in between
        // neither (Postgres ignores it: no reply, not even ReadyForQuery).
        let mut error = Some(server_error(frame));
        let mut kept = VecDeque::with_capacity(self.entries.len());
        let mut own_sync_seen = false;
        for mut entry in self.entries.drain(..) {
            if own_sync_seen {
                kept.push_back(entry);
                continue;
            }
            if entry.shard == Some(shard) && entry.is_sync() {
                own_sync_seen = true;
                kept.push_back(entry);
                continue;
            }
            if entry.shard == Some(shard) || entry.shard.is_none() {
                events.extend(entry.undo.into_iter().map(Event::Undone));
                if let EntryKind::Backend { reply: Reply::Execute(mut flight), .. } = entry.kind
                    && let Some(e) = error.take()
                {
                    flight.error = Some(e);
                    events.push(Event::Finished(flight));
                }
                continue;
            }
            // Another server's message: it ran, but the client must not see it.
            let (client, conn): (Vec<Effect>, Vec<Effect>) =
                std::mem::take(&mut entry.undo).into_iter().partition(|e| !e.on_connection());
            events.extend(client.into_iter().map(Event::Undone));
            entry.undo = conn;
            match &mut entry.kind {
                EntryKind::Backend { hidden, .. } => *hidden = true,
                EntryKind::Abort(e) => *e = None,
                _ => {}
            }
            kept.push_back(entry);
        }
        self.entries = kept;
        self.skipping = !own_sync_seen;
        // Client messages up to its Sync are skipped, unless that Sync was
        // taken already (its batch was sent whole).
        events.push(Event::Error { shard, fatal, skips: !own_sync_seen });
        Ok(())
    }
}

/// Relays a server's error, as an ERROR when the session outlives a FATAL one.
fn forward(frame: &[u8], downgrade_fatal: bool, out: &mut BytesMut) {
    if downgrade_fatal {
        downgrade(frame, out);
    } else {
        out.extend_from_slice(frame);
    }
}

/// The SQLSTATE and message of an ErrorResponse.
pub(super) fn server_error(frame: &[u8]) -> ServerError {
    use fallible_iterator::FallibleIterator;
    let mut error = ServerError { code: String::new(), message: String::new() };
    if let Some(Message::ErrorResponse(body)) = parse(frame) {
        let mut fields = body.fields();
        while let Ok(Some(f)) = fields.next() {
            match f.type_() {
                b'C' => error.code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                b'M' => error.message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                _ => {}
            }
        }
    }
    error
}

/// The types of a ParameterDescription.
pub fn parameter_types(frame: &[u8]) -> Option<Vec<u32>> {
    use fallible_iterator::FallibleIterator;
    match parse(frame) {
        Some(Message::ParameterDescription(d)) => d.parameters().collect().ok(),
        _ => None,
    }
}

fn parse(frame: &[u8]) -> Option<Message> {
    Message::parse(&mut BytesMut::from(frame)).ok().flatten()
}

/// The server's FATAL error as an ERROR with the same fields: the server
/// connection ends, the client's session does not.
fn downgrade(frame: &[u8], out: &mut BytesMut) {
    use fallible_iterator::FallibleIterator;
    let Some(Message::ErrorResponse(body)) = parse(frame) else {
        out.extend_from_slice(frame);
        return;
    };
    let mut fields = Vec::new();
    let mut it = body.fields();
    while let Ok(Some(f)) = it.next() {
        let value = match f.type_() {
            b'S' | b'V' => "ERROR".to_string(),
            _ => String::from_utf8_lossy(f.value_bytes()).into_owned(),
        };
        fields.push((f.type_(), value));
    }
    if !fields.iter().any(|(t, _)| *t == b'H') {
        fields.push((b'H', "the server ended shardcar's connection; the next statement gets a new one".into()));
    }
    if let Err(e) = pgwire::messages::Message::encode(&pgwire::messages::response::ErrorResponse::new(fields), out) {
        tracing::error!("cannot encode an error: {e}");
    }
}

pub(super) fn is_fatal(frame: &[u8]) -> bool {
    use fallible_iterator::FallibleIterator;
    let Some(Message::ErrorResponse(body)) = parse(frame) else { return false };
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        if f.type_() == b'V' || f.type_() == b'S' {
            return matches!(f.value_bytes(), b"FATAL" | b"PANIC");
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const S0: ShardId = ShardId::at(0);

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn error() -> Vec<u8> {
        msg(b'E', b"SERROR\0C42601\0Mboom\0\0")
    }

    /// A statement in flight to a server that is never contacted.
    fn flight() -> Box<InFlight> {
        let cfg = crate::config::Config::parse(
            r#"
            [[users]]
            name = "u"
            trust = true
            [[shards]]
            name = "s0"
            primary = "postgres://u@127.0.0.1:1/db"
            [routing]
            default_shard = "s0"
            "#,
        )
        .unwrap();
        let topology = Arc::new(crate::topology::Topology::new(&cfg));
        let pools = crate::pool::Pools::new(&cfg, topology, &crate::metrics::Metrics::new()).unwrap();
        let stages = crate::telemetry::stages::Stages::new(std::time::Instant::now());
        InFlight::new(stages, Arc::new(Facts::default()), pools.shard(S0).primary().clone(), Arc::default())
    }

    fn finished(events: &[Event]) -> Vec<Option<String>> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Finished(f) => Some(f.error.as_ref().map(|e| e.code.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_failed_bind_fails_its_statement_and_later_ones_never_ran() {
        let mut ob = Outbox::default();
        let mut ev = Vec::new();
        ob.push(Entry::backend(S0, Reply::Bind), &mut ev);
        ob.push(Entry::backend(S0, Reply::Execute(flight())), &mut ev);
        ob.push(Entry::backend(S0, Reply::Bind), &mut ev);
        ob.push(Entry::backend(S0, Reply::Execute(flight())), &mut ev);
        ob.push(Entry::backend(S0, Reply::Sync), &mut ev);
        ob.on_frame(S0, &error(), &mut BytesMut::new(), &mut ev).unwrap();
        assert_eq!(finished(&ev), [Some("42601".to_string())]);
        ev.clear();
        ob.push(Entry::backend(S0, Reply::Execute(flight())), &mut ev);
        ob.on_frame(S0, &msg(b'Z', b"I"), &mut BytesMut::new(), &mut ev).unwrap();
        ob.on_frame(S0, &msg(b'C', b"SELECT 1\0"), &mut BytesMut::new(), &mut ev).unwrap();
        assert_eq!(finished(&ev), [None]);
    }

    #[test]
    fn synthetic_replies_keep_protocol_order() {
        let mut ob = Outbox::default();
        let mut ev = Vec::new();
        let mut out = BytesMut::new();
        let mut parse_complete = BytesMut::new();
        reply::parse_complete(&mut parse_complete);
        ob.push(Entry::synthetic(parse_complete), &mut ev);
        ob.push(Entry::backend(S0, Reply::Bind), &mut ev);
        ob.push(Entry::backend(S0, Reply::Sync), &mut ev);
        ob.release_synthetic(&mut out, &mut ev);
        ob.on_frame(S0, &msg(b'2', b""), &mut out, &mut ev).unwrap();
        ob.on_frame(S0, &msg(b'Z', b"I"), &mut out, &mut ev).unwrap();
        assert_eq!(&out[..], [msg(b'1', b""), msg(b'2', b"")].concat());
        assert!(ev.iter().any(|e| matches!(e, Event::Ready { client: true, .. })));
        assert!(ob.is_empty());
    }

    #[test]
    fn error_skips_to_sync_and_reports_undos() {
        let mut ob = Outbox::default();
        let mut ev = Vec::new();
        let mut out = BytesMut::new();
        ob.push(Entry::backend(S0, Reply::Parse).undo(vec![Effect::ForgetStatement("a".into())]), &mut ev);
        ob.push(Entry::synthetic(BytesMut::from(&b"X"[..])).undo(vec![Effect::ForgetStatement("b".into())]), &mut ev);
        ob.push(Entry::backend(S0, Reply::Sync), &mut ev);
        ob.on_frame(S0, &error(), &mut out, &mut ev).unwrap();
        ob.on_frame(S0, &msg(b'Z', b"I"), &mut out, &mut ev).unwrap();
        // The client's ReadyForQuery is the session's to write, with the
        // status of all its servers.
        assert_eq!(&out[..], error());
        assert!(ev.iter().any(|e| matches!(e, Event::Ready { shard: Some(S0), client: true, .. })));
        let undone: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Undone(Effect::ForgetStatement(n)) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(undone, ["a", "b"]);
    }

    #[test]
    fn hidden_replies_are_swallowed_but_errors_are_not() {
        let mut ob = Outbox::default();
        let mut ev = Vec::new();
        let mut out = BytesMut::new();
        ob.push(Entry::hidden(S0, Reply::Parse), &mut ev);
        ob.push(Entry::backend(S0, Reply::Bind), &mut ev);
        ob.push(Entry::backend(S0, Reply::Sync), &mut ev);
        ob.on_frame(S0, &msg(b'1', b""), &mut out, &mut ev).unwrap();
        assert!(out.is_empty());
        ob.on_frame(S0, &error(), &mut out, &mut ev).unwrap();
        assert_eq!(&out[..], error());
    }

    #[test]
    fn abort_replaces_the_backend_error_and_skipping_outlives_a_flush() {
        let mut ob = Outbox::default();
        let mut ev = Vec::new();
        let mut out = BytesMut::new();
        ob.push(Entry::abort(S0, Some(SqlError::new("0A000", "nope"))), &mut ev);
        ob.on_frame(S0, &error(), &mut out, &mut ev).unwrap();
        assert!(ob.skipping() && ob.is_empty());
        let mut ours = BytesMut::new();
        reply::error(&mut ours, &SqlError::new("0A000", "nope"));
        assert_eq!(out, ours);
        ob.push(Entry::backend(S0, Reply::Bind).undo(vec![Effect::ForgetStatement("c".into())]), &mut ev);
        assert!(ob.is_empty());
        ob.push(Entry::backend(S0, Reply::Sync), &mut ev);
        assert!(!ob.skipping());
    }

    #[test]
    fn syncs_sent_before_copy_in_started_get_no_reply() {
        let mut ob = Outbox::default();
        let mut ev = Vec::new();
        ob.push(Entry::backend(S0, Reply::Execute(flight())), &mut ev);
        ob.push(Entry::backend(S0, Reply::Sync), &mut ev);
        ob.on_frame(S0, &msg(b'G', b"\0\0\0"), &mut BytesMut::new(), &mut ev).unwrap();
        assert!(matches!(ev[..], [Event::CopyIn { shard: S0, extended: true }]));
        ob.on_frame(S0, &msg(b'C', b"COPY 1\0"), &mut BytesMut::new(), &mut ev).unwrap();
        assert!(ob.is_empty());
    }

    #[test]
    fn a_fatal_error_reaches_a_surviving_session_as_an_error() {
        let fatal = msg(b'E', b"SFATAL\0VFATAL\0C57P01\0Mterminating connection\0\0");
        for survive in [true, false] {
            let mut ob = Outbox { survive_fatal: survive, ..Outbox::default() };
            let mut ev = Vec::new();
            let mut out = BytesMut::new();
            ob.push(
                Entry::backend(S0, Reply::Query { facts: Arc::new(Facts::default()), done: 0, flight: None }),
                &mut ev,
            );
            ob.on_frame(S0, &fatal, &mut out, &mut ev).unwrap();
            assert!(ob.fatal_told);
            let text = String::from_utf8_lossy(&out);
            assert_eq!(text.contains("SERROR"), survive, "{text}");
            assert_eq!(text.contains("new one"), survive, "{text}");
            assert!(text.contains("C57P01"));
        }
    }

    #[test]
    fn unexpected_message_is_a_desync() {
        let mut ob = Outbox::default();
        let mut ev = Vec::new();
        ob.push(Entry::backend(S0, Reply::Parse), &mut ev);
        assert!(ob.on_frame(S0, &msg(b'2', b""), &mut BytesMut::new(), &mut ev).is_err());
    }
}
