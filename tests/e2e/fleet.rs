//! The fleet view: a real Prometheus scrapes three sidecars with different
//! traffic, and any one of them answers `/api/v1/fleet` with their sum.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Fleet, Sidecar, eventually};

/// A Prometheus server (Debian's `prometheus`) scraping `targets` every second.
struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(port: u16, job: &str, targets: &[u16]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus is installed (deploy/setup.sh with SHARDCAR_SETUP_FLEET=1)");
        Prometheus { child, _dir: dir }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Statements the sidecar counted on `shard` (every role, server and kind).
fn statements_on(metrics: &str, shard: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("shardcar_statements_total{") && l.contains(&format!("shard=\"{shard}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn prometheus_adds_up_three_sidecars_load_and_hot_keys() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("fleetview").await;
    let port = shardcar::localpg::free_port().unwrap();
    let job = format!("fleet-{}", std::process::id());
    let config = format!(
        "{}\n[fleet]\nprometheus_url = \"http://127.0.0.1:{port}\"\nselector = 'job=\"{job}\"'\n",
        fleet.hashed_config(&t, "")
    );
    let sidecars: Vec<Sidecar> = (0..3).map(|_| Sidecar::start(&config)).collect();
    let admin_ports: Vec<u16> = sidecars.iter().map(|s| s.admin_port).collect();
    let _prometheus = Prometheus::start(port, &job, &admin_ports);

    // Sidecar i's own hottest customer is 10 + i (100 statements); customer
    // 7 comes second on each (60), so it is first only across the fleet.
    for (i, sc) in sidecars.iter().enumerate() {
        let c = sc.connect().await;
        for (customer, times) in [(10 + i as i64, 100), (7, 60)] {
            for _ in 0..times {
                c.query(&format!("SELECT * FROM {t} WHERE customer_id = $1"), &[&customer]).await.unwrap();
            }
        }
    }
    let metrics: Vec<String> = sidecars.iter().map(|sc| sc.admin_get("/metrics").1).collect();
    let expected: Vec<(String, f64)> = ["s0", "s1"]
        .iter()
        .map(|shard| (shard.to_string(), metrics.iter().map(|m| statements_on(m, shard)).sum()))
        .collect();
    assert_eq!(expected.iter().map(|(_, n)| n).sum::<f64>(), 480.0, "every statement counted once: {expected:?}");

    // Once Prometheus has scraped all three after the traffic, any sidecar's
    // fleet view adds them up.
    let mut last = None;
    let added_up = eventually(Duration::from_secs(60), async || {
        let (status, body) = sidecars[1].admin_get("/api/v1/fleet");
        let Ok(f) = serde_json::from_str::<shardcar_api::Fleet>(&body) else {
            last = Some(format!("{status}: {body}"));
            return false;
        };
        let totals: Vec<(String, f64)> = f.shards.iter().map(|s| (s.shard.clone(), s.statements_total)).collect();
        let done = totals == expected;
        last = Some(format!("{f:?}"));
        done
    })
    .await;
    assert!(added_up, "per-shard totals equal the three sidecars' sum {expected:?}; last answer: {last:?}");

    // Hot keys come from another series than the totals: scraped at the same
    // time, but answered by the fleet view once each sidecar's is in.
    let mut f: Option<shardcar_api::Fleet> = None;
    eventually(Duration::from_secs(30), async || {
        let (_, body) = sidecars[0].admin_get("/api/v1/fleet");
        let Ok(fleet) = serde_json::from_str::<shardcar_api::Fleet>(&body) else { return false };
        let done = fleet.tables.iter().any(|x| x.table == t && x.keys.first().is_some_and(|k| k.sidecars == 3));
        f = Some(fleet);
        done
    })
    .await;
    let f = f.expect("a fleet answer");
    assert_eq!(f.sidecars.len(), 3, "{f:?}");
    assert!(f.sidecars.iter().all(|s| !s.version.is_empty() && s.behind.is_empty() && !s.plugins.is_empty()), "{f:?}");
    let keys = &f.tables.iter().find(|x| x.table == t).expect("the table's fleet hot keys").keys;
    assert_eq!((keys[0].key.as_str(), keys[0].statements, keys[0].sidecars), ("7", 180.0, 3), "{keys:?}");
    assert!(keys[1..4].iter().all(|k| k.statements == 100.0 && k.sidecars == 1), "{keys:?}");

    // The dashboard of any sidecar shows the fleet, within its panel.
    use crate::dashboard::{Driver, OVERFLOW, screenshot, text, wait_for};
    let driver = Driver::start();
    let c = driver.browser().await;
    c.goto(&format!("http://127.0.0.1:{}/", sidecars[2].admin_port)).await.unwrap();
    let top = format!("#fleet .fleet-box[data-table={t}] tbody tr:first-child .key");
    // The panel refreshes on its own schedule: it may first show an answer
    // from before every sidecar's last scrape.
    let shown = wait_for(&c, Duration::from_secs(30), "the fleet's top key to be 7", async |c| {
        text(c, &top).await.filter(|k| k == "7")
    })
    .await;
    assert_eq!(shown, "7");
    let note = text(&c, "#fleet .panel-note").await.unwrap_or_default();
    assert!(note.starts_with("3 sidecars"), "{note}");
    assert_eq!(c.execute(OVERFLOW, vec![]).await.unwrap(), serde_json::json!([]));
    c.execute("document.getElementById('fleet').scrollIntoView({block: 'start', behavior: 'instant'})", vec![])
        .await
        .unwrap();
    screenshot(&c, "dashboard-fleet.png").await;
    // Ends the browser too: chromedriver's exit alone leaves it running.
    c.close().await.unwrap();
}

#[tokio::test]
async fn without_a_prometheus_url_there_is_no_fleet_view() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    let f: shardcar_api::Fleet = sc.admin_json("/api/v1/fleet");
    assert_eq!(f, shardcar_api::Fleet { prometheus: None, sidecars: vec![], shards: vec![], tables: vec![] });
}
