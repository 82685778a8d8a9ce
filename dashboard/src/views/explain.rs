//! Type a statement, see what the classifier read from it, the keys the
//! policy extracted and where it would run — without running it.

use leptos::ev::SubmitEvent;
use leptos::prelude::*;
use leptos::task::spawn_local;
use shardcar_api::{Explanation, StatementExplanation};

use super::{Empty, Panel};
use crate::live::Live;

#[component]
pub fn Explain(live: Live) -> impl IntoView {
    let sql = RwSignal::new(String::new());
    let result: RwSignal<Option<Result<Explanation, String>>> = RwSignal::new(None);
    let busy = RwSignal::new(false);
    // An example from the config's first sharded table, once it is known.
    let placeholder = move || {
        live.hot
            .with(|h| match h {
                Ok(Some(h)) => {
                    h.tables.first().map(|t| format!("SELECT * FROM {} WHERE {} = 42", t.table, t.key_column))
                }
                _ => None,
            })
            .unwrap_or_else(|| "SELECT * FROM orders WHERE customer_id = 42".into())
    };
    let submit = move |ev: SubmitEvent| {
        ev.prevent_default();
        let text = sql.get_untracked();
        if text.trim().is_empty() {
            return;
        }
        busy.set(true);
        spawn_local(async move {
            let answer = crate::api::get::<Explanation>("explain", &[("sql", &text)]).await;
            result.set(Some(answer));
            busy.set(false);
        });
    };
    view! {
        <Panel id="explain" title="Explain">
            <form class="explain-form" on:submit=submit>
                <textarea id="explain-sql" rows="2" spellcheck="false" placeholder=placeholder bind:value=sql></textarea>
                <button type="submit" id="explain-go" disabled=move || busy.get()>{move || if busy.get() { "Explaining…" } else { "Explain" }}</button>
            </form>
            {move || match result.get() {
                None => view! { <Empty text="Nothing runs: shardcar parses the statement, calls the policy and shows its decision." /> }.into_any(),
                Some(Err(e)) => view! { <p class="explain-error">{e}</p> }.into_any(),
                Some(Ok(x)) => view! { <Decision x /> }.into_any(),
            }}
        </Panel>
    }
}

#[component]
fn Decision(x: Explanation) -> impl IntoView {
    let target = match (&x.target, &x.error) {
        (_, Some(refusal)) => view! {
            <div class="explain-target refused">
                <span class="label">"refused"</span>
                <span class="mono">{format!("SQLSTATE {}", refusal.code)}</span>
                <span>{refusal.message.clone()}</span>
                {refusal.hint.clone().map(|h| view! { <span class="hint">{h}</span> })}
            </div>
        }
        .into_any(),
        (Some(t), None) => view! {
            <div class="explain-target" id="explain-target">
                <span class="label">"runs on"</span>
                <span class="shard-name">{t.shard.clone()}</span>
                <span class="role">{t.role.clone()}</span>
            </div>
        }
        .into_any(),
        (None, None) => match &x.fan_out {
            Some(f) => view! {
                <div class="explain-target" id="explain-target">
                    <span class="label">"runs on"</span>
                    <span class="shard-name">{f.shards.join(", ")}</span>
                    <span class="role">{format!("merged: {}", f.merge)}</span>
                    {f.sql.clone().map(|sql| view! { <span class="hint mono">{format!("each shard runs: {sql}")}</span> })}
                </div>
            }
            .into_any(),
            None => {
                view! { <div class="explain-target"><span class="label">"no single target"</span></div> }.into_any()
            }
        },
    };
    let colocated = x.statements.iter().find(|s| !s.colocated.is_empty()).map(|s| {
        view! { <p class="sub">{format!("colocated (equal keys on one shard): {}", s.colocated.join(", "))}</p> }
    });
    let hints = (!x.hints.is_empty()).then(|| {
        let text = x.hints.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
        view! { <p class="sub">{format!("hints: {text}")}</p> }
    });
    let parse_error = x
        .parse_error
        .clone()
        .map(|e| view! { <p class="explain-error">{format!("The parser could not read it: {e}")}</p> });
    let rows = x.statements.iter().map(statement_row).collect_view();
    let statements = if x.statements.is_empty() {
        view! { <Empty text="No statements." /> }.into_any()
    } else {
        view! {
            <table class="explain-statements">
                <thead>
                    <tr><th>"statement"</th><th>"kind"</th><th>"tables"</th><th>"conditions"</th><th>"routed by"</th><th>"keys"</th><th>"shards"</th><th>"role"</th></tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        }
        .into_any()
    };
    view! {
        <div class="explain-result">
            {target}
            {parse_error}
            {colocated}
            {hints}
            {statements}
        </div>
    }
}

fn statement_row(s: &StatementExplanation) -> impl IntoView + use<> {
    let list = |v: &[String]| if v.is_empty() { "–".to_string() } else { v.join(", ") };
    let routed = match &s.plugin {
        Some(plugin) => format!("{} ({plugin})", s.routed_by),
        None => s.routed_by.clone(),
    };
    view! {
        <tr>
            <td class="mono text" title=s.text.clone()>{s.text.clone()}</td>
            <td>{s.kind.clone()}</td>
            <td>{list(&s.tables)}</td>
            <td class="mono">{list(&s.predicates)}</td>
            <td>{routed}</td>
            <td class="mono keys">{list(&s.keys)}</td>
            <td class="shards">{list(&s.shards)}</td>
            <td>{s.role.clone().unwrap_or_else(|| "–".into())}</td>
        </tr>
    }
}
