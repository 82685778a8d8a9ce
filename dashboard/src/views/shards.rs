//! One card per shard: load, latency, errors, work in flight, health,
//! replica lag and a 15-minute sparkline; the hot shard and a stalled one
//! stand out.

use std::collections::VecDeque;

use leptos::prelude::*;
use shardcar_api::{Point, Shard};

use super::{Empty, Panel};
use crate::format;
use crate::live::{Live, RECENT_SECONDS};

#[component]
pub fn Shards(live: Live) -> impl IntoView {
    let note = Signal::derive(move || {
        live.snapshot.with(|s| {
            s.as_ref().map_or_else(String::new, |s| {
                let skew = &s.overview.skew;
                let excluded = match skew.excluded.as_slice() {
                    [] => String::new(),
                    shards => format!(" · {} left out of skew (down or stalled)", shards.join(", ")),
                };
                format!(
                    "rates over the last {}s · skew {:.2}× (hot at {:.2}× for {}s){excluded}",
                    skew.window_s, skew.ratio, skew.threshold, skew.hot_after_s
                )
            })
        })
    });
    view! {
        <Panel id="shards" title="Shards" note>
            {move || {
                let names = live.shard_names();
                if names.is_empty() {
                    return view! { <Empty text="Waiting for the first snapshot…" /> }.into_any();
                }
                view! {
                    <div class="cards">
                        <For each=move || live.shard_names() key=|name| name.clone() let:name>
                            <Card live name />
                        </For>
                    </div>
                }
                .into_any()
            }}
        </Panel>
    }
}

#[component]
fn Card(live: Live, name: String) -> impl IntoView {
    let shard = {
        let name = name.clone();
        Memo::new(move |_| live.shard(&name))
    };
    let index = {
        let name = name.clone();
        Memo::new(move |_| live.shard_names().iter().position(|n| *n == name))
    };
    let field = move |f: fn(&Shard) -> String| move || shard.with(|s| s.as_ref().map_or_else(|| "–".into(), f));
    let hot = move || shard.with(|s| s.as_ref().is_some_and(|s| s.hot));
    let healthy = move || shard.with(|s| s.as_ref().is_some_and(|s| s.healthy));
    let stalled = move || shard.with(|s| s.as_ref().is_some_and(|s| s.in_flight.stalled));
    // The primary answers but a replica does not: its reads go to the primary.
    let degraded = move || shard.with(|s| s.as_ref().is_some_and(|s| s.healthy && s.servers.iter().any(|v| !v.up)));
    let hot_label = move || {
        live.snapshot
            .with(|s| s.as_ref().map_or_else(String::new, |s| format!("HOT · {:.1}× mean", s.overview.skew.ratio)))
    };
    // The sparkline's last 15 minutes.
    let series = move || {
        let i = index.get();
        live.series.with(|all| {
            let Some(s) = i.and_then(|i| all.get(i)) else { return VecDeque::new() };
            s.iter().skip(s.len().saturating_sub(RECENT_SECONDS)).copied().collect()
        })
    };
    view! {
        <article class="card shard-card" class:hot=hot class:stalled=stalled data-shard=name.clone()>
            <header>
                <span
                    class="health"
                    class:down=move || !healthy()
                    class:degraded=degraded
                    title=move || match (healthy(), degraded()) {
                        (false, _) => "the primary does not answer",
                        (true, true) => "a replica does not answer: its reads go to the primary",
                        (true, false) => "every server answers",
                    }
                ></span>
                <h3>{name.clone()}</h3>
                <Show when=hot>
                    <span class="badge hot-badge">{hot_label}</span>
                </Show>
                <Show when=move || !healthy()>
                    <span class="badge down-badge">"DOWN"</span>
                </Show>
                <Show when=move || shard.with(|s| s.as_ref().is_some_and(|s| s.buffered > 0))>
                    <span class="badge down-badge buffered-badge" title="statements waiting for the shard to have a primary (failover.buffer_ms)">
                        {field(|s| format!("{} WAITING FOR PRIMARY", s.buffered))}
                    </span>
                </Show>
                <Show when=stalled>
                    <span class="badge stall-badge" title="a session waited for a connection, or statements ran with none finishing, for telemetry.stall_after_ms">"STALLED"</span>
                </Show>
            </header>
            <div class="figures">
                <div class="big">
                    <span class="value rate">{field(|s| format::rate(s.load.statements_per_s))}</span>
                    <span class="unit">"stmt/s"</span>
                </div>
                <dl>
                    <div><dt>"reads"</dt><dd>{field(|s| format::rate(s.load.reads_per_s))}</dd></div>
                    <div><dt>"writes"</dt><dd>{field(|s| format::rate(s.load.writes_per_s))}</dd></div>
                    <div><dt>"errors"</dt><dd class="errors">{field(error_rate)}</dd></div>
                    <div><dt>"p50"</dt><dd>{field(|s| format::ms(s.load.p50_ms))}</dd></div>
                    <div><dt>"p99"</dt><dd>{field(|s| format::ms(s.load.p99_ms))}</dd></div>
                    <div><dt>"max"</dt><dd class="max">{field(|s| format::ms(s.load.max_ms))}</dd></div>
                </dl>
            </div>
            <div class="figures">
                <dl class="in-flight" title="now: statements running on the shard's servers, sessions waiting for a connection">
                    <div><dt>"running"</dt><dd class="running">{field(|s| s.in_flight.running.to_string())}</dd></div>
                    <div><dt>"oldest"</dt><dd class="oldest-running">{field(|s| format::ms(s.in_flight.oldest_running_ms))}</dd></div>
                    <div><dt>"waiting"</dt><dd class="waiting">{field(|s| s.in_flight.waiting.to_string())}</dd></div>
                    <div><dt>"longest wait"</dt><dd class="longest-wait">{field(|s| format::ms(s.in_flight.longest_wait_ms))}</dd></div>
                </dl>
            </div>
            <ReadWriteBar shard />
            <Sparkline series />
            <ul class="servers">
                {move || shard.with(|s| s.as_ref().map(|s| s.servers.iter().map(server_line).collect_view()))}
            </ul>
            {move || shard.with(|s| s.as_ref().and_then(|s| s.failovers.last().cloned()).map(failover_line))}
        </article>
    }
}

