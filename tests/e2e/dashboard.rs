//! The dashboard in a real browser (headless Chromium from Debian, driven
//! over WebDriver by chromedriver) against the demo with a skewed workload.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::harness::{Demo, admin_json, connect, sqlstate};

/// chromedriver on a free port, killed on drop.
pub(crate) struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    pub(crate) fn start() -> Driver {
        let port = shardcar::localpg::free_port().unwrap();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; deploy/setup.sh installs it)");
        Driver { child, port }
    }

    /// A browser session at 1280×800 that keeps the console log.
    pub(crate) async fn browser(&self) -> Client {
        let caps = json!({
            "goog:chromeOptions": {
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-dev-shm-usage", "--window-size=1280,800"],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let caps: fantoccini::wd::Capabilities = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                Ok(c) => return c,
                // chromedriver takes a moment to listen.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot start a browser session: {e}"),
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver's console log of the page (`goog:loggingPrefs`).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

pub(crate) async fn text(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// Polls `check` (a page query) until it gives `Some`, or panics saying `what`.
pub(crate) async fn wait_for<T>(
    c: &Client,
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut(&Client) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check(c).await {
            return v;
        }
        if Instant::now() > deadline {
            let page = c.source().await.unwrap_or_default();
            panic!("timed out waiting for {what}; page:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Clicks the element as a user would once it is on screen. The page keeps
/// growing while data arrives, so an element scrolled into view can move under
/// something else before the click lands; the click is tried again until it does.
async fn click(c: &Client, css: &str) {
    let script = format!("document.querySelector(\"{css}\").scrollIntoView({{block: 'center', behavior: 'instant'}})");
    wait_for(c, Duration::from_secs(10), &format!("{css} to take a click"), async |c| {
        c.execute(&script, vec![]).await.ok()?;
        c.find(Locator::Css(css)).await.ok()?.click().await.ok()
    })
    .await
}

#[tokio::test]
async fn dashboard_shows_live_shards_hot_keys_and_explains() {
    let demo = Demo::start(&["--rate", "0"]).await;
    let driver = Driver::start();
    let c = driver.browser().await;
    c.goto(&format!("http://127.0.0.1:{}/", demo.admin_port)).await.unwrap();
    // A 1280×800 viewport (the window size includes the browser's own bars).
    let bars = c.execute("return window.outerHeight - window.innerHeight", vec![]).await.unwrap();
    c.set_window_size(1280, 800 + bars.as_u64().unwrap_or(0) as u32).await.unwrap();

    // Every shard is listed.
    let shards: BTreeSet<String> = wait_for(&c, Duration::from_secs(30), "three shard cards", async |c| {
        let cards = c.find_all(Locator::Css(".shard-card")).await.ok()?;
        let mut names = BTreeSet::new();
        for card in cards {
            names.insert(card.attr("data-shard").await.ok()??);
        }
        (names.len() == 3).then_some(names)
    })
    .await;
    assert_eq!(shards, ["s0", "s1", "s2"].map(String::from).into());
    // The demo's customers and orders are routed by one policy: colocated.
    let colocated =
        wait_for(&c, Duration::from_secs(10), "the colocated tables", async |c| text(c, ".colocation").await).await;
    assert!(colocated.contains("customers.id = orders.customer_id"), "{colocated}");

    // Before any traffic, sections say so rather than draw nothing.
    let idle = wait_for(&c, Duration::from_secs(10), "the no-traffic states", async |c| {
        let sparklines = c.find_all(Locator::Css(".sparkline.idle")).await.ok()?.len();
        let keys = text(c, ".table-keys[data-table=customers] .empty").await?;
        (sparklines == 3).then_some(keys)
    })
    .await;
    assert_eq!(idle, "No statements with a shard key yet.");

    // The workload as its own process, for its exact report of the keys it used.
    let load = Command::new(env!("CARGO_BIN_EXE_shardcar"))
        .args(["bench-load", "--port", &demo.port.to_string(), "--rate", "400", "--seconds", "40", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The numbers change between two snapshots.
    let first = wait_for(&c, Duration::from_secs(30), "statements counted", async |c| {
        text(c, "#total-statements").await.filter(|t| t != "–" && t != "0")
    })
    .await;
    let second = wait_for(&c, Duration::from_secs(10), "the count to move", async |c| {
        text(c, "#total-statements").await.filter(|t| *t != first)
    })
    .await;
    assert_ne!(first, second);

    // Each server's TLS is shown: the demo's shards are on loopback, where
    // the default is no TLS.
    let tls = wait_for(&c, Duration::from_secs(10), "the pools' TLS column", async |c| {
        text(c, "#pools td.tls").await.filter(|t| !t.is_empty())
    })
    .await;
    assert_eq!(tls, "off");

    // History: a line per shard in each chart, over the range chosen.
    click(&c, "#history .range[data-seconds='3600']").await;
    let lines = wait_for(&c, Duration::from_secs(10), "history charts with a line per shard", async |c| {
        let charts = c.find_all(Locator::Css("#history .chart")).await.ok()?;
        let lines = c.find_all(Locator::Css("#history .chart path.line")).await.ok()?;
        (charts.len() == 3 && lines.len() == 9).then_some(lines)
    })
    .await;
    assert!(!lines[0].attr("d").await.unwrap().unwrap_or_default().is_empty(), "statements/s has points");
    assert_eq!(text(&c, "#history .range.on").await.as_deref(), Some("1 h"));
    screenshot(&c, "dashboard-history.png").await;

    // The hot shard is marked, and it is the one the sidecar flags.
    let hot = wait_for(&c, Duration::from_secs(60), "a hot shard card", async |c| {
        c.find(Locator::Css(".shard-card.hot")).await.ok()?.attr("data-shard").await.ok()?
    })
    .await;
    let flagged: shardcar_api::Shards = admin_json(demo.admin_port, "/api/v1/shards?series=1");
    let flagged: Vec<_> = flagged.shards.iter().filter(|s| s.hot).map(|s| s.name.clone()).collect();
    assert_eq!(flagged, [hot]);
    let badge = text(&c, ".shard-card.hot .hot-badge").await.unwrap_or_default();
    assert!(badge.starts_with("HOT"), "{badge}");

    // The workload's most used customer is the first hot key shown.
    let out = tokio::task::spawn_blocking(move || load.wait_with_output().unwrap()).await.unwrap();
    assert!(out.status.success(), "bench-load: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    let top = report["top_keys"].as_array().unwrap().iter().find(|t| t["table"] == "customers").unwrap()["keys"][0][0]
        .as_str()
        .unwrap()
        .to_string();
    let shown = wait_for(&c, Duration::from_secs(10), "the customers table's hot keys", async |c| {
        text(c, ".table-keys[data-table=customers] tbody tr:first-child .key").await
    })
    .await;
    assert_eq!(shown, top, "workload report: {report}");

    // A key that turns hot now ranks first within 10 s, although the
    // workload's keys have far larger counts since start (one client
    // asking for it 100 times a second; the workload's top key had about
    // 90 a second, for 40 s).
    let hammering = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hammer = {
        let (conninfo, hammering) = (demo.conninfo(), hammering.clone());
        tokio::spawn(async move {
            let client = connect(&conninfo).await.unwrap();
            let mut n = 0u64;
            let mut every = tokio::time::interval(Duration::from_millis(10));
            while hammering.load(std::sync::atomic::Ordering::Relaxed) {
                every.tick().await;
                client.batch_execute("SELECT * FROM customers WHERE id = 7777").await.unwrap();
                n += 1;
            }
            n
        })
    };
    let turned_hot = Instant::now();
    wait_for(&c, Duration::from_secs(10), "customer 7777 at rank 1", async |c| {
        text(c, ".table-keys[data-table=customers] tbody tr:first-child .key").await.filter(|k| k == "7777")
    })
    .await;
    let ranked_after = turned_hot.elapsed();
    hammering.store(false, std::sync::atomic::Ordering::Relaxed);
    let asked = hammer.await.unwrap();
    println!("a new hot key ranked first {ranked_after:?} after it turned hot ({asked} statements by then)");
    let lifetime: shardcar_api::HotKeys = admin_json(demo.admin_port, "/api/v1/hotkeys?table=customers");
    assert_ne!(lifetime.lifetime.keys[0].key, "7777", "since start, the workload's top key still leads");

    // What an operator sees at a glance, saved for people to look at.
    c.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    screenshot(&c, "dashboard.png").await;

    // At common screen widths nothing spills out of its card or panel, and
    // no figure is wider than its own box.
    for width in [1280, 1920, 2560] {
        c.set_window_size(width, 1000 + bars.as_u64().unwrap_or(0) as u32).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let overflow = c.execute(OVERFLOW, vec![]).await.unwrap();
        assert_eq!(overflow, json!([]), "at {width} px");
        screenshot(&c, &format!("dashboard-{width}.png")).await;
    }
    c.set_window_size(1280, 800 + bars.as_u64().unwrap_or(0) as u32).await.unwrap();

    // The explain box routes a statement to the shard that holds the row.
    let sql = format!("SELECT * FROM customers WHERE id = {top}");
    // Scroll it to the middle first: the sticky top bar would cover it at the edge.
    c.execute("document.getElementById('explain').scrollIntoView({block: 'center', behavior: 'instant'})", vec![])
        .await
        .unwrap();
    let input = c.find(Locator::Css("#explain-sql")).await.unwrap();
    input.send_keys(&sql).await.unwrap();
    click(&c, "#explain-go").await;
    let routed = wait_for(&c, Duration::from_secs(10), "an explain answer", async |c| {
        text(c, "#explain-target .shard-name").await
    })
    .await;
    let holder = demo.shard(&routed).await;
    let id: i64 = top.parse().unwrap();
    let rows = holder.query("SELECT 1 FROM customers WHERE id = $1", &[&id]).await.unwrap();
    assert_eq!(rows.len(), 1, "customer {id} lives on {routed}");

    c.execute("document.getElementById('explain').scrollIntoView({block: 'end', behavior: 'instant'})", vec![])
        .await
        .unwrap();
    screenshot(&c, "dashboard-explain.png").await;

    // No console errors all along.
    let log = c.issue_cmd(BrowserLog).await.unwrap();
    let errors: Vec<_> =
        log.as_array().unwrap().iter().filter(|e| e["level"] == "SEVERE" || e["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // A table locked on one shard stalls every statement there: its card
    // says so while it lasts, with the age of the oldest running statement
    // and the clients waiting for a connection (12 clients, 10 connections).
    let locker = demo.shard("s1").await;
    locker.batch_execute("BEGIN; LOCK TABLE customers IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let blocked: Vec<_> = (0..12)
        .map(|_| {
            let conninfo = demo.conninfo();
            tokio::spawn(async move {
                let client = connect(&conninfo).await.unwrap();
                loop {
                    match client.batch_execute("/* shardcar: shard=s1 */ SELECT count(*) FROM customers").await {
                        // No free connection within the pool's timeout: wait again.
                        Err(e) if sqlstate(&e) == "53300" => continue,
                        other => return other,
                    }
                }
            })
        })
        .collect();
    let locked = Instant::now();
    let card = ".shard-card.stalled[data-shard=s1]";
    let (oldest, waiting) = wait_for(&c, Duration::from_secs(10), "the stalled s1 card", async |c| {
        c.find(Locator::Css(card)).await.ok()?;
        let oldest = text(c, &format!("{card} .oldest-running")).await?;
        let waiting = text(c, &format!("{card} .waiting")).await?;
        (oldest != "–" && waiting != "0").then_some((oldest, waiting))
    })
    .await;
    println!("stall shown {:?} after the lock: oldest running {oldest}, {waiting} waiting", locked.elapsed());
    assert_eq!(text(&c, &format!("{card} .stall-badge")).await.as_deref(), Some("STALLED"));
    let api: shardcar_api::Shards = admin_json(demo.admin_port, "/api/v1/shards?series=1");
    let s1 = api.shards.iter().find(|s| s.name == "s1").unwrap();
    assert!(s1.in_flight.stalled && s1.in_flight.running >= 10, "{:?}", s1.in_flight);
    assert!(api.shards.iter().filter(|s| s.name != "s1").all(|s| !s.in_flight.stalled), "only s1 stalls");
    c.execute("document.getElementById('shards').scrollIntoView({block: 'start', behavior: 'instant'})", vec![])
        .await
        .unwrap();
    screenshot(&c, "dashboard-stall.png").await;
    locker.batch_execute("COMMIT").await.unwrap();
    for b in blocked {
        b.await.unwrap().expect("the blocked statements finish once the lock goes");
    }
    wait_for(&c, Duration::from_secs(10), "the stall to clear", async |c| {
        c.find(Locator::Css(".shard-card.stalled")).await.is_err().then_some(())
    })
    .await;
    // The event timeline has both ends of it.
    wait_for(&c, Duration::from_secs(5), "the stall in the events", async |c| {
        c.find(Locator::Css("#events .event[data-kind=stalled][data-subject=s1]")).await.ok()?;
        c.find(Locator::Css("#events .event[data-kind=flowing][data-subject=s1]")).await.ok()
    })
    .await;

    // A shard that refuses connections: the errors clients get are
    // attributed to it, with their SQLSTATE and the application hurt.
    let s2_port = demo.primaries.iter().find(|(n, _)| n == "s2").unwrap().1;
    let admin = connect(&format!("host=127.0.0.1 port={s2_port} user=postgres dbname=postgres")).await.unwrap();
    admin
        .batch_execute(
            "ALTER DATABASE app ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = 'app' AND pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    let hurt = connect(&format!("{} application_name=checkout-service", demo.conninfo())).await.unwrap();
    let broke = Instant::now();
    let mut seen = Vec::new();
    let row = wait_for(&c, Duration::from_secs(15), "s2's errors in the errors panel", async |c| {
        // Clients keep trying while the panel is watched.
        if let Err(e) = hurt.batch_execute("/* shardcar: shard=s2 */ SELECT 1").await {
            seen.push(sqlstate(&e));
        }
        let row = "#errors tr[data-shard=s2][data-sqlstate='08001']";
        let application = text(c, &format!("{row} .application")).await?;
        let by = text(c, &format!("{row} .by")).await?;
        Some((application, by))
    })
    .await;
    println!("s2's errors shown {:?} after it refused connections", broke.elapsed());
    assert_eq!(row, ("checkout-service".to_string(), "shardcar".to_string()));
    assert!(seen.iter().all(|s| s == "08001" || s == "08006" || s == "57P01"), "{seen:?}");
    let card_errors = text(&c, ".shard-card[data-shard=s2] dd.errors").await.unwrap_or_default();
    assert_ne!(card_errors, "0%", "the card counts statements that never reached the shard");
    c.execute("document.getElementById('errors').scrollIntoView({block: 'start', behavior: 'instant'})", vec![])
        .await
        .unwrap();
    screenshot(&c, "dashboard-errors.png").await;
    wait_for(&c, Duration::from_secs(10), "s2's primary down in the events", async |c| {
        c.find(Locator::Css("#events .event[data-kind=down][data-subject='s2 primary']")).await.ok()
    })
    .await;
    c.execute("document.getElementById('events').scrollIntoView({block: 'start', behavior: 'instant'})", vec![])
        .await
        .unwrap();
    screenshot(&c, "dashboard-events.png").await;
    admin.batch_execute("ALTER DATABASE app ALLOW_CONNECTIONS true").await.unwrap();

    // The sidecar goes away: the page says so and keeps the last figures.
    let (clean, stderr) = demo.interrupt().await;
    assert!(clean, "{stderr}");
    let banner = wait_for(&c, Duration::from_secs(20), "the unreachable banner", async |c| {
        text(c, "#banner").await.filter(|t| t.starts_with("Sidecar unreachable"))
    })
    .await;
    assert!(banner.contains("Figures below are from"), "{banner}");
    assert_eq!(text(&c, ".live").await.as_deref(), Some("offline"));
    assert_eq!(c.find_all(Locator::Css(".shard-card")).await.unwrap().len(), 3);
    c.close().await.unwrap();
}

/// Elements drawn outside the card or panel that holds them, and figures
/// wider than their own box (text spilling into the next column, or a
/// number cut short; keys and addresses in tables may end in an ellipsis).
pub(crate) const OVERFLOW: &str = r#"
const found = [];
const name = (el) => el.tagName.toLowerCase() + (el.className && el.className.baseVal === undefined ? '.' + el.className.split(' ').join('.') : '');
for (const box of document.querySelectorAll('.card, .table-keys, .panel')) {
  const b = box.getBoundingClientRect();
  for (const el of box.querySelectorAll('*')) {
    if (el.closest('svg') && el.tagName.toLowerCase() !== 'svg') continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.left < b.left - 1 || r.right > b.right + 1) {
      found.push(`${name(box)} > ${name(el)} "${el.textContent.slice(0, 30)}": ${Math.round(r.left)}..${Math.round(r.right)} outside ${Math.round(b.left)}..${Math.round(b.right)}`);
    }
  }
  for (const el of box.querySelectorAll('dd, .lag, .address, .big, td.num, th')) {
    if (el.scrollWidth > el.clientWidth + 1) {
      found.push(`${name(box)} > ${name(el)} "${el.textContent.slice(0, 30)}": ${el.scrollWidth} px of content in ${el.clientWidth}`);
    }
  }
}
return found.slice(0, 20);
"#;

/// Saves what the browser shows under `target/screenshots/`.
pub(crate) async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}
