//! Each routing policy's plugin: what serves, how it behaves, what failed.

use leptos::prelude::*;
use shardcar_api::Plugin;

use super::{Empty, Panel};
use crate::format;
use crate::live::Live;

#[component]
pub fn Plugins(live: Live) -> impl IntoView {
    view! {
        <Panel id="plugins" title="Plugins">
            {move || match live.plugins.get() {
                Err(e) => view! { <Empty text=format!("Plugins unavailable: {e}") /> }.into_any(),
                Ok(None) => view! { <Empty text="Loading plugins…" /> }.into_any(),
                Ok(Some(p)) if p.plugins.is_empty() => view! {
                    <Empty text="No policies configured: every statement goes to routing.default_shard." />
                }
                .into_any(),
                Ok(Some(p)) => view! {
                    <table class="plugins">
                        <colgroup><col class="c-policy" /><col /><col class="c-version" /><col class="c-status" /><col class="c-n" /><col class="c-n" /><col class="c-n" /><col class="c-n" /><col class="c-loaded" /><col class="c-error" /></colgroup>
                        <thead>
                            <tr>
                                <th>"policy"</th><th>"plugin"</th><th>"version"</th><th>"status"</th>
                                <th class="num">"calls"</th><th class="num">"errors"</th><th class="num">"p99"</th>
                                <th class="num" title="memory of one instance once started; each concurrent call has one">"memory"</th>
                                <th>"loaded"</th><th>"last error"</th>
                            </tr>
                        </thead>
                        <tbody>{p.plugins.iter().map(|p| view! { {row(p)} {shadow_row(p)} }).collect_view()}</tbody>
                    </table>
                    {p.colocated.iter().map(|group| view! {
                        <p class="colocation" title="equal keys share a shard: joins on them run shard by shard">
                            "Colocated: " <span class="mono">{group.join(" = ")}</span>
                        </p>
                    }).collect_view()}
                }
                .into_any(),
            }}
        </Panel>
    }
}

fn row(p: &Plugin) -> impl IntoView + use<> {
    let ok = p.status == "ok";
    view! {
        <tr>
            <td>{p.policy.clone()}</td>
            <td><span class="mono">{p.plugin.clone()}</span><span class="sub" title="source">{format!(" {}", p.source)}</span></td>
            <td class="mono" title=format!("sha256 {}…", p.digest)>{format!("{} · {}", p.version, p.digest)}</td>
            <td><span class="pill" class:ok=ok class:bad=!ok>{p.status.clone()}</span></td>
            <td class="num">{format::count(p.calls_total)}</td>
            <td class="num" class:errors={p.errors_total > 0}>{format::count(p.errors_total)}</td>
            <td class="num">{format::us(p.p99_us)}</td>
            <td class="num">{format::bytes(p.instance_memory_bytes)}</td>
            <td>{format::ago(p.loaded_unix_ms)}</td>
            <td class="last-error" title=p.last_error.clone().unwrap_or_default()>{p.last_error.clone().unwrap_or_else(|| "–".into())}</td>
        </tr>
    }
}

/// The shadow plugin beside a live one: how often they agree, the keys
/// whose rows would move, the latest disagreements.
fn shadow_row(p: &Plugin) -> impl IntoView + use<> {
    let text = match (&p.shadow, &p.shadow_error, &p.promoted) {
        (Some(s), _, _) => {
            let compared = s.agreed + s.disagreed;
            let agreement = if compared == 0 {
                "–".to_string()
            } else {
                format!("{:.1}%", 100.0 * s.agreed as f64 / compared as f64)
            };
            let keys: u64 = s.tables.iter().map(|t| t.keys_moving).sum();
            let capped = if s.tables.iter().any(|t| t.keys_moving_capped) { "≥ " } else { "" };
            let examples: Vec<String> =
                s.tables
                    .iter()
                    .flat_map(|t| {
                        t.examples.iter().take(3).map(move |e| {
                            format!("{} {}: {} → {}", t.table, e.key, e.live.join(","), e.shadow.join(","))
                        })
                    })
                    .take(3)
                    .collect();
            let lost = if s.dropped + s.failed > 0 {
                format!(" · {} not compared, {} failed", s.dropped, s.failed)
            } else {
                String::new()
            };
            format!(
                "shadow {} · sample {:.0}% · {agreement} agree over {} statements · {} disagree · {capped}{keys} keys would move{lost}{}",
                s.plugin,
                100.0 * s.sample,
                format::count(compared),
                format::count(s.disagreed),
                if examples.is_empty() { String::new() } else { format!(" · e.g. {}", examples.join("; ")) }
            )
        }
        (None, Some(e), _) => format!("shadow not running: {e}"),
        (None, None, Some(promoted)) => format!("promoted: {promoted}"),
        _ => return None,
    };
    Some(view! {
        <tr class="shadow-row">
            <td></td>
            <td colspan="9" class="sub shadow" title="POST /api/v1/plugins/<policy>/promote?digest=<the shadow's digest> makes it live">{text}</td>
        </tr>
    })
}
