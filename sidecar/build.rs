//! Builds the built-in routing plugins (`plugins/`, a workspace of its own)
//! for wasm32-wasip2 and embeds them, so the binary carries its strategies.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Built-in plugin names; each is a crate under `plugins/`.
const BUILTINS: [&str; 6] = ["hash", "consistent-hash", "range", "directory", "geo", "tenant"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let plugins = manifest.join("../plugins");
    for path in ["Cargo.toml", "Cargo.lock", "wit", "sdk/src", "sdk/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", plugins.join(path).display());
    }
    for name in BUILTINS {
        println!("cargo:rerun-if-changed={}", plugins.join(name).display());
    }
    let target =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest.join("../target"), PathBuf::from).join("plugins");
    build(&plugins, &target);

    let release = target.join("wasm32-wasip2/release");
    let mut code =
        String::from("/// Built-in plugins: name and component bytes.\npub const BUILTINS: &[(&str, &[u8])] = &[\n");
    for name in BUILTINS {
        let file = release.join(format!("{}.wasm", name.replace('-', "_")));
        code.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", file.display().to_string()));
    }
    code.push_str("];\n");
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("builtin_plugins.rs");
    std::fs::write(out, code).expect("write builtin_plugins.rs");
}

fn build(plugins: &Path, target: &Path) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target);
    for name in BUILTINS {
        cmd.args(["-p", name]);
    }
    // The outer build's flags and wrappers (clippy, host RUSTFLAGS) are not for wasm.
    for var in
        ["RUSTC_WORKSPACE_WRAPPER", "RUSTC_WRAPPER", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS"]
    {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the plugins");
    if !status.success() {
        panic!(
            "building the built-in plugins failed (is the wasm32-wasip2 target installed? \
             deploy/setup.sh runs `rustup target add wasm32-wasip2`)"
        );
    }
}
