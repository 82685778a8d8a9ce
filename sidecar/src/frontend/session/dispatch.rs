//! The one place a statement's fate is decided: answered here, the end of a
//! transaction across shards, sent to one shard's server, run on several
//! and merged, or a COPY split by key. Both protocols come here, once per
//! statement; routing runs once and its `Route` carries everything the
//! statement needs later. Also where a shard's server joins the session.

use std::sync::Arc;
use std::time::Instant;

use super::Session;
use super::conns::Held;
use super::cursors::Cursor;
use super::fan_out::Spread;
use super::local::aborted;
use super::outbox::{Entry, Reply};
use super::state::{Block, Txn};
use crate::classify::params::Params;
use crate::classify::shape::CursorUse;
use crate::classify::{Facts, Kind};
use crate::policy::{Pinned, Refusal};
use crate::pool::Role;
use crate::route::merge::FanOut;
use crate::route::{self, CopySplit, Target};
use crate::sqlerror::{SqlError, code};
use crate::telemetry::stages::{Stage, Stages};
use crate::topology::ShardId;

/// What happens to a statement.
pub(super) enum Action {
    /// shardcar answers it (its own variables, a deferred BEGIN, ...).
    Local,
    /// COMMIT (`true`) or ROLLBACK of a transaction across shards.
    EndBlock(bool),
    /// SAVEPOINT, RELEASE or ROLLBACK TO in a transaction across shards.
    Savepoint,
    /// Sent as it is to one shard's server.
    Forward { shard: ShardId, role: Role },
    /// Run on several shards (or on one outside the transaction), answers
    /// merged as its plan says.
    Scatter(Spread),
    /// A COPY FROM STDIN whose rows are placed one by one.
    CopySplit(Arc<CopySplit>),
    /// DECLARE of a cursor whose query runs on several shards: kept here.
    Declare(Spread),
    /// FETCH, MOVE or CLOSE of a cursor kept here.
    Cursor(CursorUse),
}

