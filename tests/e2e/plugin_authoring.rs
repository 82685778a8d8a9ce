//! `shardcar plugin new` → `build` → `test` in each language, from nothing
//! but the binary and the language's own tool: the scaffold builds, passes
//! its cases and routes 100,000 keys as the built-in `hash`; a missing tool
//! is named with how to get it, and a policy that routes differently fails
//! its test with the keys that differ.

use std::path::Path;
use std::process::Command;

/// Runs `shardcar plugin <args>` in `dir`; whether it succeeded, and what it said.
fn plugin(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shardcar"))
        .arg("plugin")
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        // The plugin's own build, not this test's flags.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run shardcar");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

fn componentize_py() -> String {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-tools/py/bin/componentize-py");
    assert!(venv.is_file(), "plugins/python/install.sh installs componentize-py (tests/run.sh runs it)");
    venv.display().to_string()
}

#[test]
fn a_rust_policy_from_new_to_tested() {
    from_nothing("rust", &[("PATH", "/nonexistent")], "install Rust with rustup");
}

#[test]
fn a_python_policy_from_new_to_tested() {
    from_nothing("python", &[("COMPONENTIZE_PY", "/nonexistent/componentize-py")], "pip install componentize-py");
}

#[test]
fn a_javascript_policy_from_new_to_tested() {
    // Before `npm ci` in the project, componentize-js is missing.
    from_nothing("js", &[], "run `npm ci` there");
}

fn from_nothing(language: &str, without_tool: &[(&str, &str)], how_to_get_it: &str) {
    let parent = tempfile::tempdir().unwrap();
    let name = format!("orders-{language}");
    let (ok, said) = plugin(parent.path(), &["new", "--lang", language, &name], &[]);
    assert!(ok, "{said}");
    let project = parent.path().join(&name);
    assert!(project.join(format!("{name}.tests.toml")).is_file() && project.join("README.md").is_file());

    let (ok, said) = plugin(&project, &["build"], without_tool);
    assert!(!ok && said.contains(how_to_get_it), "a missing tool is named: {said}");

    let tool = match language {
        "js" => {
            let npm = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
                .current_dir(&project)
                .output()
                .unwrap();
            assert!(npm.status.success(), "{}", String::from_utf8_lossy(&npm.stderr));
            vec![]
        }
        "python" => vec![("COMPONENTIZE_PY".to_string(), componentize_py())],
        _ => vec![],
    };
    let tool: Vec<(&str, &str)> = tool.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (ok, said) = plugin(&project, &["build"], &tool);
    assert!(ok && project.join(format!("{name}.wasm")).is_file(), "{said}");

    let (ok, said) = plugin(&project, &["test", "--same-as", "hash", "--keys", "100000"], &[]);
    assert!(ok, "{said}");
    assert!(said.contains(&format!("{name}: 5 test case(s) passed")), "{said}");
    assert!(said.contains("routes 100000 keys (75000 integers, 25000 texts) as `hash` does"), "{said}");

    // Break it: the other shard for every key. Its cases say where each
    // went, and --same-as how many keys differ, with the first of them.
    let (source, from, to) = match language {
        "rust" => (
            "src/lib.rs",
            "shards.index(&self.shards[pghash::partition(k, self.shards.len())])",
            "shards.index(&self.shards[self.shards.len() - 1 - pghash::partition(k, self.shards.len())])",
        ),
        "python" => ("app.py", "SHARDS[sdk.partition(k, len(SHARDS))]", "SHARDS[-1 - sdk.partition(k, len(SHARDS))]"),
        _ => (
            "app.js",
            "shards[sdk.partition(k, shards.length)]",
            "shards[shards.length - 1 - sdk.partition(k, shards.length)]",
        ),
    };
    let path = project.join(source);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{source} routes a key with `{from}`");
    std::fs::write(&path, text.replace(from, to)).unwrap();
    let (ok, said) = plugin(&project, &["build"], &tool);
    assert!(ok, "{said}");
    let (ok, said) = plugin(&project, &["test", "--same-as", "hash", "--keys", "1000"], &[]);
    assert!(!ok && said.contains("cases failed") && said.contains("went to [\"s1\"], expected s0"), "{said}");
    assert!(said.contains("1000 of 1000 keys are routed differently from `hash`"), "{said}");
    assert!(said.contains("key \"0\": the plugin → [\"s"), "{said}");
}
