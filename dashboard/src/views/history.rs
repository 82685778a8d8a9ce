//! History: statements per second, p99 latency and errors per second of
//! every shard over a chosen range (the sidecar keeps an hour), each
//! range cut into at most `BUCKETS` buckets.

use std::collections::VecDeque;

use leptos::prelude::*;
use shardcar_api::Point;

use super::{Empty, Panel};
use crate::format;
use crate::live::Live;

const RANGES: [(&str, u64); 3] = [("5 min", 300), ("15 min", 900), ("1 h", 3600)];
const BUCKETS: u64 = 240;
const W: f64 = 360.0;
const H: f64 = 90.0;
/// One colour per shard, in shard order (cycled).
const COLOURS: [&str; 6] = ["#4aa3ff", "#b48cff", "#3ecf8e", "#f5b041", "#ff6b3d", "#8a99ab"];

#[derive(Clone, Copy)]
enum Measure {
    Rate,
    P99,
    Errors,
}

impl Measure {
    fn title(self) -> &'static str {
        match self {
            Measure::Rate => "statements/s",
            Measure::P99 => "p99 latency",
            Measure::Errors => "errors/s (from the shard)",
        }
    }

    fn label(self, v: f64) -> String {
        match self {
            Measure::P99 => format::ms(Some(v)),
            _ => format::rate(v),
        }
    }

    /// The bucket's value: rates are averaged over it, p99 is its worst second.
    fn of(self, points: &[&Point], seconds: u64) -> Option<f64> {
        match self {
            Measure::Rate => Some(points.iter().map(|p| p.statements).sum::<u64>() as f64 / seconds as f64),
            Measure::Errors => Some(points.iter().map(|p| p.errors).sum::<u64>() as f64 / seconds as f64),
            Measure::P99 => points.iter().filter_map(|p| p.p99_ms).reduce(f64::max),
        }
    }
}

#[component]
pub fn History(live: Live) -> impl IntoView {
    let range = RwSignal::new(900u64);
    let buttons = RANGES.map(|(label, seconds)| {
        view! {
            <button class="range" class:on=move || range.get() == seconds data-seconds=seconds on:click=move |_| range.set(seconds)>
                {label}
            </button>
        }
    });
    view! {
        <Panel id="history" title="History">
            <div class="ranges">{buttons.to_vec()}</div>
            {move || {
                let names = live.shard_names();
                if live.series.with(|s| s.iter().all(VecDeque::is_empty)) {
                    return view! { <Empty text="No history yet." /> }.into_any();
                }
                let legend = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| view! { <span class="legend-item"><span class="swatch" style:background=COLOURS[i % COLOURS.len()]></span>{n.clone()}</span> })
                    .collect_view();
                view! {
                    <div class="legend">{legend}</div>
                    <div class="charts">
                        <Chart live range measure=Measure::Rate />
                        <Chart live range measure=Measure::P99 />
                        <Chart live range measure=Measure::Errors />
                    </div>
                }
                .into_any()
            }}
        </Panel>
    }
}

#[component]
fn Chart(live: Live, range: RwSignal<u64>, measure: Measure) -> impl IntoView {
    let lines = move || {
        let seconds = range.get();
        live.series.with(|all| all.iter().map(|s| buckets(s, seconds, measure)).collect::<Vec<_>>())
    };
    let peak = move || lines().iter().flatten().flatten().copied().fold(0.0, f64::max);
    view! {
        <figure class="chart" data-measure=measure.title()>
            <figcaption>{measure.title()}<span class="peak">{move || format!("max {}", measure.label(peak()))}</span></figcaption>
            <svg viewBox=format!("0 0 {W} {H}") preserveAspectRatio="none">
                {move || {
                    let max = peak().max(f64::MIN_POSITIVE);
                    lines()
                        .into_iter()
                        .enumerate()
                        .map(|(i, line)| view! { <path class="line" stroke=COLOURS[i % COLOURS.len()] d=path(&line, max) /> })
                        .collect_view()
                }}
            </svg>
            <div class="axis"><span>{move || format!("{} ago", RANGES.iter().find(|r| r.1 == range.get()).map_or("", |r| r.0))}</span><span>"now"</span></div>
        </figure>
    }
}

/// The series' last `seconds`, in buckets, oldest first (`None`: no value).
fn buckets(series: &VecDeque<Point>, seconds: u64, measure: Measure) -> Vec<Option<f64>> {
    let Some(newest) = series.back().map(|p| p.t) else { return Vec::new() };
    let width = seconds.div_ceil(BUCKETS).max(1);
    let count = seconds.div_ceil(width) as usize;
    let mut grouped: Vec<Vec<&Point>> = vec![Vec::new(); count];
    for p in series.iter().rev().take_while(|p| newest - p.t < seconds) {
        grouped[count - 1 - ((newest - p.t) / width) as usize].push(p);
    }
    grouped.iter().map(|g| if g.is_empty() { None } else { measure.of(g, width) }).collect()
}

/// An SVG path through the buckets with values, scaled to `max`.
fn path(line: &[Option<f64>], max: f64) -> String {
    let step = W / (line.len().max(2) - 1) as f64;
    let mut d = String::new();
    let mut pen_down = false;
    for (i, v) in line.iter().enumerate() {
        match v {
            Some(v) => {
                let (x, y) = (i as f64 * step, H - v / max * (H - 2.0));
                // A bucket after a gap starts with a dot, so that a lone one shows.
                let start = if pen_down { "L" } else { "M" };
                let dot = if pen_down { "" } else { "h0.1 " };
                d.push_str(&format!("{start}{x:.1},{y:.1} {dot}"));
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    d
}
