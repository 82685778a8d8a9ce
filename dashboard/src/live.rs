//! The dashboard's state: the newest snapshot from the live stream, each
//! shard's hour-long series (fetched once, then extended second by second),
//! hot keys and plugins (polled: the stream does not carry them), and
//! whether the sidecar is reachable.

use std::collections::VecDeque;
use std::time::Duration;

use futures::StreamExt;
use gloo_net::eventsource::futures::EventSource;
use leptos::prelude::*;
use leptos::task::spawn_local;
use shardcar_api::{Fleet, HotTables, Plugins, Point, Shard, Shards, Snapshot};

/// As much history as the sidecar keeps.
pub const SERIES_SECONDS: usize = 3600;

/// What the sparklines and the heatmap show: the last 15 minutes.
pub const RECENT_SECONDS: usize = 900;

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Connecting,
    Live,
    /// The stream broke; the browser retries by itself.
    Lost(String),
}

#[derive(Clone, Copy)]
pub struct Live {
    pub status: RwSignal<Status>,
    pub snapshot: RwSignal<Option<Snapshot>>,
    /// Per shard, in the snapshot's shard order.
    pub series: RwSignal<Vec<VecDeque<Point>>>,
    pub hot: RwSignal<Result<Option<HotTables>, String>>,
    pub plugins: RwSignal<Result<Option<Plugins>, String>>,
    /// The fleet from Prometheus; None while the sidecar has no fleet view
    /// (`[fleet] prometheus_url` unset).
    pub fleet: RwSignal<Option<Result<Fleet, String>>>,
    /// When the newest snapshot arrived (`Date.now()`, ms).
    last_seen: StoredValue<f64>,
}

/// Snapshots come every second; this long without one means the sidecar is
/// gone (the browser's EventSource retries quietly, without an error event).
const STALE_MS: f64 = 3500.0;

impl Live {
    pub fn start() -> Live {
        let live = Live {
            status: RwSignal::new(Status::Connecting),
            snapshot: RwSignal::new(None),
            series: RwSignal::new(Vec::new()),
            hot: RwSignal::new(Ok(None)),
            plugins: RwSignal::new(Ok(None)),
            fleet: RwSignal::new(None),
            last_seen: StoredValue::new(js_sys::Date::now()),
        };
        spawn_local(live.stream());
        set_interval(move || live.check_stale(), Duration::from_secs(1));
        live.poll_hot_keys();
        live.poll_plugins();
        set_interval(move || live.poll_hot_keys(), Duration::from_secs(2));
        set_interval(move || live.poll_plugins(), Duration::from_secs(5));
        live.poll_fleet();
        set_interval(move || live.poll_fleet(), Duration::from_secs(5));
        live
    }

    /// One shard of the newest snapshot.
    pub fn shard(&self, name: &str) -> Option<Shard> {
        self.snapshot.with(|s| s.as_ref()?.shards.iter().find(|x| x.name == name).cloned())
    }

    pub fn shard_names(&self) -> Vec<String> {
        self.snapshot
            .with(|s| s.as_ref().map(|s| s.shards.iter().map(|x| x.name.clone()).collect()).unwrap_or_default())
    }

    async fn stream(self) {
        let mut source = match EventSource::new(&crate::api::url("stream", &[])) {
            Ok(s) => s,
            Err(e) => return self.status.set(Status::Lost(format!("cannot open the live stream: {e}"))),
        };
        let mut snapshots = match source.subscribe("snapshot") {
            Ok(s) => s,
            Err(e) => return self.status.set(Status::Lost(format!("cannot open the live stream: {e}"))),
        };
        while let Some(event) = snapshots.next().await {
            match event {
                Ok((_, message)) => {
                    let Some(text) = message.data().as_string() else { continue };
                    let snapshot: Snapshot = match serde_json::from_str(&text) {
                        Ok(s) => s,
                        Err(e) => {
                            self.status
                                .set(Status::Lost(format!("the sidecar sent a snapshot this page cannot read: {e}")));
                            continue;
                        }
                    };
                    if self.status.get_untracked() != Status::Live {
                        // After (re)connecting, fetch what was missed.
                        spawn_local(self.fetch_history());
                    }
                    self.last_seen.set_value(js_sys::Date::now());
                    self.extend_series(&snapshot);
                    self.snapshot.set(Some(snapshot));
                    self.status.set(Status::Live);
                }
                Err(_) => self.status.set(Status::Lost("the live stream from the sidecar broke; retrying".into())),
            }
        }
        drop(source);
    }

    fn check_stale(self) {
        let silent = js_sys::Date::now() - self.last_seen.get_value();
        if silent <= STALE_MS {
            return;
        }
        let seconds = (silent / 1000.0).round();
        match self.status.get_untracked() {
            Status::Live => self.status.set(Status::Lost(format!("no snapshot for {seconds}s; retrying"))),
            Status::Connecting => {
                self.status.set(Status::Lost(format!("no answer from its admin API for {seconds}s; retrying")))
            }
            Status::Lost(_) => {}
        }
    }

    async fn fetch_history(self) {
        let series = SERIES_SECONDS.to_string();
        if let Ok(shards) = crate::api::get::<Shards>("shards", &[("series", &series)]).await {
            self.series.update(|all| {
                *all = shards.shards.into_iter().map(|s| s.series.into()).collect();
            });
        }
    }

    /// Appends each shard's newest point (the stream carries only that).
    fn extend_series(&self, snapshot: &Snapshot) {
        self.series.update(|all| {
            all.resize_with(snapshot.shards.len(), VecDeque::new);
            for (series, shard) in all.iter_mut().zip(&snapshot.shards) {
                for point in &shard.series {
                    if series.back().is_none_or(|last| last.t < point.t) {
                        series.push_back(*point);
                    }
                }
                while series.len() > SERIES_SECONDS {
                    series.pop_front();
                }
            }
        });
    }

    fn poll_hot_keys(self) {
        spawn_local(async move {
            let result = crate::api::get::<HotTables>("hotkeys", &[("limit", "10")]).await;
            keep_last_good(self.hot, result);
        });
    }

    fn poll_fleet(self) {
        spawn_local(async move {
            match crate::api::get::<Fleet>("fleet", &[]).await {
                // No fleet view configured: the page shows this sidecar only.
                Ok(f) if f.prometheus.is_none() => self.fleet.set(None),
                Ok(f) => self.fleet.set(Some(Ok(f))),
                Err(e) => self.fleet.set(Some(Err(e))),
            }
        });
    }

    fn poll_plugins(self) {
        spawn_local(async move {
            let result = crate::api::get::<Plugins>("plugins", &[]).await;
            keep_last_good(self.plugins, result);
        });
    }
}

/// A failed poll replaces nothing already shown (the status banner says the
/// sidecar is unreachable); it shows only when there is nothing yet.
fn keep_last_good<T: Send + Sync + 'static>(signal: RwSignal<Result<Option<T>, String>>, result: Result<T, String>) {
    match result {
        Ok(value) => signal.set(Ok(Some(value))),
        Err(e) => {
            if !signal.with_untracked(|s| matches!(s, Ok(Some(_)))) {
                signal.set(Err(e));
            }
        }
    }
}
