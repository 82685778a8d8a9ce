//! `shardcar plugin build`: the component from a project, with its
//! language's own tool. Nothing is installed here: a missing tool is named
//! with how to get it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::{Language, Project};

/// Builds `project` into its component; its path.
pub fn build(project: &Project) -> anyhow::Result<PathBuf> {
    let out = project.component();
    match project.language {
        Language::Rust => {
            need("cargo", "install Rust with rustup (https://rustup.rs)")?;
            if found("rustup") {
                let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
                if !installed.lines().any(|t| t.trim() == "wasm32-wasip2") {
                    bail!("the wasm32-wasip2 target is not installed: run `rustup target add wasm32-wasip2`");
                }
            }
            let target = project.dir.join("target");
            run(Command::new("cargo")
                .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
                .arg(&target)
                .current_dir(&project.dir))?;
            let built = target.join("wasm32-wasip2/release").join(format!("{}.wasm", project.name.replace('-', "_")));
            std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
        }
        Language::Python => {
            let tool = std::env::var("COMPONENTIZE_PY").unwrap_or_else(|_| "componentize-py".into());
            need(&tool, "`pip install componentize-py==0.25.1`, or set COMPONENTIZE_PY to where it is")?;
            run(Command::new(&tool)
                .args(["-d", "wit", "-w", "policy", "componentize", "app", "-p", ".", "-o"])
                .arg(&out)
                .current_dir(&project.dir))?;
        }
        Language::Js => {
            need("node", "install Node.js and npm (Debian: `apt-get install nodejs npm`)")?;
            if !project.dir.join("node_modules/@bytecodealliance/componentize-js").is_dir() {
                bail!(
                    "componentize-js is not installed in {}: run `npm ci` there (package-lock.json pins it)",
                    project.dir.display()
                );
            }
            run(Command::new("node").args(["build.mjs", "."]).arg(&out).current_dir(&project.dir))?;
        }
    }
    Ok(out)
}

/// Whether `program` runs.
fn found(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn need(program: &str, how: &str) -> anyhow::Result<()> {
    if !found(program) {
        bail!("`{program}` is not installed: {how}");
    }
    Ok(())
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command.output().with_context(|| format!("running {command:?}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a build step with its output shown; fails naming it.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{} failed ({status})", shown(command));
    }
    Ok(())
}

fn shown(command: &Command) -> String {
    let args: Vec<_> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    let dir = command.get_current_dir().map(Path::display).map(|d| format!(" in {d}")).unwrap_or_default();
    format!("`{} {}`{dir}", command.get_program().to_string_lossy(), args.join(" "))
}
