//! What one statement went through, timed: classify, policy, pool
//! checkout, then the server. The session fills this in as the statement
//! advances (Parse, Bind and Execute may arrive in separate batches) and
//! hands it over when the server's last reply arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::classify::Facts;
use crate::policy::StatementRoute;
use crate::policy::facts::SessionInfo;
use crate::pool::Node;
use crate::pool::in_flight::Ticket;

/// One timed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub at: Instant,
    pub took: Duration,
}

impl Stage {
    /// The step that began at `at` and ends now.
    pub fn since(at: Instant) -> Stage {
        Stage { at, took: at.elapsed() }
    }
}

/// How the statement's text became facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classified {
    /// Found in the parse cache.
    Hit(Stage),
    /// Parsed now.
    Miss(Stage),
}

impl Classified {
    pub fn new(cached: bool, stage: Stage) -> Classified {
        if cached { Classified::Hit(stage) } else { Classified::Miss(stage) }
    }
}

/// The routing decision made for the statement.
#[derive(Debug)]
pub struct Routed {
    pub stage: Stage,
    /// How each statement of this one's text was routed.
    pub routes: Vec<StatementRoute>,
}

/// The steps before the server, filled in as they happen.
#[derive(Debug)]
pub struct Stages {
    /// When shardcar took the statement's first message.
    pub started: Instant,
    /// `None`: a statement prepared in an earlier batch, not classified again.
    pub classify: Option<Classified>,
    pub policy: Option<Routed>,
    /// Only the statement that brought a server connection to its transaction.
    pub checkout: Option<Stage>,
}

impl Stages {
    pub fn new(started: Instant) -> Stages {
        Stages { started, classify: None, policy: None, checkout: None }
    }

    /// Records a routing decision; a later one (made with the statement's
    /// parameters) replaces what an earlier one knew, and their times add up.
    pub fn routed(&mut self, stage: Stage, routes: Vec<StatementRoute>) {
        match &mut self.policy {
            Some(p) => {
                p.stage.took += stage.took;
                if !routes.is_empty() {
                    p.routes = routes;
                }
            }
            None => self.policy = Some(Routed { stage, routes }),
        }
    }
}

/// An error a server answered the statement with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub code: String,
    pub message: String,
}

/// A statement sent to a server, waiting for its replies.
#[derive(Debug)]
pub struct InFlight {
    pub stages: Stages,
    pub facts: Arc<Facts>,
    pub node: Arc<Node>,
    pub session: Arc<SessionInfo>,
    /// When its message went into the server's buffer.
    pub sent: Instant,
    pub error: Option<ServerError>,
    /// Counts it among the server's running statements until it is dropped.
    _running: Ticket,
}

impl InFlight {
    pub fn new(stages: Stages, facts: Arc<Facts>, node: Arc<Node>, session: Arc<SessionInfo>) -> Box<InFlight> {
        let sent = Instant::now();
        let _running = node.running.begin(sent);
        Box::new(InFlight { stages, facts, node, session, sent, error: None, _running })
    }

    /// Spans this statement becomes: itself, its stages, the server's part.
    pub fn span_count(&self) -> usize {
        2 + usize::from(self.stages.classify.is_some())
            + usize::from(self.stages.policy.is_some())
            + usize::from(self.stages.checkout.is_some())
    }
}
