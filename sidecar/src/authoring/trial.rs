//! `shardcar plugin test`: a project's component loaded as the sidecar
//! loads it, run against its own cases and, with `--same-as`, routed key
//! by key beside a built-in. Offline: the shards are names here, never
//! connected to, so a policy that needs the directory or the catalog is
//! tested in a running sidecar instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use toml::{Table, Value as Toml};

use super::Project;
use crate::classify::classify;
use crate::classify::params::Params;
use crate::config::Config;
use crate::policy::Router;
use crate::policy::cases::{route, verify};
use crate::policy::facts::SessionInfo;
use crate::policy::last_good::Version;

/// Its table, and the reference's, in the config built for the test.
const TABLE: &str = "plugin_keys";
const REFERENCE: &str = "reference_keys";

/// What `test` reports: the cases run, and the keys compared.
pub struct Report {
    pub cases: usize,
    pub compared: Option<Compared>,
}

pub struct Compared {
    pub reference: String,
    pub integers: usize,
    pub texts: usize,
    /// Routing one statement by the plugin, median and 99th percentile.
    pub p50: Duration,
    pub p99: Duration,
}

/// Tests `project`'s built component; `same_as` (a built-in) must route
/// each of `keys` generated keys to the same shards.
pub async fn test(project: &Project, same_as: Option<&str>, keys: usize) -> anyhow::Result<Report> {
    let component = project.component();
    if !component.is_file() {
        bail!("{} is not built: run `shardcar plugin build {}`", component.display(), project.dir.display());
    }
    if let Some(name) = same_as
        && crate::builtin::bytes(name).is_none()
    {
        bail!("--same-as {name}: not a built-in plugin ({})", crate::builtin::names().join(", "));
    }
    let cfg = Config::parse(&toml::to_string(&config(project, &component.display().to_string(), same_as))?)
        .context("the project's shards or config")?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let topology = Arc::new(crate::topology::Topology::new(&cfg));
    let pools = crate::pool::Pools::new(&cfg, topology, &metrics)?;
    let router = Router::new(&cfg, &pools, &metrics)?;

    let disk = Version::on_disk(&component).map_err(anyhow::Error::msg)?;
    let plugin = router.policies[0].plugin.load_full();
    // Both checks run, and both failures are told.
    let cases = verify(&router, 0, &plugin, disk.tests.as_deref(), &disk.origin).await;
    let compared = match same_as {
        Some(reference) => Some(compare(&router, reference, keys).await),
        None => None,
    };
    match (cases, compared) {
        (Ok(cases), None) => Ok(Report { cases, compared: None }),
        (Ok(cases), Some(Ok(c))) => Ok(Report { cases, compared: Some(c) }),
        (Err(e), None | Some(Ok(_))) => bail!("{e}"),
        (Ok(_), Some(Err(e))) => bail!("{e}"),
        (Err(cases), Some(Err(keys))) => bail!("{cases}\n{keys}"),
    }
}

