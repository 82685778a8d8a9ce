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
                        <colgroup><col class="c-policy" /><col /><col class="c-version" /><col class="c-status" /><col class="c-n" /><col class="c-n" /><col class="c-n" /><col class="c-loaded" /><col class="c-error" /></colgroup>
                        <thead>
                            <tr>
                                <th>"policy"</th><th>"plugin"</th><th>"version"</th><th>"status"</th>
                                <th class="num">"calls"</th><th class="num">"errors"</th><th class="num">"p99"</th>
                                <th>"loaded"</th><th>"last error"</th>
                            </tr>
                        </thead>
                        <tbody>{p.plugins.iter().map(row).collect_view()}</tbody>
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
            <td>{format::ago(p.loaded_unix_ms)}</td>
            <td class="last-error" title=p.last_error.clone().unwrap_or_default()>{p.last_error.clone().unwrap_or_else(|| "–".into())}</td>
        </tr>
    }
}