impl Session {
    /// Decides what happens to the statement(s) of `facts`, bound to
    /// `params`; `written` is the simple query's own text when `facts` are
    /// its template. A refusal comes back as the error to report.
    pub(super) async fn plan(
        &mut self,
        facts: &Arc<Facts>,
        params: Option<&Arc<Params>>,
        stages: &mut Stages,
        written: Option<&str>,
    ) -> Result<Action, SqlError> {
        if let Some(stmt) = facts.single()
            && self.runs_locally(&stmt.kind)
        {
            return Ok(Action::Local);
        }
        if self.is_across() {
            let failed = self.status() == super::state::TxnStatus::Failed;
            match facts.single().map(|s| &s.kind) {
                Some(Kind::Commit) => return Ok(Action::EndBlock(true)),
                Some(Kind::Rollback) => return Ok(Action::EndBlock(false)),
                Some(Kind::RollbackTo(_)) => return Ok(Action::Savepoint),
                Some(Kind::Savepoint(_) | Kind::Release(_)) if failed => return Err(aborted()),
                Some(Kind::Savepoint(_) | Kind::Release(_)) => return Ok(Action::Savepoint),
                _ => {}
            }
            if let Some(bad) = facts.statements.iter().find(|s| !matches!(s.kind, Kind::Read | Kind::Write)) {
                return Err(Refusal::NotAcross(bad.text.clone()).into());
            }
            // Failed on one shard: failed on all of them.
            if self.status() == super::state::TxnStatus::Failed {
                return Err(aborted());
            }
        }
        if let Some(bad) = facts.statements.iter().find(|s| route::is_local(&s.kind)) {
            return Err(match &bad.kind {
                Kind::Unsupported { reason, hint } => {
                    Refusal::Pooling { reason: reason.clone(), hint: hint.clone() }.into()
                }
                _ => Refusal::Alone(bad.text.clone()).into(),
            });
        }
        if matches!(&self.txn, Txn::Deferred(d) if d.failed) {
            return Err(aborted());
        }
        // LOCK TABLE is DDL to routing (every shard) but changes no OIDs.
        self.schema_changed |= facts.statements.iter().any(|s| {
            s.shape.verb == crate::classify::Verb::Ddl
                && !s.text.trim_start().get(..4).is_some_and(|w| w.eq_ignore_ascii_case("lock"))
        });
        // Cursors and protocol portals share one namespace, as on Postgres.
        if let Some(declared) = facts.single().and_then(|s| s.shape.cursor.as_ref())
            && (self.cursors.contains_key(&declared.name) || self.portals.contains(&declared.name))
        {
            return Err(SqlError::new(code::DUPLICATE_CURSOR, format!("cursor \"{}\" already exists", declared.name)));
        }
        // A cursor declared in SQL is read where it was declared.
        if let Some(used) = facts.single().and_then(|s| s.shape.uses_cursor.as_ref()) {
            match self.cursors.get(&used.name) {
                Some(Cursor::On(shard)) => return Ok(Action::Forward { shard: *shard, role: Role::Primary }),
                Some(Cursor::Across(_)) => return Ok(Action::Cursor(used.clone())),
                None => {}
            }
        }
        let in_txn = !matches!(self.txn, Txn::Idle);
        let at = Instant::now();
        let routed = self.shared.planner.route(facts, params, &self.info, in_txn, written).await;
        let mut route = routed.map_err(SqlError::from)?;
        stages.routed(Stage::since(at), std::mem::take(&mut route.statements));
        let role = route::role(&route, in_txn, self.shared.config.routing.read_replicas);
        Ok(match route.target {
            Target::Anywhere if facts.statements.iter().all(|s| s.shape.catalog) => self.catalog_read(role),
            Target::Anywhere => Action::Forward { shard: self.anywhere(), role },
            Target::One(shard) => Action::Forward { shard, role },
            // One shard and nothing to rewrite: as if it were not across shards.
            Target::Many { ref shards, ref plan }
                if shards.len() == 1 && matches!(**plan, FanOut::Everywhere | FanOut::Broadcast) =>
            {
                Action::Forward { shard: shards[0], role }
            }
            Target::Many { shards, plan } if facts.single().is_some_and(|s| s.shape.cursor.is_some()) => {
                Action::Declare(Spread { shards, plan, role, detached: false })
            }
            Target::Many { shards, plan } => Action::Scatter(Spread { shards, plan, role, detached: false }),
            Target::CopySplit(split) => Action::CopySplit(split),
        })
    }

    /// A read of the system catalogs runs on the default shard, whose OIDs
    /// every description carries (`pool::oids`): in the session's
    /// transaction when that includes the default shard or has not started
    /// anywhere yet (pg_dump reads the catalog in its snapshot), else on a
    /// connection of its own, so that asking about the schema does not
    /// widen a transaction to another shard.
    fn catalog_read(&self, role: Role) -> Action {
        let default = self.shared.pools.topology.default_shard();
        let nowhere_yet = !matches!(self.txn, Txn::Block(_)) && self.conns.is_empty() && self.lent.is_empty();
        if nowhere_yet || self.conns.get(default).is_some() {
            return Action::Forward { shard: default, role };
        }
        Action::Scatter(Spread { shards: vec![default], plan: Arc::new(FanOut::Everywhere), role, detached: true })
    }

    /// Where a statement without preference goes: the default shard (where
    /// unsharded tables live) unless the session is on another one alone.
    pub(super) fn anywhere(&self) -> ShardId {
        let default = self.shared.pools.topology.default_shard();
        match self.conns.current() {
            Some(current) if self.conns.get(default).is_none() => current,
            _ => default,
        }
    }

    /// The transaction spans several shards.
    pub(super) fn is_across(&self) -> bool {
        matches!(self.txn, Txn::Block(_)) && self.conns.len() + self.lent.len() > 1
    }

