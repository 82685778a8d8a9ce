//! The last version of each file-based plugin that loaded and passed its
//! test cases, as a copy shardcar owns (the component and its tests) under
//! `plugins.cache_dir/last-good`. A file on disk that is refused — at a
//! reload or at a start — leaves that version serving, so a bad rollout
//! cannot become a crash loop at the pod's next restart.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A plugin version: its component, its test cases (TOML) if any, and
/// where it came from (for messages).
pub struct Version {
    pub wasm: Vec<u8>,
    pub tests: Option<String>,
    pub origin: String,
}

impl Version {
    /// The file `path` and the test cases beside it (`x.wasm` → `x.tests.toml`).
    pub fn on_disk(path: &Path) -> Result<Version, String> {
        let wasm = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let manifest = manifest_path(path);
        let tests = match std::fs::read_to_string(&manifest) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {}: {e}", manifest.display())),
        };
        Ok(Version { wasm, tests, origin: manifest.display().to_string() })
    }
}

/// What identifies a version on disk: the component's and its tests'
/// modification time and size.
pub type Stamp = [(SystemTime, u64); 2];

pub fn stamp(path: &Path) -> Option<Stamp> {
    let of = |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
    Some([of(path)?, of(&manifest_path(path)).unwrap_or((SystemTime::UNIX_EPOCH, 0))])
}

/// `x.wasm` → `x.tests.toml`.
pub fn manifest_path(wasm: &Path) -> PathBuf {
    wasm.with_extension("tests.toml")
}

pub struct LastGood {
    dir: Option<PathBuf>,
}

impl LastGood {
    /// Copies live under `cache_dir/last-good`; without a cache dir there are none.
    pub fn new(cache_dir: Option<&Path>) -> LastGood {
        LastGood { dir: cache_dir.map(|d| d.join("last-good")) }
    }

    fn paths(&self, policy: &str) -> Option<(PathBuf, PathBuf)> {
        let name: String =
            policy.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let dir = self.dir.as_ref()?;
        Some((dir.join(format!("{name}.wasm")), dir.join(format!("{name}.tests.toml"))))
    }

    /// Keeps `version` as `policy`'s last good one (each file replaced in one step).
    pub fn save(&self, policy: &str, version: &Version) {
        let Some((wasm, tests)) = self.paths(policy) else { return };
        let written = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(wasm.parent().expect("a directory"))?;
            replace(&wasm, &version.wasm)?;
            match &version.tests {
                Some(t) => replace(&tests, t.as_bytes()),
                None => std::fs::remove_file(&tests).or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                }),
            }
        })();
        if let Err(e) = written {
            tracing::warn!("policy {policy}: cannot keep a copy of the version serving in {}: {e}", wasm.display());
        }
    }

    /// Remembers that the version with `digest` was rolled back, and why:
    /// a restart must not serve it, nor a reload try it again.
    pub fn mark_rolled_back(&self, policy: &str, digest: &str, why: &str) {
        let Some((wasm, _)) = self.paths(policy) else { return };
        let marker = wasm.with_extension("rolled-back");
        if let Err(e) = std::fs::create_dir_all(wasm.parent().expect("a directory"))
            .and_then(|()| replace(&marker, format!("{digest}\n{why}").as_bytes()))
        {
            tracing::warn!("policy {policy}: cannot record the rollback in {}: {e}", marker.display());
        }
    }

    /// The digest of `policy`'s version that was rolled back, and why.
    pub fn rolled_back(&self, policy: &str) -> Option<(String, String)> {
        let (wasm, _) = self.paths(policy)?;
        let text = std::fs::read_to_string(wasm.with_extension("rolled-back")).ok()?;
        let (digest, why) = text.split_once('\n')?;
        Some((digest.to_string(), why.to_string()))
    }

    /// `policy`'s last good version, if one was kept.
    pub fn load(&self, policy: &str) -> Option<Version> {
        let (wasm, tests) = self.paths(policy)?;
        let bytes = std::fs::read(&wasm).ok()?;
        Some(Version { wasm: bytes, tests: std::fs::read_to_string(&tests).ok(), origin: tests.display().to_string() })
    }
}

fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_version_comes_back_with_its_tests() {
        let dir = tempfile::tempdir().unwrap();
        let keep = LastGood::new(Some(dir.path()));
        assert!(keep.load("by-customer").is_none());
        let v = Version { wasm: b"v1".to_vec(), tests: Some("[[case]]".into()), origin: String::new() };
        keep.save("by-customer", &v);
        let back = keep.load("by-customer").unwrap();
        assert_eq!((back.wasm, back.tests), (b"v1".to_vec(), Some("[[case]]".to_string())));
        keep.save("by-customer", &Version { wasm: b"v2".to_vec(), tests: None, origin: String::new() });
        assert_eq!(keep.load("by-customer").unwrap().tests, None, "its tests go with it");
        assert!(LastGood::new(None).load("by-customer").is_none());
    }
}
