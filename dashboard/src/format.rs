//! Numbers as an operator reads them: short, fixed precision, units.

/// Statements per second: `0`, `8.4`, `512`, `12.3k`.
pub fn rate(per_s: f64) -> String {
    if per_s <= 0.0 {
        "0".into()
    } else if per_s < 10.0 {
        format!("{per_s:.1}")
    } else if per_s < 10_000.0 {
        format!("{per_s:.0}")
    } else {
        format!("{:.1}k", per_s / 1000.0)
    }
}

/// A count: `981`, `12.3k`, `4.1M`.
pub fn count(n: u64) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..10_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// Milliseconds: `0.42 ms`, `3.1 ms`, `250 ms`, `1.2 s`; `–` without data.
pub fn ms(value: Option<f64>) -> String {
    match value {
        None => "–".into(),
        Some(v) if v < 1.0 => format!("{v:.2} ms"),
        Some(v) if v < 10.0 => format!("{v:.1} ms"),
        Some(v) if v < 1000.0 => format!("{v:.0} ms"),
        Some(v) => format!("{:.1} s", v / 1000.0),
    }
}

/// Microseconds: `0.9 µs`, `850 µs`; `–` without data.
pub fn us(value: Option<f64>) -> String {
    match value {
        None => "–".into(),
        Some(v) if v < 10.0 => format!("{v:.1} µs"),
        Some(v) => format!("{v:.0} µs"),
    }
}

/// A share of a whole: `12.5%`.
pub fn percent(fraction: f64) -> String {
    if fraction <= 0.0 {
        "0%".into()
    } else if fraction < 0.001 {
        "<0.1%".into()
    } else {
        format!("{:.1}%", fraction * 100.0)
    }
}

/// Bytes: `512 B`, `3.4 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// A duration in seconds: `42s`, `5m 03s`, `2h 10m`, `3d 4h`.
pub fn duration(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {:02}s", seconds / 60, seconds % 60),
        3600..86_400 => format!("{}h {:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d {}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

/// How long ago a Unix-millisecond time was: `just now`, `5m 03s ago`.
pub fn ago(unix_ms: u64) -> String {
    let now = js_sys::Date::now() as u64;
    let seconds = now.saturating_sub(unix_ms) / 1000;
    if seconds < 2 { "just now".into() } else { format!("{} ago", duration(seconds)) }
}

/// Wall-clock time of a Unix-millisecond instant, local: `14:03:27`.
pub fn clock(unix_ms: u64) -> String {
    let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(unix_ms as f64));
    format!("{:02}:{:02}:{:02}", date.get_hours(), date.get_minutes(), date.get_seconds())
}
