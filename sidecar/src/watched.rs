//! Values read from files that may change while shardcar runs (a renewed
//! certificate, a rotated password in a mounted Secret): looked at on each
//! use, read again when a file's modification time or size changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

type Read<T> = Box<dyn Fn(&[PathBuf]) -> Result<T, String> + Send + Sync>;

pub struct Watched<T> {
    paths: Vec<PathBuf>,
    read: Read<T>,
    current: ArcSwap<Current<T>>,
}

struct Current<T> {
    value: Arc<T>,
    stamp: Stamp,
}

/// What the files looked like when they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64)>>);

impl Stamp {
    fn of(paths: &[PathBuf]) -> Stamp {
        let one = |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        Stamp(paths.iter().map(|p| one(p)).collect())
    }
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Reads the files now: an error here is a config error.
    pub fn new(
        paths: Vec<PathBuf>,
        read: impl Fn(&[PathBuf]) -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Watched<T>, String> {
        let stamp = Stamp::of(&paths);
        let value = Arc::new(read(&paths)?);
        Ok(Watched { paths, read: Box::new(read), current: ArcSwap::from_pointee(Current { value, stamp }) })
    }

    /// A value from no file: never read again.
    pub fn fixed(value: T) -> Watched<T> {
        let current = Current { value: Arc::new(value), stamp: Stamp(Vec::new()) };
        Watched { paths: Vec::new(), read: Box::new(|_| Err("fixed".into())), current: ArcSwap::from_pointee(current) }
    }

    /// The value, read again first if a file changed. A file that no longer
    /// reads (half-written, or a certificate renewed before its key) keeps
    /// the previous value until the next change, with an error logged.
    pub fn get(&self) -> Arc<T> {
        let current = self.current.load();
        if self.paths.is_empty() {
            return current.value.clone();
        }
        let stamp = Stamp::of(&self.paths);
        if current.stamp == stamp {
            return current.value.clone();
        }
        let value = match (self.read)(&self.paths) {
            Ok(new) => {
                tracing::info!("read {} again", self.paths[0].display());
                Arc::new(new)
            }
            Err(e) => {
                tracing::error!("keeping what was read before: {e}");
                current.value.clone()
            }
        };
        self.current.store(Arc::new(Current { value: value.clone(), stamp }));
        value
    }
}

/// A secret's file, without the line end editors and `kubectl create
/// secret --from-file` leave.
pub fn read_secret(path: &Path, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if text.is_empty() {
        return Err(format!("{what} {}: the file is empty", path.display()));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_read_again_and_a_bad_one_keeps_the_last_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "first\n").unwrap();
        let w = Watched::new(vec![path.clone()], |p| read_secret(&p[0], "password_file")).unwrap();
        assert_eq!(*w.get(), "first");
        std::fs::write(&path, "second-longer\r\n").unwrap();
        assert_eq!(*w.get(), "second-longer");
        std::fs::write(&path, "").unwrap();
        assert_eq!(*w.get(), "second-longer");
        assert!(Watched::new(vec![dir.path().join("none")], |p| read_secret(&p[0], "x")).is_err());
    }
}
