//! Routing a batch and attaching a server connection for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::Session;
use super::extended::bind_params;
use super::local::local_capable;
use crate::cancel::BackendKey;
use crate::classify::Facts;
use crate::classify::params::Params;
use crate::execute::{Attached, Entry, Prepared, Reply};
use crate::policy::Request;
use crate::pool::Checkout;
use crate::route::plan;
use crate::sqlerror::{SqlError, code};
use crate::telemetry::stages::{Stage, Stages};
use crate::wire::ClientMsg;

impl Session {
    /// Attaches a connection for the extended-protocol batch whose current
    /// message carries `facts` and `params` (and prepares `parse`, if a
    /// Parse), routed by every statement of the batch received so far; or
    /// checks that an attached connection's shard fits the statement (and
    /// moves a transaction across shards to it). A routing refusal is left
    /// to the caller; the routing and checkout are recorded in `stages`.
    pub(super) async fn attach_batch(
        &mut self,
        facts: &Arc<Facts>,
        params: Option<Arc<Params>>,
        parse: Option<&Arc<Prepared>>,
        stages: &mut Stages,
    ) -> Result<(), SqlError> {
        if self.routed_with_batch && self.attached.is_some() {
            return Ok(());
        }
        // A batch that starts on an attached connection is routed as a
        // whole, so a transaction can move to its shard before anything is sent.
        let mid_batch = self.attached.as_ref().is_some_and(|a| a.unsynced || a.pending_ready > 0);
        // In a transaction that may span shards, each statement of a batch
        // goes to its own shard (the ones before it are synced first).
        let per_statement = mid_batch || (self.shared.coordinator.is_some() && self.in_block());
        if per_statement {
            let mut req = Request::default();
            let own_bind = parse.and_then(|p| self.own_bind(p));
            match (params, own_bind) {
                (Some(params), _) | (None, Some(params)) => req.add(facts, Some(params)),
                (None, None) => req.add_unexecuted(facts),
            }
            return self.attach_for(&req, stages).await;
        }
        let (req, ahead) = self.batch_request(facts, params, parse);
        self.attach_for(&req, stages).await?;
        if let Some(a) = self.attached.as_mut() {
            a.routed_ahead = ahead;
        }
        Ok(())
    }

    /// Reports an extended-protocol statement refused by routing.
    pub(super) fn refuse_batch(
        &mut self,
        e: SqlError,
        stages: &mut Stages,
        facts: &Arc<Facts>,
    ) -> Result<(), SqlError> {
        let stages = std::mem::replace(stages, Stages::new(stages.started));
        self.refuse(e, true, stages, facts)
    }

    /// The routing request of the batch whose current message carries
    /// `current` (with `params` when it is a Bind) and which continues in the
    /// inbox up to Sync. Clients write a batch at once, so the inbox holds it;
    /// shardcar does not wait for a Sync, because a client may wait for a
    /// reply first (COPY FROM STDIN). Also how many inbox messages the
    /// request covers.
    pub(super) fn batch_request(
        &self,
        current: &Arc<Facts>,
        params: Option<Arc<Params>>,
        parse: Option<&Arc<Prepared>>,
    ) -> (Request, usize) {
        let mut req = Request::default();
        let mut parsed: HashMap<String, Arc<Prepared>> = HashMap::new();
        let add = |req: &mut Request, facts: &Arc<Facts>, params: Option<Arc<Params>>| {
            if !facts.single().is_some_and(|s| local_capable(&s.kind)) {
                req.add(facts, params);
            }
        };
        match params {
            Some(params) => add(&mut req, current, Some(params)),
            None => req.add_unexecuted(current),
        }
        let mut covered = 0;
        for msg in &self.inbox {
            match msg {
                ClientMsg::Parse { raw, msg } => {
                    let name = msg.name.clone().unwrap_or_default();
                    let p = Arc::new(Prepared::new(&name, msg, raw, self.shared.facts.get(&msg.query)));
                    parsed.insert(name, p);
                }
                ClientMsg::Bind { msg, .. } => {
                    let name = msg.statement_name.clone().unwrap_or_default();
                    // The statement being parsed now, one parsed later in the batch, or one prepared before.
                    let known = parsed
                        .get(&name)
                        .cloned()
                        .or_else(|| parse.filter(|p| p.client_name == name).cloned())
                        .or_else(|| self.resolve(&name).ok());
                    if let Some(p) = known {
                        add(&mut req, &p.facts, Some(bind_params(&p, msg)));
                    }
                }
                ClientMsg::Sync { .. } | ClientMsg::Flush { .. } | ClientMsg::Query { .. } => break,
                _ => {}
            }
            covered += 1;
        }
        (req, covered)
    }

