//! What happened, newest first: servers down and up, plugins serving and
//! refused, shards hot, stalled or out of connections, and recovering.

use leptos::prelude::*;
use shardcar_api::Event;

use super::{Empty, Panel};
use crate::format;
use crate::live::Live;

#[component]
pub fn Events(live: Live) -> impl IntoView {
    let events = move || live.snapshot.with(|s| s.as_ref().map(|s| s.events.clone()));
    view! {
        <Panel id="events" title="Events">
            {move || match events() {
                None => view! { <Empty text="Waiting for the first snapshot…" /> }.into_any(),
                Some(events) if events.is_empty() => view! { <Empty text="Nothing has happened since start." /> }.into_any(),
                Some(events) => view! {
                    <ol class="events">{events.iter().map(line).collect_view()}</ol>
                }
                .into_any(),
            }}
        </Panel>
    }
}

fn line(e: &Event) -> impl IntoView + use<> {
    let bad = matches!(e.kind.as_str(), "down" | "hot" | "stalled" | "pool_full" | "plugin_refused");
    view! {
        <li class="event" class:bad=bad data-kind=e.kind.clone() data-subject=e.subject.clone()>
            <span class="at mono">{format::clock(e.at_unix_ms)}</span>
            <span class="kind">{e.kind.replace('_', " ")}</span>
            <span class="subject">{e.subject.clone()}</span>
            <span class="message">{e.message.clone()}</span>
        </li>
    }
}
