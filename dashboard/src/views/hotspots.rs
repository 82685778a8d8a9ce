//! Where load concentrates: a heatmap of shards × time, and per sharded
//! table its hottest keys with the shard each lives on.

use leptos::prelude::*;
use shardcar_api::HotKeys;

use super::{Empty, Panel};
use crate::format;
use crate::live::{Live, RECENT_SECONDS};

/// Heatmap columns; each covers `RECENT_SECONDS / COLUMNS` seconds.
const COLUMNS: usize = 60;
const CELL_W: f64 = 10.0;
const ROW_H: f64 = 18.0;

#[component]
pub fn Hotspots(live: Live) -> impl IntoView {
    view! {
        <Panel id="hotspots" title="Hotspots">
            <Heatmap live />
            {move || match live.hot.get() {
                Err(e) => view! { <Empty text=format!("Hot keys unavailable: {e}") /> }.into_any(),
                Ok(None) => view! { <Empty text="Loading hot keys…" /> }.into_any(),
                Ok(Some(hot)) if hot.tables.is_empty() => view! {
                    <Empty text="No sharded tables in the config: hot keys are counted per [[tables]] entry." />
                }
                .into_any(),
                Ok(Some(hot)) => view! {
                    <div class="tables">{hot.tables.into_iter().map(|t| view! { <TableKeys table=t /> }).collect_view()}</div>
                }
                .into_any(),
            }}
        </Panel>
    }
}

/// Statements/s per shard (rows) over the last 15 minutes (columns).
#[component]
fn Heatmap(live: Live) -> impl IntoView {
    move || {
        let names = live.shard_names();
        let grid = live.series.with(|all| buckets(all));
        let peak = grid.iter().flatten().copied().fold(0.0, f64::max);
        // Scaled to the recent load (the last two columns always fit): a
        // past burst shows as the darkest cells, not as everything else pale.
        let max = grid.iter().map(|cells| crate::scale::top(cells, 2)).fold(0.0, f64::max);
        if names.is_empty() || peak == 0.0 {
            return view! { <div class="heatmap idle">"The heatmap fills as statements run."</div> }.into_any();
        }
        let seconds = (RECENT_SECONDS / COLUMNS) as u64;
        let width = COLUMNS as f64 * CELL_W;
        let height = names.len() as f64 * ROW_H;
        let rows = names.iter().zip(&grid).enumerate().map(|(r, (name, cells))| {
            let cells = cells.iter().enumerate().map(|(c, rate)| {
                let opacity = if *rate > 0.0 { 0.12 + 0.88 * (rate / max).min(1.0) } else { 0.0 };
                let ago = (COLUMNS - c) as u64 * seconds;
                view! {
                    <rect x=c as f64 * CELL_W + 0.5 y=r as f64 * ROW_H + 1.0 width=CELL_W - 1.0 height=ROW_H - 2.0 fill-opacity=format!("{opacity:.3}")>
                        <title>{format!("{name}: {}/s, {}–{} ago", format::rate(*rate), format::duration(ago), format::duration(ago - seconds))}</title>
                    </rect>
                }
            });
            view! { <g>{cells.collect_view()}</g> }
        });
        view! {
            <div class="heatmap">
                <div class="heatmap-labels">{names.iter().map(|n| view! { <span>{n.clone()}</span> }).collect_view()}</div>
                <svg viewBox=format!("0 0 {width} {height}") preserveAspectRatio="none" style:height=format!("{height}px")>
                    {rows.collect_view()}
                </svg>
                <div class="heatmap-axis"><span>"15 min ago"</span><span>{if peak > max { format!("darkest at {}/s and over · peak {}/s", format::rate(max), format::rate(peak)) } else { format!("darkest at {}/s", format::rate(max)) }}</span><span>"now"</span></div>
            </div>
        }
        .into_any()
    }
}

/// Per shard, statements/s in each column (missing seconds count as zero).
fn buckets(all: &[std::collections::VecDeque<shardcar_api::Point>]) -> Vec<Vec<f64>> {
    let newest = all.iter().filter_map(|s| s.back()).map(|p| p.t).max().unwrap_or(0);
    let seconds = (RECENT_SECONDS / COLUMNS) as u64;
    all.iter()
        .map(|series| {
            let mut cells = vec![0.0; COLUMNS];
            for p in series {
                let age = newest.saturating_sub(p.t);
                let column = COLUMNS as i64 - 1 - (age / seconds) as i64;
                if column >= 0 {
                    cells[column as usize] += p.statements as f64 / seconds as f64;
                }
            }
            cells
        })
        .collect()
}

#[component]
fn TableKeys(table: HotKeys) -> impl IntoView {
    let window = &table.window;
    let total = window.statements.max(1);
    let span = format!("last {} s", window.seconds.unwrap_or_default());
    let skew = table.skew.clone();
    let skew_note = format!(
        "skew {:.2}×{}",
        skew.ratio,
        skew.busiest.as_ref().map_or_else(String::new, |b| format!(" · busiest {b}"))
    );
    let keys_note = if table.show_keys {
        "keys shown as clients sent them"
    } else {
        "keys shown hashed (telemetry.show_keys = false)"
    };
    let rows = window.keys.iter().enumerate().map(|(i, k)| {
        let share = k.count as f64 / total as f64;
        let since_start = table.lifetime.keys.iter().find(|l| l.key == k.key).map_or("–".into(), |l| format::count(l.count));
        view! {
            <tr>
                <td class="num rank">{i + 1}</td>
                <td class="key mono" title=k.key.clone()>{k.key.clone()}</td>
                <td class="shard">{k.shard.clone()}</td>
                <td class="num">{format::count(k.count)}</td>
                <td class="share"><span class="bar" style:width=format!("{:.1}%", share * 100.0)></span><span class="pct">{format::percent(share)}</span></td>
                <td class="num lifetime">{since_start}</td>
            </tr>
        }
    });
    let body = if table.lifetime.keys.is_empty() {
        view! { <Empty text="No statements with a shard key yet." /> }.into_any()
    } else if window.keys.is_empty() {
        view! { <Empty text=format!("No statements with a shard key in the {span}.") /> }.into_any()
    } else {
        view! {
            <table class="hotkeys">
                <colgroup><col class="c-rank" /><col /><col class="c-shard" /><col class="c-count" /><col class="c-share" /><col class="c-count" /></colgroup>
                <thead><tr><th class="num">"#"</th><th>{table.key_column.clone()}</th><th>"shard"</th><th class="num">{span.clone()}</th><th>"share"</th><th class="num">"since start"</th></tr></thead>
                <tbody>{rows.collect_view()}</tbody>
            </table>
        }
        .into_any()
    };
    view! {
        <div class="table-keys" class:hot=skew.hot data-table=table.table.clone()>
            <header>
                <h3>{table.table.clone()}</h3>
                <span class="sub">{format!("by {} · policy {}", table.key_column, table.policy)}</span>
                <span class="badge" class:hot-badge=skew.hot>{skew_note}</span>
            </header>
            {body}
            <footer>{format!(
                "{span}: {} statements · {} · since start: {} · {keys_note}",
                format::count(window.statements),
                match window.max_error {
                    0 => "counts exact".to_string(),
                    e => format!("counts approximate: each at most {e} too high"),
                },
                format::count(table.lifetime.statements)
            )}</footer>
        </div>
    }
}