    /// The parameters of the Bind that follows the Parse of `p` in the inbox.
    fn own_bind(&self, p: &Arc<Prepared>) -> Option<Arc<Params>> {
        match self.inbox.front() {
            Some(ClientMsg::Bind { msg, .. }) if msg.statement_name.as_deref().unwrap_or_default() == p.client_name => {
                Some(bind_params(p, msg))
            }
            _ => None,
        }
    }

    /// True when the rest of the current batch holds only more Parse messages.
    pub(super) fn batch_only_prepares(&self) -> bool {
        for msg in &self.inbox {
            match msg {
                ClientMsg::Parse { .. } => {}
                ClientMsg::Sync { .. } | ClientMsg::Flush { .. } => return true,
                _ => return false,
            }
        }
        true
    }

    /// The shard a statement belongs to when that is not the one this
    /// session's transaction (or batch) is on.
    async fn elsewhere(&self, req: &Request, stages: &mut Stages) -> Result<Option<usize>, SqlError> {
        let Some(a) = &self.attached else { return Ok(None) };
        let at = Instant::now();
        let decision = self.shared.router.decide(req, &self.info, true).await?;
        stages.routed(Stage::since(at), req.len(), decision.routes);
        Ok(decision.shard.filter(|&shard| shard != a.node.shard))
    }

    /// Routes `req`, checks out a connection, and brings it to this
    /// session's state (settings, deferred BEGIN); `stages` gets the timings.
    pub(super) async fn attach_for(&mut self, req: &Request, stages: &mut Stages) -> Result<(), SqlError> {
        if self.attached.is_some() {
            return match self.elsewhere(req, stages).await? {
                Some(shard) => self.switch_to(shard).await,
                None => Ok(()),
            };
        }
        let in_transaction = self.deferred.is_open();
        let at = Instant::now();
        let decision = self.shared.router.decide(req, &self.info, in_transaction).await?;
        let default_shard = self.shared.router.default_shard();
        let target = plan(&decision, default_shard, in_transaction, self.shared.config.routing.read_replicas);
        stages.routed(Stage::since(at), req.len(), decision.routes);
        let at = Instant::now();
        let mut checkout = self.shared.pools.checkout(target.shard, target.role).await?;
        checkout.adopt(&self.settings).await?;
        let Checkout { conn, node } = checkout;
        let checkout = Stage::since(at);
        node.metrics.checkout_wait.observe(checkout.took.as_secs_f64());
        stages.checkout = Some(checkout);
        self.set_cancel_key(Some(BackendKey { addr: conn.addr.clone(), pid: conn.pid, secret: conn.secret }));
        let mut a = Attached::new(conn, node);
        a.outbox.survive_fatal = !in_transaction;
        if self.deferred.is_open() {
            let deferred = std::mem::take(&mut self.deferred);
            let begin = deferred.statements.join("; ");
            // Shards that join later open the transaction the same way.
            self.txn_savepoint = !deferred.savepoints.is_empty();
            self.txn_begin = Some(begin.clone());
            postgres_protocol::message::frontend::query(&begin, &mut a.conn.wbuf)
                .map_err(|e| SqlError::new(code::INTERNAL_ERROR, e.to_string()))?;
            a.conn.unnamed = None;
            let facts = self.shared.facts.get(&begin);
            a.outbox.push(Entry::hidden(Reply::Query { facts, done: 0, flight: None }), &mut self.events);
        }
        self.attached = Some(a);
        Ok(())
    }
}