/// A sidecar config of the project's shards (never connected to) with its
/// plugin routing one table, and the reference routing another.
fn config(project: &Project, component: &str, same_as: Option<&str>) -> Table {
    let table = |pairs: &[(&str, Toml)]| Toml::Table(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
    let text = |s: &str| Toml::String(s.into());
    let shards = project.shards.iter().enumerate().map(|(i, name)| {
        table(&[("name", text(name)), ("primary", text(&format!("postgres://offline@127.0.0.1:{}/offline", i + 1)))])
    });
    let mut policies = vec![(TABLE, "plugin", component)];
    policies.extend(same_as.map(|builtin| (REFERENCE, "reference", builtin)));
    let mut root = Table::new();
    root.insert("users".into(), Toml::Array(vec![table(&[("name", text("offline")), ("trust", Toml::Boolean(true))])]));
    root.insert("shards".into(), Toml::Array(shards.collect()));
    root.insert("routing".into(), table(&[("default_shard", text(&project.shards[0]))]));
    // Every key a call: nothing answered from memory. A second of CPU per
    // call: correctness is tested here, on any build and machine; the
    // times are reported for the author to hold against the sidecar's
    // `plugins.call_timeout_ms`.
    root.insert(
        "plugins".into(),
        table(&[("remembered_decisions", Toml::Integer(0)), ("call_timeout_ms", Toml::Integer(1000))]),
    );
    root.insert(
        "policies".into(),
        Toml::Array(
            policies
                .iter()
                .map(|(_, name, plugin)| {
                    table(&[
                        ("name", text(name)),
                        ("plugin", text(plugin)),
                        ("config", Toml::Table(project.config.clone())),
                    ])
                })
                .collect(),
        ),
    );
    root.insert(
        "tables".into(),
        Toml::Array(
            policies
                .iter()
                .map(|(t, policy, _)| table(&[("name", text(t)), ("key", text("k")), ("policy", text(policy))]))
                .collect(),
        ),
    );
    root
}

/// Routes `keys` keys through the plugin and the reference; every
/// difference is reported (the first ten shown).
async fn compare(router: &Router, reference: &str, keys: usize) -> Result<Compared, String> {
    let session = Arc::new(SessionInfo::default());
    let statement = |table: &str| Arc::new(classify(&format!("SELECT * FROM {table} WHERE k = $1")));
    let (ours, theirs) = (statement(TABLE), statement(REFERENCE));
    let mut generator = Keys(0x5eed_5eed);
    let (mut integers, mut texts, mut differ, mut shown) = (0, 0, 0, Vec::new());
    let mut times = Vec::with_capacity(keys);
    for i in 0..keys {
        let key = generator.key(i);
        if key.parse::<i64>().is_ok() {
            integers += 1;
        } else {
            texts += 1;
        }
        let params = Some(Arc::new(Params { values: vec![Some(key.clone().into())], ..Params::default() }));
        let names = |routed: Result<crate::policy::StatementRoute, crate::sqlerror::SqlError>| match routed {
            Ok(r) => format!("{:?}", r.shards.iter().map(|&s| router.topology().name(s)).collect::<Vec<_>>()),
            Err(e) => format!("error `{}`", e.message),
        };
        let started = Instant::now();
        let routed = route(router, &ours, &params, &session, false, None).await;
        times.push(started.elapsed());
        let got = names(routed);
        let want = names(route(router, &theirs, &params, &session, false, None).await);
        if got != want {
            differ += 1;
            if shown.len() < 10 {
                shown.push(format!("key {key:?}: the plugin → {got}, {reference} → {want}"));
            }
        }
    }
    if differ > 0 {
        return Err(format!(
            "{differ} of {keys} keys are routed differently from `{reference}`:\n{}",
            shown.join("\n")
        ));
    }
    times.sort();
    let at = |q: f64| times.get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1))).copied();
    Ok(Compared {
        reference: reference.into(),
        integers,
        texts,
        p50: at(0.5).unwrap_or_default(),
        p99: at(0.99).unwrap_or_default(),
    })
}

/// Keys of both kinds a shard key takes: small and large integers, of
/// either sign, and text (splitmix64, fixed seed: every run tries the same).
struct Keys(u64);

impl Keys {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn key(&mut self, i: usize) -> String {
        let r = self.next();
        match i % 4 {
            0 => (i / 4).to_string(),
            1 => (r as i64).to_string(),
            2 => ((r as i32) as i64).to_string(),
            _ => {
                let len = 1 + (r % 20) as usize;
                let mut s = String::from("k");
                for _ in 1..len {
                    s.push(char::from(b"abcdefghijklmnopqrstuvwxyz0123456789-_"[(self.next() % 38) as usize]));
                }
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_both_kinds_and_repeatable() {
        let draw = || {
            let mut k = Keys(1);
            (0..400).map(|i| k.key(i)).collect::<Vec<_>>()
        };
        let keys = draw();
        assert_eq!(keys, draw());
        let texts = keys.iter().filter(|k| k.parse::<i64>().is_err()).count();
        assert_eq!(texts, 100);
        assert!(keys.iter().any(|k| k.starts_with('-')) && keys.iter().any(|k| k.len() > 15));
    }
}
