//! The top bar (the sidecar at a glance) and the connection banner.

use leptos::prelude::*;

use crate::format;
use crate::live::{Live, Status};

#[component]
pub fn Header(live: Live) -> impl IntoView {
    let overview = move || live.snapshot.with(|s| s.as_ref().map(|s| s.overview.clone()));
    let stat = move |f: fn(&shardcar_api::Overview) -> String| move || overview().map_or_else(|| "–".into(), |o| f(&o));
    view! {
        <header class="topbar">
            <div class="brand">
                <span class="logo">"shardcar"</span>
                <span class="version">{stat(|o| format!("v{}", o.version))}</span>
                {move || match overview() {
                    // Shard health, not readiness: the sidecar serves the other shards.
                    Some(o) if o.ready => view! { <span class="pill ok" title="every shard's primary answers">"shards up"</span> }.into_any(),
                    Some(_) => view! { <span class="pill bad" title="a shard's primary does not answer; the others are served">"shard down"</span> }.into_any(),
                    None => view! { <span class="pill">"…"</span> }.into_any(),
                }}
            </div>
            <nav>
                <a href="#shards">"Shards"</a>
                <a href="#hotspots">"Hotspots"</a>
                <a href="#history">"History"</a>
                <a href="#errors">"Errors"</a>
                <a href="#events">"Events"</a>
                <a href="#pools">"Pools"</a>
                <a href="#plugins">"Plugins"</a>
                <a href="#explain">"Explain"</a>
            </nav>
            <dl class="stats">
                <div><dt>"statements/s"</dt><dd id="total-rate">{stat(|o| format::rate(o.load.statements_per_s))}</dd></div>
                <div><dt>"statements"</dt><dd id="total-statements">{stat(|o| format::count(o.load.statements_total))}</dd></div>
                <div><dt>"p99"</dt><dd>{stat(|o| format::ms(o.load.p99_ms))}</dd></div>
                <div><dt>"skew"</dt><dd>{stat(|o| format!("{:.2}×", o.skew.ratio))}</dd></div>
                <div><dt>"clients"</dt><dd>{stat(|o| o.clients.connected.to_string())}</dd></div>
                <div><dt>"rejected"</dt><dd>{stat(|o| format::count(o.rejected_total))}</dd></div>
                <div><dt>"uptime"</dt><dd>{stat(|o| format::duration(o.uptime_s))}</dd></div>
            </dl>
            <div class="live" class:lost=move || matches!(live.status.get(), Status::Lost(_))>
                <span class="dot"></span>
                {move || match live.status.get() {
                    Status::Connecting => "connecting".to_string(),
                    Status::Live => live.snapshot.with(|s| s.as_ref().map_or_else(String::new, |s| format!("live {}", format::clock(s.at_unix_ms)))),
                    Status::Lost(_) => "offline".to_string(),
                }}
            </div>
        </header>
    }
}

/// Says when there is nothing to show yet, or the sidecar cannot be reached.
#[component]
pub fn Banner(live: Live) -> impl IntoView {
    move || match live.status.get() {
        Status::Connecting => view! {
            <div class="banner info" id="banner">"Connecting to the sidecar's admin API…"</div>
        }
        .into_any(),
        Status::Lost(why) => {
            let since = live.snapshot.with(|s| s.as_ref().map(|s| format::clock(s.at_unix_ms)));
            let shown = match since {
                Some(at) => format!(" Figures below are from {at}."),
                None => String::new(),
            };
            view! { <div class="banner error" id="banner">{format!("Sidecar unreachable: {why}.{shown}")}</div> }
                .into_any()
        }
        Status::Live => ().into_any(),
    }
}
