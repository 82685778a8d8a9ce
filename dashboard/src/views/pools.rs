//! Backend connection pools, one row per shard server.

use leptos::prelude::*;
use shardcar_api::Pool;

use super::{Empty, Panel};
use crate::format;
use crate::live::Live;

#[component]
pub fn Pools(live: Live) -> impl IntoView {
    let pools = move || live.snapshot.with(|s| s.as_ref().map(|s| s.pools.clone()));
    view! {
        <Panel id="pools" title="Pools">
            {move || match pools() {
                None => view! { <Empty text="Waiting for the first snapshot…" /> }.into_any(),
                Some(pools) => view! {
                    <table class="pools">
                        <colgroup><col class="c-shard" /><col class="c-role" /><col /><col class="c-tls" /><col class="c-bar" /><col class="c-n" /><col class="c-n" /><col class="c-n" /><col class="c-ms" /><col class="c-n" /><col class="c-ms" /><col class="c-n" /><col class="c-ms" /><col class="c-ms" /></colgroup>
                        <thead>
                            <tr>
                                <th>"shard"</th><th>"role"</th><th>"server"</th><th>"TLS"</th><th>"in use / idle of max"</th>
                                <th class="num">"in use"</th><th class="num">"idle"</th><th class="num">"waiting"</th><th class="num">"longest wait"</th>
                                <th class="num">"running"</th><th class="num">"oldest"</th><th class="num" title="pool.size, or the slots held of the fleet's budget">"max"</th>
                                <th class="num">"checkouts"</th><th class="num">"wait p99"</th>
                            </tr>
                        </thead>
                        <tbody>{pools.iter().map(row).collect_view()}</tbody>
                    </table>
                }
                .into_any(),
            }}
        </Panel>
    }
}

fn row(p: &Pool) -> impl IntoView + use<> {
    let of_max = |n: u64| format!("{:.1}%", n as f64 / p.max_size.max(1) as f64 * 100.0);
    view! {
        <tr class:waiting={p.waiting > 0}>
            <td>{p.shard.clone()}</td>
            <td class="role">{p.role.clone()}</td>
            <td class="mono">{p.address.clone()}</td>
            <td class="tls" class:plain={p.size > p.encrypted && p.sslmode != "disable"} title=tls_detail(p)>{tls_summary(p)}</td>
            <td><div class="poolbar"><span class="in-use" style:width=of_max(p.in_use)></span><span class="idle" style:width=of_max(p.idle)></span></div></td>
            <td class="num">{p.in_use}</td>
            <td class="num">{p.idle}</td>
            <td class="num waiting-count">{p.waiting}</td>
            <td class="num longest-wait">{format::ms(p.longest_wait_ms)}</td>
            <td class="num running">{p.running}</td>
            <td class="num oldest-running">{format::ms(p.oldest_running_ms)}</td>
            <td class="num pool-max" title=budget_detail(p)>{max_summary(p)}</td>
            <td class="num">{format::count(p.checkouts_total)}</td>
            <td class="num">{format::ms(p.checkout_wait_p99_ms)}</td>
        </tr>
    }
}

/// The pool's limit; with a fleet budget, the slots held of it ("5/20").
fn max_summary(p: &Pool) -> String {
    match &p.budget {
        Some(b) => format!("{}/{}", b.held, b.limit),
        None => p.max_size.to_string(),
    }
}

fn budget_detail(p: &Pool) -> String {
    match &p.budget {
        Some(b) => format!(
            "this sidecar holds {} of the {} connections that {} sidecars share (fair share {})",
            b.held, b.limit, b.sidecars, b.share
        ),
        None => "pool.size (no max_server_connections for this shard)".into(),
    }
}

/// "TLSv1.3 4/4" when connections are encrypted, else whether TLS is off by
/// configuration or the server did not offer it.
fn tls_summary(p: &Pool) -> String {
    match &p.tls {
        Some(tls) if p.encrypted > 0 => {
            format!("{} {}/{}", tls.split(' ').next().unwrap_or("TLS"), p.encrypted, p.size)
        }
        _ if p.sslmode == "disable" => "off".into(),
        _ if p.size > 0 => "plain".into(),
        _ => "—".into(),
    }
}

fn tls_detail(p: &Pool) -> String {
    match &p.tls {
        Some(tls) => format!("sslmode={}; {tls}", p.sslmode),
        None => format!("sslmode={}", p.sslmode),
    }
}
