//! Builds what the binary embeds from its sibling workspaces:
//! - the built-in routing plugins (`plugins/`) for wasm32-wasip2;
//! - the dashboard (`dashboard/`) for wasm32-unknown-unknown, turned into an
//!   ES module by wasm-bindgen, served by the admin listener at `/`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Built-in plugin names; each is a crate under `plugins/`.
const BUILTINS: [&str; 6] = ["hash", "consistent-hash", "range", "directory", "geo", "tenant"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let target = env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest.join("../target"), PathBuf::from);
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    plugins(&manifest.join("../plugins"), &target.join("plugins"), &out);
    dashboard(&manifest.join("../dashboard"), &manifest.join("api"), &target.join("dashboard"), &out);
}

fn plugins(plugins: &Path, target: &Path, out: &Path) {
    for path in ["Cargo.toml", "Cargo.lock", "sdk/wit", "sdk/src", "sdk/Cargo.toml"] {
        rerun_if_changed(&plugins.join(path));
    }
    for name in BUILTINS {
        rerun_if_changed(&plugins.join(name));
    }
    cargo_build(&plugins.join("Cargo.toml"), target, "wasm32-wasip2", &BUILTINS);

    let release = target.join("wasm32-wasip2/release");
    let mut code =
        String::from("/// Built-in plugins: name and component bytes.\npub const BUILTINS: &[(&str, &[u8])] = &[\n");
    for name in BUILTINS {
        let file = release.join(format!("{}.wasm", name.replace('-', "_")));
        code.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", file.display().to_string()));
    }
    code.push_str("];\n");
    std::fs::write(out.join("builtin_plugins.rs"), code).expect("write builtin_plugins.rs");
}

fn dashboard(dashboard: &Path, api: &Path, target: &Path, out: &Path) {
    for path in ["Cargo.toml", "Cargo.lock", "src", "static"] {
        rerun_if_changed(&dashboard.join(path));
    }
    rerun_if_changed(&api.join("src"));
    cargo_build(&dashboard.join("Cargo.toml"), target, "wasm32-unknown-unknown", &["shardcar-dashboard"]);

    let wasm = target.join("wasm32-unknown-unknown/release/shardcar-dashboard.wasm");
    let assets = out.join("dashboard");
    let mut bindgen = wasm_bindgen_cli_support::Bindgen::new();
    bindgen.input_path(&wasm).out_name("dashboard").typescript(false);
    bindgen.web(true).expect("wasm-bindgen web target");
    bindgen.generate(&assets).unwrap_or_else(|e| panic!("wasm-bindgen on {}: {e:#}", wasm.display()));

    // Path served, file, content type.
    let files = [
        ("/", dashboard.join("static/index.html"), "text/html; charset=utf-8"),
        ("/assets/style.css", dashboard.join("static/style.css"), "text/css; charset=utf-8"),
        ("/assets/boot.js", dashboard.join("static/boot.js"), "text/javascript; charset=utf-8"),
        ("/assets/dashboard.js", assets.join("dashboard.js"), "text/javascript; charset=utf-8"),
        ("/assets/dashboard_bg.wasm", assets.join("dashboard_bg.wasm"), "application/wasm"),
    ];
    let mut code = String::from(
        "/// The dashboard's files: path served, content type, bytes.\n\
         pub const DASHBOARD: &[(&str, &str, &[u8])] = &[\n",
    );
    for (path, file, kind) in files {
        assert!(file.exists(), "dashboard asset {} is missing", file.display());
        code.push_str(&format!("    ({path:?}, {kind:?}, include_bytes!({:?})),\n", file.display().to_string()));
    }
    code.push_str("];\n");
    std::fs::write(out.join("dashboard_assets.rs"), code).expect("write dashboard_assets.rs");
}

fn rerun_if_changed(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
}

/// `cargo build --release` of another workspace for a wasm target, in a
/// target dir of its own (the outer build holds the lock on ours). With
/// `SHARDCAR_WASM_PREBUILT` set, what a stable build left there is used as
/// it is: the fuzz targets build on nightly, which has no wasm targets.
fn cargo_build(manifest: &Path, target_dir: &Path, triple: &str, packages: &[&str]) {
    println!("cargo:rerun-if-env-changed=SHARDCAR_WASM_PREBUILT");
    if env::var_os("SHARDCAR_WASM_PREBUILT").is_some() {
        assert!(
            target_dir.join(triple).join("release").exists(),
            "SHARDCAR_WASM_PREBUILT is set but {} has no {triple} build: run `cargo build` first",
            target_dir.display()
        );
        return;
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--locked", "--target", triple, "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    for name in packages {
        cmd.args(["-p", name]);
    }
    // The outer build's flags and wrappers (clippy, host RUSTFLAGS) are not for wasm.
    for var in
        ["RUSTC_WORKSPACE_WRAPPER", "RUSTC_WRAPPER", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS"]
    {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("run cargo for {}: {e}", manifest.display()));
    if !status.success() {
        panic!(
            "building {} for {triple} failed (is the target installed? \
             deploy/setup.sh runs `rustup target add {triple}`)",
            manifest.display()
        );
    }
}