    /// Makes `shard`'s server the session's current one, in the session's
    /// state: its settings, and the transaction open on it when there is one.
    pub(super) async fn attach(&mut self, shard: ShardId, role: Role) -> Result<(), SqlError> {
        if let Some(held) = self.conns.get(shard) {
            // A replica cannot take a write: outside a transaction the
            // batch moves to the primary once the replica is done.
            let wrong_role = role == Role::Primary && held.on_replica;
            if !wrong_role {
                self.conns.set_current(shard);
                self.point_cancel();
                return Ok(());
            }
            self.leave(&[shard]).await?;
        }
        match &self.txn {
            Txn::Idle => {
                let wrote = self.conns.iter().any(|h| h.wrote);
                if wrote && self.shared.coordinator.is_some() {
                    // One implicit transaction across shards: two-phase at Sync.
                    self.open_implicit_block().await?;
                    let held = self.join(shard).await?;
                    self.conns.insert(held);
                    self.point_cancel();
                    return Ok(());
                }
                if !self.conns.is_empty() {
                    self.leave_batch(shard).await?;
                }
                let held = self.checkout(shard, role).await?;
                self.conns.insert(held);
            }
            Txn::Deferred(_) => {
                let Txn::Deferred(d) = std::mem::replace(&mut self.txn, Txn::Idle) else { unreachable!() };
                let begin = Block { begin: d.statements.clone(), savepoints: d.savepoints.clone(), ..Block::default() }
                    .opening();
                let mut held = match self.checkout(shard, Role::Primary).await {
                    Ok(h) => h,
                    Err(e) => {
                        self.txn = Txn::Deferred(d);
                        return Err(e);
                    }
                };
                let conn = &mut held.conn.conn;
                postgres_protocol::message::frontend::query(&begin, &mut conn.wbuf)
                    .map_err(|e| SqlError::new(code::INTERNAL_ERROR, e.to_string()))?;
                conn.unnamed = None;
                held.in_block = true;
                let facts = self.shared.facts.get(&begin);
                self.outbox.push(Entry::hidden(shard, Reply::Query { facts, done: 0, flight: None }), &mut self.events);
                self.conns.insert(held);
                // Its savepoints are counted as the server makes them (`statement_done`).
                self.txn = Txn::Block(Block { begin: d.statements, ..Block::default() });
                self.apply_events();
            }
            Txn::Block(_) => {
                self.may_widen(shard)?;
                let held = self.join(shard).await?;
                self.conns.insert(held);
            }
        }
        self.point_cancel();
        Ok(())
    }

    /// Turns the batch in flight into a transaction block of shardcar's own:
    /// servers that only read end their part (Sync), servers that wrote get
    /// a BEGIN behind what they ran, which makes it part of the block.
    async fn open_implicit_block(&mut self) -> Result<(), SqlError> {
        let readers: Vec<ShardId> = self.conns.iter().filter(|h| !h.wrote).map(Held::shard).collect();
        self.leave(&readers).await?;
        const NAME: &str = "shardcar_begin";
        for shard in self.conns.shards() {
            let Some(held) = self.conns.get_mut(shard) else { continue };
            let buf = &mut held.conn.conn.wbuf;
            let internal = |e: std::io::Error| SqlError::new(code::INTERNAL_ERROR, e.to_string());
            postgres_protocol::message::frontend::parse(NAME, "BEGIN", [], buf).map_err(internal)?;
            let no_params: [Option<&[u8]>; 0] = [];
            postgres_protocol::message::frontend::bind(
                NAME,
                NAME,
                [],
                no_params.iter(),
                |_, _| Ok(postgres_protocol::IsNull::Yes),
                [],
                buf,
            )
            .map_err(|_| SqlError::new(code::INTERNAL_ERROR, "cannot encode BEGIN"))?;
            postgres_protocol::message::frontend::execute(NAME, 0, buf).map_err(internal)?;
            postgres_protocol::message::frontend::close(b'S', NAME, buf).map_err(internal)?;
            held.unsynced = true;
            held.unflushed = true;
            held.in_block = true;
            for reply in [Reply::Parse, Reply::Bind, Reply::Begin, Reply::Close] {
                self.outbox.push(Entry::hidden(shard, reply), &mut self.events);
            }
        }
        self.txn = Txn::Block(Block { begin: vec!["BEGIN".into()], implicit: true, ..Block::default() });
        self.apply_events();
        Ok(())
    }

