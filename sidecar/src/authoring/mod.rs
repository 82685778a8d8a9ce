//! `shardcar plugin new|build|test`: a routing policy as a project of its
//! own, in Rust, Python or JavaScript — scaffolded as the tested examples,
//! built with its language's tool, and tested offline (no sidecar, no
//! Postgres) by its own cases and, when asked, key by key against a
//! built-in.

pub mod scaffold;
pub mod toolchain;
pub mod trial;

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// What `new` writes and `build` and `test` read, in the project's root.
pub const MANIFEST: &str = "shardcar-plugin.toml";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Rust,
    Python,
    #[value(alias = "javascript")]
    Js,
}

/// A policy project: its manifest, and where it is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    pub name: String,
    pub language: Language,
    /// The shards `test` gives the plugin, in topology order.
    pub shards: Vec<String>,
    /// The policy's config, as a `[[policies]]` entry would give it.
    #[serde(default)]
    pub config: toml::Table,
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Project {
    pub fn open(dir: &Path) -> anyhow::Result<Project> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{} is not a plugin project (`shardcar plugin new` writes one)", dir.display()))?;
        let mut project: Project = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        check_name(&project.name).with_context(|| format!("{}", path.display()))?;
        anyhow::ensure!(!project.shards.is_empty(), "{}: `shards` names no shard", path.display());
        // Absolute: build tools run in it and are given paths in it.
        project.dir = std::path::absolute(dir)?;
        Ok(project)
    }

    /// The component `build` writes, beside its test cases.
    pub fn component(&self) -> PathBuf {
        self.dir.join(format!("{}.wasm", self.name))
    }
}

/// A name that is a file name, a crate name (with `_` for `-`) and a plugin
/// name alike.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    anyhow::ensure!(ok, "plugin name {name:?}: use lowercase letters, digits and `-`, starting with a letter");
    Ok(())
}
