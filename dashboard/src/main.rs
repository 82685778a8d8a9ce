//! shardcar's operator dashboard: a client-side Leptos app that reads only
//! the admin API (`shardcar-api` types) and its live stream.

mod api;
mod format;
mod live;
mod scale;
mod views;

use leptos::prelude::*;

use crate::live::Live;

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}

#[component]
fn App() -> impl IntoView {
    let live = Live::start();
    view! {
        <views::header::Header live />
        <main>
            <views::header::Banner live />
            <views::fleet::FleetView live />
            <views::shards::Shards live />
            <views::hotspots::Hotspots live />
            <views::history::History live />
            <views::errors::Errors live />
            <views::events::Events live />
            <views::pools::Pools live />
            <views::plugins::Plugins live />
            <views::explain::Explain live />
        </main>
    }
}
