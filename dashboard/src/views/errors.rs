//! Who is hurt: the errors clients got over the window, by the shard they
//! concern, SQLSTATE, who raised them, user and application.

use leptos::prelude::*;
use shardcar_api::ClientErrors;

use super::{Empty, Panel};
use crate::format;
use crate::live::Live;

#[component]
pub fn Errors(live: Live) -> impl IntoView {
    let errors = move || live.snapshot.with(|s| s.as_ref().map(|s| s.errors.clone()));
    let note = Signal::derive(move || {
        live.snapshot.with(|s| {
            s.as_ref()
                .map_or_else(String::new, |s| format!("errors clients got over the last {}s", s.overview.load.window_s))
        })
    });
    view! {
        <Panel id="errors" title="Errors" note>
            {move || match errors() {
                None => view! { <Empty text="Waiting for the first snapshot…" /> }.into_any(),
                Some(errors) if errors.is_empty() => view! { <Empty text="No client got an error in the window." /> }.into_any(),
                Some(errors) => view! {
                    <table class="errors-table">
                        <thead>
                            <tr>
                                <th>"shard"</th><th>"SQLSTATE"</th><th>"raised by"</th><th>"user"</th><th>"application"</th>
                                <th class="num">"in window"</th><th class="num">"per s"</th><th class="num">"since start"</th>
                            </tr>
                        </thead>
                        <tbody>{errors.iter().map(row).collect_view()}</tbody>
                    </table>
                }
                .into_any(),
            }}
        </Panel>
    }
}

fn row(e: &ClientErrors) -> impl IntoView + use<> {
    let shard = if e.shard.is_empty() { "–".to_string() } else { e.shard.clone() };
    let application = if e.application.is_empty() { "–".to_string() } else { e.application.clone() };
    view! {
        <tr data-shard=e.shard.clone() data-sqlstate=e.sqlstate.clone()>
            <td class="shard">{shard}</td>
            <td class="mono sqlstate">{e.sqlstate.clone()}</td>
            <td class="by">{e.by.clone()}</td>
            <td class="user">{e.user.clone()}</td>
            <td class="application">{application}</td>
            <td class="num count">{format::count(e.in_window)}</td>
            <td class="num">{format::rate(e.per_s)}</td>
            <td class="num">{format::count(e.total)}</td>
        </tr>
    }
}