    /// Why the open transaction cannot take in `shard`, if it cannot.
    pub(super) fn may_widen(&self, shard: ShardId) -> Result<(), SqlError> {
        let Txn::Block(b) = &self.txn else { return Ok(()) };
        let topology = &self.shared.pools.topology;
        if b.failed || self.conns.iter().any(|h| h.conn.conn.status == b'E') {
            return Err(aborted());
        }
        let on = self
            .conns
            .current()
            .or(self.lent.first().copied())
            .map_or_else(|| "?".to_string(), |s| topology.name(s).to_string());
        let pinned = |why| Refusal::Pinned { on: on.clone(), needs: format!("shard {}", topology.name(shard)), why };
        if self.shared.coordinator.is_none() && !b.read_only() {
            return Err(pinned(Pinned::NoTwoPhase).into());
        }
        Ok(())
    }

    /// A connection to `shard`'s `role` server, with this session's settings.
    pub(super) async fn checkout(&mut self, shard: ShardId, role: Role) -> Result<Held, SqlError> {
        let at = Instant::now();
        let wrote_at = self.conns.wrote_at(shard);
        let mut conn = self.shared.pools.checkout(shard, role, wrote_at, self.login.as_ref()).await?;
        conn.adopt(&self.settings).await?;
        let took = Stage::since(at);
        conn.node.metrics.checkout_wait.observe(took.took.as_secs_f64());
        self.checkout_stage = Some(took);
        Ok(Held::new(conn))
    }

    /// A connection to `shard`'s primary with the open transaction begun on
    /// it, and the savepoints made so far (known once the servers that made
    /// them have answered: the session settles first).
    pub(super) async fn join(&mut self, shard: ShardId) -> Result<Held, SqlError> {
        self.settle().await?;
        let begin = match &self.txn {
            Txn::Block(b) => b.opening(),
            _ => "BEGIN".to_string(),
        };
        let mut held = self.checkout(shard, Role::Primary).await?;
        let conn = &mut held.conn;
        let why = match conn.conn.run_hidden(&begin).await {
            Ok(Ok(())) if conn.conn.status == b'T' => {
                held.in_block = true;
                return Ok(held);
            }
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
            Ok(Ok(())) => "the server did not open a transaction".to_string(),
        };
        let label = held.conn.label().to_string();
        held.conn.close();
        Err(SqlError::new(code::CONNECTION_FAILURE, format!("cannot open the transaction on {label}: {why}")))
    }

    /// Outside a transaction, a batch whose next statement needs `shard`
    /// while other servers hold its earlier ones: those end first (a Sync
    /// of shardcar's own, their replies relayed) when they only read; a
    /// batch that wrote on one shard cannot go on to another, since it is
    /// one implicit transaction.
    async fn leave_batch(&mut self, shard: ShardId) -> Result<(), SqlError> {
        let topology = self.shared.pools.topology.clone();
        if let Some(wrote) = self.conns.iter().find(|h| h.wrote) {
            return Err(Refusal::Together {
                first: topology.name(wrote.shard()).to_string(),
                second: topology.name(shard).to_string(),
            }
            .into());
        }
        let all = self.conns.shards();
        self.leave(&all).await
    }

    /// Ends what the servers of `shards` run for this batch and gives them back.
    pub(super) async fn leave(&mut self, shards: &[ShardId]) -> Result<(), SqlError> {
        for &shard in shards {
            if let Some(held) = self.conns.get_mut(shard)
                && held.unsynced
            {
                postgres_protocol::message::frontend::sync(&mut held.conn.conn.wbuf);
                held.unsynced = false;
                held.unflushed = false;
                self.outbox.push(Entry::hidden(shard, Reply::Sync), &mut self.events);
            }
        }
        self.apply_events();
        self.settle().await?;
        for &shard in shards {
            if let Some(h) = self.conns.remove(shard) {
                h.conn.release();
            }
        }
        self.point_cancel();
        Ok(())
    }
}
