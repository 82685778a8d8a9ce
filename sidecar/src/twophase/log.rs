//! The coordinator's decision log: one line per transaction decided to
//! commit, forced to disk before any shard is told to commit. A prepared
//! transaction whose id is not in the log was never decided, so recovery
//! rolls it back.
//!
//! Format (text, append-only between compactions):
//! `shardcar-decisions v1 <instance id>` then `commit <gid>` lines.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const HEADER: &str = "shardcar-decisions v1";

pub struct DecisionLog {
    path: PathBuf,
    /// Names this log's transactions: `shardcar_<id>_<n>`.
    pub id: String,
    /// Appends and compactions take turns.
    file: Mutex<File>,
}

impl DecisionLog {
    /// Opens the log at `path`, creating it (with a new instance id) if absent.
    pub fn open(path: &Path) -> io::Result<DecisionLog> {
        if !path.exists() {
            let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
            write_durably(path, &id, &[])?;
        }
        let id = read(path)?.0;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(DecisionLog { path: path.to_path_buf(), id, file: Mutex::new(file) })
    }

    /// Records that `gid` commits; returns once it is on disk.
    pub fn record_commit(&self, gid: &str) -> io::Result<()> {
        let mut file = self.file.lock().map_err(|_| io::Error::other("decision log lock poisoned"))?;
        file.write_all(format!("commit {gid}\n").as_bytes())?;
        file.sync_data()
    }

    /// Every transaction id recorded as committing.
    pub fn committed(&self) -> io::Result<HashSet<String>> {
        let _file = self.file.lock().map_err(|_| io::Error::other("decision log lock poisoned"))?;
        Ok(read(&self.path)?.1.into_iter().collect())
    }

    /// Rewrites the log without `finished` (decisions every shard has carried out).
    pub fn forget(&self, finished: &HashSet<String>) -> io::Result<()> {
        if finished.is_empty() {
            return Ok(());
        }
        let mut file = self.file.lock().map_err(|_| io::Error::other("decision log lock poisoned"))?;
        let (id, gids) = read(&self.path)?;
        let keep: Vec<String> = gids.into_iter().filter(|g| !finished.contains(g)).collect();
        write_durably(&self.path, &id, &keep)?;
        *file = OpenOptions::new().append(true).open(&self.path)?;
        Ok(())
    }
}

/// The instance id and the committed ids of the log at `path`.
fn read(path: &Path) -> io::Result<(String, Vec<String>)> {
    let mut lines = BufReader::new(File::open(path)?).lines();
    let header = lines.next().transpose()?.unwrap_or_default();
    let id = header
        .strip_prefix(HEADER)
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| io::Error::other(format!("{} is not a shardcar decision log", path.display())))?
        .to_string();
    let mut gids = Vec::new();
    for line in lines {
        let line = line?;
        // A torn last line (crash mid-append) was never synced, so never acted on.
        if let Some(gid) = line.strip_prefix("commit ").filter(|g| !g.is_empty()) {
            gids.push(gid.to_string());
        }
    }
    Ok((id, gids))
}

/// Replaces the file at `path` atomically and durably.
fn write_durably(path: &Path, id: &str, gids: &[String]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    let mut text = format!("{HEADER} {id}\n");
    for g in gids {
        text.push_str(&format!("commit {g}\n"));
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_survive_reopening_and_forgetting_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        let log = DecisionLog::open(&path).unwrap();
        log.record_commit("a").unwrap();
        log.record_commit("b").unwrap();
        let id = log.id.clone();
        drop(log);
        let log = DecisionLog::open(&path).unwrap();
        assert_eq!(log.id, id, "the instance id is kept");
        assert_eq!(log.committed().unwrap(), HashSet::from(["a".to_string(), "b".to_string()]));
        log.forget(&HashSet::from(["a".to_string()])).unwrap();
        log.record_commit("c").unwrap();
        assert_eq!(log.committed().unwrap(), HashSet::from(["b".to_string(), "c".to_string()]));
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.txt");
        fs::write(&path, "hello\n").unwrap();
        assert!(DecisionLog::open(&path).is_err());
    }
}
