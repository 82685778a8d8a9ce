//! The whole fleet, from the Prometheus that scrapes every sidecar: load
//! per shard, the hottest keys across sidecars, and the sidecars themselves
//! (one serving an older plugin version than another is flagged). Shown
//! only when the sidecar has `[fleet] prometheus_url`.

use leptos::prelude::*;
use shardcar_api::{Fleet, FleetSidecar, FleetTable};

use super::{Empty, Panel};
use crate::format;
use crate::live::Live;

/// Keys shown per table.
const KEYS: usize = 5;

#[component]
pub fn FleetView(live: Live) -> impl IntoView {
    let note = Signal::derive(move || {
        live.fleet.with(|f| match f {
            Some(Ok(f)) => {
                format!("{} sidecars · from Prometheus at {}", f.sidecars.len(), f.prometheus.as_deref().unwrap_or(""))
            }
            _ => String::new(),
        })
    });
    move || {
        live.fleet.get().map(|fleet| {
            view! {
                <Panel id="fleet" title="Fleet" note>
                    {match fleet {
                        Err(e) => view! { <Empty text=format!("Fleet view unavailable: {e}") /> }.into_any(),
                        Ok(f) => body(f).into_any(),
                    }}
                </Panel>
            }
        })
    }
}

fn body(f: Fleet) -> impl IntoView {
    let shards = f.shards.iter().map(|s| {
        view! {
            <tr>
                <td>{s.shard.clone()}</td>
                <td class="num">{format::rate(s.statements_per_s)}</td>
                <td class="num">{format::rate(s.errors_per_s)}</td>
                <td class="num">{format::count(s.statements_total as u64)}</td>
            </tr>
        }
    });
    view! {
        <div class="fleet-grid">
            <div class="fleet-box">
                <h3>"Load per shard"</h3>
                <table class="fleet-shards">
                    <thead><tr><th>"shard"</th><th class="num">"stmt/s"</th><th class="num">"errors/s"</th><th class="num">"since start"</th></tr></thead>
                    <tbody>{shards.collect_view()}</tbody>
                </table>
            </div>
            {f.tables.into_iter().map(|t| view! { <TableKeys table=t /> }).collect_view()}
            <div class="fleet-box">
                <h3>"Sidecars"</h3>
                <ul class="fleet-sidecars">{f.sidecars.into_iter().map(sidecar).collect_view()}</ul>
            </div>
        </div>
    }
}

#[component]
fn TableKeys(table: FleetTable) -> impl IntoView {
    let rows = table.keys.into_iter().take(KEYS).map(|k| {
        view! {
            <tr>
                <td class="key mono" title=k.key.clone()>{k.key.clone()}</td>
                <td>{k.shard}</td>
                <td class="num">{format::count(k.statements as u64)}</td>
                <td class="num">{k.sidecars}</td>
            </tr>
        }
    });
    view! {
        <div class="fleet-box" data-table=table.table.clone()>
            <h3>{format!("Hot keys · {}", table.table)}</h3>
            <table class="fleet-keys">
                <thead><tr><th>"key"</th><th>"shard"</th><th class="num">"statements"</th><th class="num">"sidecars"</th></tr></thead>
                <tbody>{rows.collect_view()}</tbody>
            </table>
        </div>
    }
}

fn sidecar(s: FleetSidecar) -> impl IntoView {
    let plugins =
        s.plugins.iter().map(|(policy, plugin)| format!("{policy}: {plugin}")).collect::<Vec<_>>().join(" · ");
    let behind = (!s.behind.is_empty()).then(|| format!("older policy: {}", s.behind.join(", ")));
    let is_behind = behind.is_some();
    view! {
        <li class:behind=is_behind title=plugins>
            <span class="mono">{s.instance}</span>
            <span class="version">{s.version}</span>
            {behind.map(|b| view! { <span class="badge stall-badge">{b}</span> })}
        </li>
    }
}