/// Errors clients got about this shard — its own, and statements shardcar
/// could not get to it — as a share of all its statements.
fn error_rate(s: &Shard) -> String {
    let tried = s.load.statements_per_s + s.refused_per_s;
    let failed = s.load.errors_per_s + s.refused_per_s;
    if tried > 0.0 { format::percent(failed / tried) } else { format::rate(failed) }
}

fn server_line(server: &shardcar_api::Server) -> impl IntoView + use<> {
    let lag = match server.lag {
        Some(lag) if server.up => format!("lag {} · {:.1}s", format::bytes(lag.bytes), lag.seconds),
        _ => String::new(),
    };
    let timeline = server.timeline.map(|t| format!(" · tl {t}")).unwrap_or_default();
    let title = match &server.last_error {
        Some(e) => format!("{}: {e}", server.label),
        None => format!("{}{timeline}", server.label),
    };
    let fenced = server.role == "fenced";
    view! {
        <li class:down=!server.up || fenced title=title>
            <span class="role">{server.role.clone()}</span>
            <span class="address">{server.address.clone()}</span>
            <span class="lag">{match (server.up, server.role.as_str()) {
                (true, _) => lag,
                (false, "replica") => "down · reads on primary".into(),
                (false, _) => "down".into(),
            }}</span>
        </li>
    }
}

/// The shard's latest change of primary.
fn failover_line(event: shardcar_api::Failover) -> impl IntoView {
    let what = match (&event.from, &event.to) {
        (_, Some(to)) => format!(
            "{to} took the writes{}{}",
            event.from.as_ref().map(|f| format!(" from {f}")).unwrap_or_default(),
            event.timeline.map(|t| format!(" (timeline {t})")).unwrap_or_default()
        ),
        (Some(from), None) => format!("{from} lost: no primary"),
        (None, None) => "no primary".into(),
    };
    view! {
        <p class="failover" title=format::clock(event.at_ms)>
            "failover " {format::ago(event.at_ms)} ": " {what}
        </p>
    }
}

/// Reads and writes as shares of the shard's statements.
#[component]
fn ReadWriteBar(shard: Memo<Option<Shard>>) -> impl IntoView {
    let share = move |f: fn(&Shard) -> f64| {
        move || {
            shard.with(|s| {
                let s = s.as_ref().filter(|s| s.load.statements_per_s > 0.0);
                format!("{:.1}%", s.map_or(0.0, |s| f(s) / s.load.statements_per_s * 100.0))
            })
        }
    };
    view! {
        <div class="rwbar" title="reads / writes / other statements">
            <span class="reads" style:width=share(|s| s.load.reads_per_s)></span>
            <span class="writes" style:width=share(|s| s.load.writes_per_s)></span>
        </div>
    }
}

const SPARK_W: f64 = 300.0;
const SPARK_H: f64 = 44.0;

/// The last minute always fits a sparkline's scale.
const SPARK_RECENT: usize = 60;

/// Statements per second over the last 15 minutes, right-aligned to now;
/// scaled to the recent load, a past burst drawn clipped at the top.
#[component]
fn Sparkline(series: impl Fn() -> VecDeque<Point> + Send + Sync + Copy + 'static) -> impl IntoView {
    move || {
        let points = series();
        let values: Vec<f64> = points.iter().map(|p| p.statements as f64).collect();
        let peak = values.iter().copied().fold(0.0, f64::max);
        if peak == 0.0 {
            return view! { <div class="sparkline idle">"no statements in the last 15 min"</div> }.into_any();
        }
        let top = crate::scale::top(&values, SPARK_RECENT);
        let label = if peak > top {
            format!("scale {}/s · peak {}/s", format::rate(top), format::rate(peak))
        } else {
            format!("peak {}/s", format::rate(peak))
        };
        view! {
            <div class="sparkline">
                <svg viewBox=format!("0 0 {SPARK_W} {SPARK_H}") preserveAspectRatio="none">
                    <path class="area" d=area_path(&points, top) />
                </svg>
                <span class="peak">{label}</span>
            </div>
        }
        .into_any()
    }
}

fn area_path(points: &VecDeque<Point>, top: f64) -> String {
    let step = SPARK_W / (RECENT_SECONDS - 1) as f64;
    let start = RECENT_SECONDS.saturating_sub(points.len());
    let x = |i: usize| (start + i) as f64 * step;
    let y = |v: u64| SPARK_H - (v as f64 / top).min(1.0) * (SPARK_H - 2.0);
    let mut d = format!("M{:.1},{SPARK_H}", x(0));
    for (i, p) in points.iter().enumerate() {
        d.push_str(&format!(" L{:.1},{:.1}", x(i), y(p.statements)));
    }
    d.push_str(&format!(" L{:.1},{SPARK_H} Z", x(points.len().saturating_sub(1))));
    d
}
