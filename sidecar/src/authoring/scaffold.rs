//! `shardcar plugin new`: a ready project whose policy is the language's
//! tested example of the built-in `hash` (so `test --same-as hash` passes
//! before the first edit), with its SDK and the contract copied in: a
//! project builds on its own, outside this repository.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Language, MANIFEST, check_name};

const WIT: &str = include_str!("../../../plugins/sdk/wit/policy.wit");
const CASES: &str = include_str!("../../../plugins/python/hash/hash.tests.toml");

const RUST_POLICY: &str = include_str!("../../../plugins/hash/src/lib.rs");
const RUST_SDK: &str = include_str!("../../../plugins/sdk/src/lib.rs");
const RUST_SDK_PGHASH: &str = include_str!("../../../plugins/sdk/src/pghash.rs");
/// The versions the repository's plugins are built and tested with.
const RUST_LOCK: &str = include_str!("../../../plugins/Cargo.lock");

const PYTHON_POLICY: &str = include_str!("../../../plugins/python/hash/app.py");
const PYTHON_SDK: &str = include_str!("../../../plugins/python/shardcar_policy.py");

const JS_POLICY: &str = include_str!("../../../plugins/js/hash/app.js");
const JS_SDK: &str = include_str!("../../../plugins/js/shardcar_policy.js");
const JS_BUILD: &str = include_str!("../../../plugins/js/build.mjs");
const JS_PACKAGE: &str = include_str!("../../../plugins/js/package.json");
const JS_LOCK: &str = include_str!("../../../plugins/js/package-lock.json");

/// Writes project `name` in a new directory under `parent`; its path.
pub fn create(parent: &Path, name: &str, language: Language) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = parent.join(name);
    anyhow::ensure!(!dir.exists(), "{} exists already", dir.display());
    let mut files: Vec<(String, String)> = vec![
        (MANIFEST.into(), manifest(name, language)),
        (format!("{name}.tests.toml"), cases()),
        ("README.md".into(), readme(name, language)),
        (".gitignore".into(), "target/\nnode_modules/\n*.wasm\n".into()),
    ];
    match language {
        Language::Rust => files.extend([
            ("Cargo.toml".into(), rust_manifest(name)),
            ("Cargo.lock".into(), RUST_LOCK.into()),
            (
                "src/lib.rs".into(),
                RUST_POLICY.replacen("//! `hash`:", &format!("//! `{name}` (as the built-in `hash`):"), 1),
            ),
            ("sdk/Cargo.toml".into(), RUST_SDK_MANIFEST.into()),
            ("sdk/src/lib.rs".into(), RUST_SDK.into()),
            ("sdk/src/pghash.rs".into(), RUST_SDK_PGHASH.into()),
            ("sdk/wit/policy.wit".into(), WIT.into()),
        ]),
        Language::Python => files.extend([
            ("app.py".into(), PYTHON_POLICY.replace("hash-py", name)),
            ("shardcar_policy.py".into(), PYTHON_SDK.into()),
            ("wit/policy.wit".into(), WIT.into()),
        ]),
        Language::Js => files.extend([
            ("app.js".into(), JS_POLICY.replace("hash-js", name)),
            ("shardcar_policy.js".into(), JS_SDK.into()),
            ("build.mjs".into(), JS_BUILD.into()),
            ("package.json".into(), JS_PACKAGE.replace("shardcar-js-plugins", name)),
            ("package-lock.json".into(), JS_LOCK.replace("shardcar-js-plugins", name)),
            ("wit/policy.wit".into(), WIT.into()),
        ]),
    }
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap_or(&dir)).with_context(|| format!("{}", dir.display()))?;
        std::fs::write(&path, text).with_context(|| format!("{}", path.display()))?;
    }
    Ok(dir)
}

fn manifest(name: &str, language: Language) -> String {
    let language = format!("{language:?}").to_lowercase();
    format!(
        "# A shardcar routing policy: `shardcar plugin build` and `shardcar plugin test` read this.\n\
         name = \"{name}\"\n\
         language = \"{language}\"\n\
         # The shards `shardcar plugin test` gives the plugin, in topology order,\n\
         # and its config (what a `[[policies]]` entry's `config` would be).\n\
         shards = [\"s0\", \"s1\"]\n\
         config = {{ shards = [\"s0\", \"s1\"] }}\n"
    )
}

/// The examples' cases, introduced for this project.
fn cases() -> String {
    let body: String = CASES.lines().skip_while(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect();
    format!(
        "# Where statements must go: they gate every version of the plugin (at\n\
         # start, on reload, in `shardcar plugin test`). `{{table}}` and `{{key}}`\n\
         # stand for each table the policy routes. These are where Postgres's\n\
         # hash partitioning (MODULUS 2) puts the keys, as the policy starts.\n{body}"
    )
}

fn rust_manifest(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
shardcar-sdk = {{ path = "sdk" }}
serde = {{ version = "1", features = ["derive"] }}

# A workspace of its own, wherever the project sits.
[workspace]

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true
"#
    )
}

const RUST_SDK_MANIFEST: &str = r#"# shardcar's Rust SDK, as the shardcar that wrote this project carries it.
[package]
name = "shardcar-sdk"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
serde = { version = "1", features = ["derive"] }
serde_json = "1"
wit-bindgen = "0.63"
"#;

fn readme(name: &str, language: Language) -> String {
    let (edit, tool) = match language {
        Language::Rust => ("src/lib.rs", "cargo and the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`)"),
        Language::Python => ("app.py", "componentize-py (`pip install componentize-py==0.25.1`)"),
        Language::Js => ("app.js", "Node.js and componentize-js (`npm ci` here installs the pinned version)"),
    };
    format!(
        "# {name}\n\n\
         A shardcar routing policy. It starts as the built-in `hash`: edit\n\
         `{edit}`, and `{name}.tests.toml` to say where statements must go.\n\n\
         ```sh\n\
         shardcar plugin build                 # → {name}.wasm; needs {tool}\n\
         shardcar plugin test                  # its cases, offline\n\
         shardcar plugin test --same-as hash   # and 100,000 keys routed as the built-in `hash` routes them\n\
         ```\n\n\
         Load it with `plugin = \"path/to/{name}.wasm\"` in a `[[policies]]` entry;\n\
         `{name}.tests.toml` beside it gates every version. The guide is\n\
         plugins/README.md in the shardcar repository.\n"
    )
}
