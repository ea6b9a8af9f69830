//! The current model of a running service, replaced without a restart when its file changes.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwapOption;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Error, Model, Result};

/// How often [`SharedModel::watch`] looks at the file.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The model loaded from a path, shared by every request; cheap to clone (one `Arc`).
///
/// Readers take the current model with [`current`](Self::current) (a lock-free load) and keep
/// using that one for the whole request, even if a new one is swapped in meanwhile.
/// [`reload_if_changed`](Self::reload_if_changed) swaps in the file's model when the file's
/// modification time, size or inode changed; a file that does not load is reported and the
/// model in use is kept. Writers should replace the file atomically ([`Model::save`] does),
/// but a file caught half-written is only reported, and loaded once it is complete.
#[derive(Clone)]
pub struct SharedModel {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    current: ArcSwapOption<Model>,
    /// The file as last looked at, loaded or not: `None` before the first look, `Some(None)`
    /// when it did not exist.
    seen: Mutex<Option<Option<Stamp>>>,
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> io::Result<Self> {
        let metadata = fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(Self { modified: metadata.modified().ok(), len: metadata.len(), inode })
    }
}

impl SharedModel {
    /// Loads the model at `path`; fails if it is missing or does not load.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self> {
        let shared = Self::empty(path.into());
        shared.reload_if_changed()?;
        match shared.current() {
            Some(_) => Ok(shared),
            None => Err(Error::ModelMissing { path: shared.inner.path.clone() }),
        }
    }

    /// Like [`load`](Self::load), but a missing or bad file leaves it without a model (reported
    /// in the log) until a good file appears and [`reload_if_changed`](Self::reload_if_changed)
    /// or [`watch`](Self::watch) picks it up.
    pub fn open(path: impl Into<PathBuf>) -> Self {
        let shared = Self::empty(path.into());
        match shared.reload_if_changed() {
            Ok(true) => {}
            Ok(false) => warn!(path = %shared.inner.path.display(), "no model file yet; waiting for one"),
            Err(e) => warn!(error = %e, "no usable model yet; waiting for a good file"),
        }
        shared
    }

    fn empty(path: PathBuf) -> Self {
        Self { inner: Arc::new(Inner { path, current: ArcSwapOption::empty(), seen: Mutex::new(None) }) }
    }

    /// The model file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The model in use, or `None` while no file has loaded.
    pub fn current(&self) -> Option<Arc<Model>> {
        self.inner.current.load_full()
    }

    /// Loads the file if it changed since last looked at, and swaps it in. `Ok(true)`: a new
    /// model is in use; `Ok(false)`: nothing changed. An error (the file vanished, or does not
    /// load) is returned once per change of the file, and the model in use is kept.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let path = &self.inner.path;
        let stamp = match Stamp::of(path) {
            Ok(stamp) => Some(stamp),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => return Err(Error::Read { path: path.clone(), source }),
        };
        {
            let mut seen = self.inner.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == Some(stamp) {
                return Ok(false);
            }
            *seen = Some(stamp);
        }
        if stamp.is_none() {
            return match self.current() {
                Some(_) => Err(Error::ModelMissing { path: path.clone() }),
                None => Ok(false),
            };
        }
        let model = Model::load(path)?;
        self.inner.current.store(Some(Arc::new(model)));
        Ok(true)
    }

    /// Polls the file every [`POLL_INTERVAL`] until `shutdown`, swapping in new models and
    /// logging the ones that do not load.
    pub async fn watch(&self, shutdown: CancellationToken) {
        self.watch_every(POLL_INTERVAL, shutdown).await;
    }

    /// [`watch`](Self::watch) with another interval (tests use a short one).
    pub async fn watch_every(&self, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // Reading and parsing a large file is blocking work: keep it off the async workers.
            let this = self.clone();
            let outcome = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
            let in_use = self.current().map(|m| m.version().to_owned()).unwrap_or_else(|| "none".to_owned());
            match outcome {
                Ok(Ok(true)) => info!(version = %in_use, path = %self.path().display(), "new model in use"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, kept = %in_use, "the model file changed but did not load; keeping the model in use")
                }
                Err(e) => warn!(error = %e, "the model reload task failed"),
            }
        }
    }
}

impl std::fmt::Debug for SharedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedModel")
            .field("path", &self.inner.path)
            .field("version", &self.current().map(|m| m.version().to_owned()))
            .finish()
    }
}
