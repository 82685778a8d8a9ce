//! `deploy/`: the Kubernetes manifests parse and carry what a per-pod
//! sidecar needs, the shipped config is valid for this binary, and the
//! Dockerfile builds a non-root image. No cluster needed.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn documents(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
}

fn str_of<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str().unwrap_or_else(|| panic!("{what} is missing or not a string"))
}

fn list<'a>(y: &'a Yaml, what: &str) -> &'a [Yaml] {
    y.as_vec().unwrap_or_else(|| panic!("{what} is missing or not a list"))
}

fn named<'a>(items: &'a [Yaml], name: &str) -> &'a Yaml {
    items.iter().find(|i| i["name"].as_str() == Some(name)).unwrap_or_else(|| panic!("no item named {name}"))
}

#[test]
fn kustomization_names_parseable_resources_with_their_required_fields() {
    let dir = deploy().join("kubernetes");
    let kustomization = &documents(&dir.join("kustomization.yaml"))[0];
    assert_eq!(str_of(&kustomization["kind"], "kind"), "Kustomization");
    let resources = list(&kustomization["resources"], "resources");
    assert!(!resources.is_empty());
    let mut kinds = Vec::new();
    for resource in resources {
        let file = dir.join(str_of(resource, "a resource path"));
        for doc in documents(&file) {
            let at = file.display();
            str_of(&doc["apiVersion"], &format!("{at}: apiVersion"));
            str_of(&doc["metadata"]["name"], &format!("{at}: metadata.name"));
            kinds.push(str_of(&doc["kind"], &format!("{at}: kind")).to_string());
        }
    }
    assert!(kinds.contains(&"Deployment".to_string()), "{kinds:?}");
    // No Service: the admin port is not exposed outside the pod.
    assert!(!kinds.contains(&"Service".to_string()), "{kinds:?}");
    for generator in list(&kustomization["configMapGenerator"], "configMapGenerator") {
        for file in list(&generator["files"], "files") {
            assert!(dir.join(str_of(file, "a generator file")).exists(), "{file:?}");
        }
    }
}

