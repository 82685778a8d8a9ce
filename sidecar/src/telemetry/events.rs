//! What happened, in order: servers going down and coming back, plugins
//! serving and refused, shards turning hot, stalling or running out of
//! connections, and recovering. Found by comparing each second's state with
//! the last (so no code path has to remember to report), kept in memory,
//! the newest `KEPT`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use shardcar_api as api;

/// Events kept; older ones are dropped.
const KEPT: usize = 1000;

/// One thing to watch: `state` is `None` when it is as it should be; a
/// change of state is an event, told with `detail`.
pub struct Condition {
    pub family: Family,
    pub subject: String,
    pub state: Option<String>,
    pub detail: String,
}

/// What a condition is about, and the kinds of event it makes when it
/// turns bad (or changes) and when it is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Server,
    Hot,
    Stall,
    PoolFull,
    /// The plugin serving a policy: each new one is an event.
    PluginServing,
    /// A plugin file refused: each new reason is an event.
    PluginRefused,
}

impl Family {
    fn kinds(self) -> (&'static str, Option<&'static str>) {
        match self {
            Family::Server => ("down", Some("up")),
            Family::Hot => ("hot", Some("cooled")),
            Family::Stall => ("stalled", Some("flowing")),
            Family::PoolFull => ("pool_full", Some("pool_recovered")),
            Family::PluginServing => ("plugin_serving", None),
            Family::PluginRefused => ("plugin_refused", None),
        }
    }
}

#[derive(Default)]
pub struct Events {
    log: Mutex<VecDeque<api::Event>>,
    last: Mutex<HashMap<(Family, String), Option<String>>>,
}

impl Events {
    /// Records what changed since the last call. A condition seen for the
    /// first time is an event only when it is not as it should be.
    pub fn observe(&self, at_unix_ms: u64, conditions: Vec<Condition>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut new = Vec::new();
        for c in conditions {
            let before = last.insert((c.family, c.subject.clone()), c.state.clone());
            if before.as_ref() == Some(&c.state) || before.is_none() && c.state.is_none() {
                continue;
            }
            let (bad, over) = c.family.kinds();
            let event = match (&c.state, over) {
                (Some(_), _) => Some((bad, c.detail)),
                (None, Some(over)) => Some((over, c.detail)),
                (None, None) => None,
            };
            if let Some((kind, message)) = event {
                new.push(api::Event { at_unix_ms, kind: kind.into(), subject: c.subject, message });
            }
        }
        drop(last);
        if new.is_empty() {
            return;
        }
        for e in &new {
            tracing::info!(kind = e.kind, subject = e.subject, "event: {}", e.message);
        }
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.extend(new);
        while log.len() > KEPT {
            log.pop_front();
        }
    }

    /// The newest `limit` events, newest first.
    pub fn recent(&self, limit: usize) -> Vec<api::Event> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().rev().take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(state: Option<&str>) -> Vec<Condition> {
        let detail = state.unwrap_or_default().to_string();
        vec![Condition {
            family: Family::Server,
            subject: "s1 primary".into(),
            state: state.map(str::to_string),
            detail,
        }]
    }

    fn kinds(events: &Events) -> Vec<String> {
        events.recent(10).into_iter().rev().map(|e| format!("{} {}", e.kind, e.subject)).collect()
    }

    #[test]
    fn changes_are_events_and_steady_states_are_not() {
        let events = Events::default();
        events.observe(1, server(None));
        assert!(kinds(&events).is_empty(), "well at the start: nothing happened");
        events.observe(2, server(Some("refused")));
        events.observe(3, server(Some("refused")));
        events.observe(4, server(None));
        assert_eq!(kinds(&events), ["down s1 primary", "up s1 primary"]);
        assert_eq!(events.recent(10)[1].message, "refused");
    }

    #[test]
    fn a_plugin_serving_is_an_event_from_the_start() {
        let events = Events::default();
        let serving = |v: &str| {
            let (subject, state, detail) = ("by-customer".into(), Some(v.into()), v.into());
            vec![Condition { family: Family::PluginServing, subject, state, detail }]
        };
        events.observe(1, serving("hash 0.1.0"));
        events.observe(2, serving("hash 0.1.0"));
        events.observe(3, serving("hash 0.2.0"));
        assert_eq!(kinds(&events), ["plugin_serving by-customer", "plugin_serving by-customer"]);
    }
}
