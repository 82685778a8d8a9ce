//! One module per section of the page.

pub mod errors;
pub mod events;
pub mod explain;
pub mod fleet;
pub mod header;
pub mod history;
pub mod hotspots;
pub mod plugins;
pub mod pools;
pub mod shards;

use leptos::prelude::*;

/// A section with a title, an optional note on the right, and its body.
#[component]
pub fn Panel(
    id: &'static str,
    title: &'static str,
    #[prop(optional, into)] note: Signal<String>,
    children: Children,
) -> impl IntoView {
    view! {
        <section class="panel" id=id>
            <header class="panel-head">
                <h2>{title}</h2>
                <span class="panel-note">{move || note.get()}</span>
            </header>
            {children()}
        </section>
    }
}

/// A placeholder where data will be (or cannot be) shown.
#[component]
pub fn Empty(#[prop(into)] text: String) -> impl IntoView {
    view! { <p class="empty">{text}</p> }
}