#[test]
fn shardcar_runs_as_a_native_sidecar_with_probes_resources_and_scrape_annotations() {
    let dir = deploy().join("kubernetes");
    let deployment = documents(&dir.join("deployment.yaml")).remove(0);
    assert_eq!(str_of(&deployment["kind"], "kind"), "Deployment");
    let template = &deployment["spec"]["template"];
    let pod = &template["spec"];

    let annotations = &template["metadata"]["annotations"];
    assert_eq!(str_of(&annotations["prometheus.io/scrape"], "scrape annotation"), "true");
    assert_eq!(str_of(&annotations["prometheus.io/path"], "scrape path"), "/metrics");
    assert_eq!(str_of(&annotations["prometheus.io/port"], "scrape port"), "9930");

    // A native sidecar: an init container that keeps running.
    let sidecar = named(list(&pod["initContainers"], "initContainers"), "shardcar");
    assert_eq!(str_of(&sidecar["restartPolicy"], "restartPolicy"), "Always");
    let admin = named(list(&sidecar["ports"], "ports"), "admin");
    assert_eq!(admin["containerPort"].as_i64(), Some(9930));
    assert!(admin["hostPort"].is_badvalue(), "the admin port stays inside the pod");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")] {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(str_of(&get["path"], probe), path);
        assert_eq!(str_of(&get["port"], probe), "admin");
    }
    for resource in ["cpu", "memory"] {
        str_of(&sidecar["resources"]["requests"][resource], &format!("requests.{resource}"));
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sidecar["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));

    // Config and plugins come from ConfigMaps; the config file it runs is the shipped one.
    let args: Vec<&str> = list(&sidecar["args"], "args").iter().map(|a| str_of(a, "an arg")).collect();
    assert_eq!(args, ["run", "--config", "/etc/shardcar/shardcar.toml"]);
    let volumes = list(&pod["volumes"], "volumes");
    assert_eq!(str_of(&named(volumes, "shardcar-config")["configMap"]["name"], "config volume"), "shardcar-config");
    assert_eq!(str_of(&named(volumes, "shardcar-plugins")["configMap"]["name"], "plugin volume"), "shardcar-plugins");
    for mount in list(&sidecar["volumeMounts"], "volumeMounts") {
        assert!(mount["subPath"].is_badvalue(), "subPath mounts never see ConfigMap updates: {mount:?}");
    }
    // Certificates come from a Secret, mounted read-only where the config looks.
    assert_eq!(str_of(&named(volumes, "shardcar-tls")["secret"]["secretName"], "TLS volume"), "shardcar-tls");
    let tls = named(list(&sidecar["volumeMounts"], "volumeMounts"), "shardcar-tls");
    assert_eq!((str_of(&tls["mountPath"], "TLS mount"), tls["readOnly"].as_bool()), ("/etc/shardcar-tls", Some(true)));

    // The app reaches shardcar over the pod's loopback.
    let app = named(list(&pod["containers"], "containers"), "app");
    let url = str_of(&named(list(&app["env"], "app env"), "DATABASE_URL")["value"], "DATABASE_URL");
    assert!(url.contains("@127.0.0.1:6432/"), "{url}");
}

#[test]
fn the_shipped_config_is_valid_with_its_secrets_from_the_environment() {
    let text = std::fs::read_to_string(deploy().join("kubernetes/shardcar.toml")).unwrap();
    // The shards are verified against the CA the Secret mounts; here, one made now.
    assert!(text.contains("sslmode=verify-full&sslrootcert=/etc/shardcar-tls/ca.crt"));
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::pki::write(dir.path(), "ca.crt", &crate::pki::Ca::new("shards CA").pem());
    let path = crate::pki::write(
        dir.path(),
        "shardcar.toml",
        &text.replace("/etc/shardcar-tls/ca.crt", &ca.display().to_string()),
    );
    let check = |env: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_shardcar"))
            .args(["check", "--config"])
            .arg(&path)
            .env_remove("APP_DB_PASSWORD")
            .env_remove("SHARD_PASSWORD")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let ok = check(&[("APP_DB_PASSWORD", "app-secret"), ("SHARD_PASSWORD", "shard-secret")]);
    assert!(ok.status.success(), "{}{}", String::from_utf8_lossy(&ok.stdout), String::from_utf8_lossy(&ok.stderr));
    // Without the Secret, it says which variable is missing, where.
    let missing = check(&[("APP_DB_PASSWORD", "app-secret")]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("shards[0].primary: environment variable SHARD_PASSWORD is not set"), "{err}");
    // The admin listener must be reachable by the kubelet; clients only over loopback.
    assert!(text.contains("addr = \"127.0.0.1:6432\""));
    assert!(text.contains("admin = \"0.0.0.0:9930\""));
}

#[test]
fn the_image_is_multi_stage_and_runs_as_non_root() {
    let text = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(stages.len() >= 2, "{stages:?}");
    let last_stage = &text[text.rfind("\nFROM ").unwrap()..];
    let user = last_stage.lines().find_map(|l| l.strip_prefix("USER ")).expect("the runtime stage sets USER");
    assert!(!user.starts_with("0") && !user.starts_with("root"), "{user}");
    assert!(text.contains("rustup target add wasm32-wasip2 wasm32-unknown-unknown"));
    assert!(text.contains("cargo build --release --locked -p shardcar"));
    assert!(last_stage.contains("COPY --from=build"));
}

/// Metric names in PromQL: `shardcar_...` (histogram series with their suffix).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("shardcar_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[tokio::test]
async fn alert_rules_and_the_grafana_dashboard_name_metrics_shardcar_exports() {
    let fleet = crate::harness::Fleet::shared();
    let t = fleet.hashed_table("rules").await;
    let sc = crate::harness::Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sc.connect().await;
    c.batch_execute(&format!("SELECT * FROM {t} WHERE customer_id = 1")).await.unwrap();
    // An error a client gets, so that its series exists.
    c.batch_execute("/* shardcar: shard=nowhere */ SELECT 1").await.unwrap_err();
    let (status, metrics) = sc.admin_get("/metrics");
    assert_eq!(status, 200);
    let exported: std::collections::BTreeSet<&str> =
        metrics.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();

    // Prometheus's own checker reads the rules (Debian's `prometheus` ships promtool).
    let checked = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy().join("prometheus/shardcar-rules.yaml"))
        .output()
        .expect("promtool (Debian package prometheus; deploy/setup.sh installs it)");
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stdout));
    // The scrape config keeps shardcar's admin port under the job the fleet
    // view selects, and loads the rules beside it. (Debian's promtool is built
    // without Kubernetes discovery, so it cannot check this file itself.)
    let scrape = &documents(&deploy().join("prometheus/prometheus.yaml"))[0];
    assert_eq!(str_of(&scrape["rule_files"][0], "rule_files"), "shardcar-rules.yaml");
    let job = &list(&scrape["scrape_configs"], "scrape_configs")[0];
    assert_eq!(str_of(&job["job_name"], "job_name"), "shardcar");
    let keep = &list(&job["relabel_configs"], "relabel_configs")[0];
    assert_eq!(str_of(&keep["regex"], "regex"), "shardcar;admin");

    let rules = &documents(&deploy().join("prometheus/shardcar-rules.yaml"))[0];
    let mut alerts = 0;
    for group in list(&rules["groups"], "groups") {
        for rule in list(&group["rules"], "rules") {
            let name = str_of(&rule["alert"], "alert");
            let expr = str_of(&rule["expr"], "expr");
            assert!(!str_of(&rule["annotations"]["summary"], "summary").is_empty(), "{name}");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{name}: {expr}");
            for metric in names {
                assert!(exported.contains(metric.as_str()), "{name}: {metric} is not in /metrics");
            }
            alerts += 1;
        }
    }
    assert!(alerts >= 8, "{alerts} alert rules");

    let text = std::fs::read_to_string(deploy().join("grafana/shardcar-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "panel ids are unique");
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for metric in metric_names(expr) {
                assert!(exported.contains(metric.as_str()), "{}: {metric} is not in /metrics", panel["title"]);
            }
        }
    }
    assert!(panels.len() >= 10, "{} panels", panels.len());
}
