//! The embedded data directory: one SQLite file per service and for the bus, the platform's
//! keys (generated on first run, readable only by the owner), and a lock so that two `weir up`
//! never share one directory.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

/// An opened, locked data directory.
pub struct DataDir {
    root: PathBuf,
    /// Held for the life of the process: the OS releases the lock when it exits, however it exits.
    _lock: File,
}

/// The secrets the embedded platform needs.
pub struct Keys {
    /// HMAC key that signs every event.
    pub events: Vec<u8>,
    /// HMAC key of the access tokens.
    pub tokens: Vec<u8>,
    /// Key that seals personal data (emails) in events.
    pub pii: [u8; 32],
    /// The token gRPC callers of the classification service present (hex).
    pub grpc_token: String,
}

/// The classification service's token of the data directory at `root`, for clients such as
/// `weir classify` (no lock: a running `weir up` holds it).
pub fn read_grpc_token(root: &Path) -> anyhow::Result<String> {
    let path = root.join("keys").join(GRPC_KEY);
    let key = fs::read(&path).with_context(|| {
        format!(
            "cannot read the service token {}: start `weir up` on this data directory first, or pass --token",
            path.display()
        )
    })?;
    Ok(hex::encode(key))
}

const GRPC_KEY: &str = "grpc.key";

/// `--data-dir` of the commands that work on a `weir up`'s data directory.
#[derive(clap::Args)]
pub struct DataDirArg {
    /// The data directory of the `weir up` to work on.
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "weir-data")]
    pub data_dir: PathBuf,
}

/// The bus of the data directory at `root`, beside a running `weir up` (no lock) or a stopped
/// one. The bus must exist: this never creates a data directory.
pub fn open_bus(root: &Path) -> anyhow::Result<weir_store_sqlite::SqliteLog> {
    let path = root.join(crate::up::BUS_FILE);
    if !path.is_file() {
        bail!("no Weir bus at {}: pass the --data-dir that `weir up` uses (or set WEIR_DATA_DIR)", path.display());
    }
    weir_store_sqlite::SqliteLog::open(&path, Default::default())
        .with_context(|| format!("cannot open the bus {}", path.display()))
}

impl DataDir {
    /// Creates `root` if needed (mode 0700) and locks it.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(root).with_context(|| {
            format!("cannot create the data directory {}; choose another with --data-dir", root.display())
        })?;
        restrict(root, 0o700)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("weir.lock"))
            .with_context(|| format!("cannot open {}", root.join("weir.lock").display()))?;
        if lock.try_lock().is_err() {
            bail!("another `weir up` is using {}; stop it first or pass a different --data-dir", root.display());
        }
        Ok(Self { root: root.to_path_buf(), _lock: lock })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Loads the keys (`keys/`), generating any that are missing.
    pub fn keys(&self) -> anyhow::Result<Keys> {
        Keys::load_or_generate(&self.root.join("keys"))
    }
}

impl Keys {
    /// Signs and verifies every event.
    pub fn keyring(&self) -> weir_core::Keyring {
        weir_core::Keyring::new("k1", self.events.clone())
    }

    /// Issues and verifies access tokens, valid for an hour.
    pub fn tokens(&self) -> weir_http::Tokens {
        weir_http::Tokens::new(&self.tokens, std::time::Duration::from_secs(3600))
    }

    /// Seals and opens the personal data in events.
    pub fn sealer(&self) -> weir_core::pii::Sealer {
        weir_core::pii::Sealer::new("k1", &self.pii)
    }

    /// Loads the keys in `dir`, generating any that are missing (the directory too, mode 0700).
    /// Processes that start together on one directory agree: a key is created at most once.
    pub fn load_or_generate(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create the key directory {}", dir.display()))?;
        restrict(dir, 0o700)?;
        let events = key(dir, "events.key", 32)?;
        let tokens = key(dir, "tokens.key", 32)?;
        let pii = key(dir, "pii.key", 32)?;
        let grpc_token = hex::encode(key(dir, GRPC_KEY, 32)?);
        Ok(Keys { events, tokens, pii: pii.try_into().expect("a 32-byte key"), grpc_token })
    }
}

fn key(dir: &Path, name: &str, len: usize) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(name);
    let read = || match fs::read(&path) {
        Ok(bytes) if bytes.len() == len => Ok(Some(bytes)),
        Ok(_) => bail!(
            "{} is damaged (wrong length); restore it from a backup — deleting it makes existing data unreadable",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if let Some(key) = read()? {
        return Ok(key);
    }
    let mut key = vec![0u8; len];
    rand::fill(&mut key[..]);
    // Written whole to a file of this process's own, then linked into place: a crash never
    // leaves half a key, and when another process got there first its key is the one used.
    let temporary = dir.join(format!(".{name}.{:016x}", rand::random::<u64>()));
    {
        let mut file = create_private(&temporary)?;
        file.write_all(&key)?;
        file.sync_all()?;
    }
    let linked = fs::hard_link(&temporary, &path);
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            tracing::info!(key = %path.display(), "generated a new key");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read()?.with_context(|| format!("{} vanished while it was being read", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

#[cfg(unix)]
fn create_private(path: &Path) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    Ok(OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path)?)
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set permissions on {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let first = data.keys().unwrap();
        let again = data.keys().unwrap();
        assert_eq!(first.events, again.events);
        assert_eq!(first.pii, again.pii);
        assert_ne!(first.events, first.tokens);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("keys/events.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "keys must not be readable by others");
    }

    #[test]
    fn a_second_process_cannot_share_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDir::open(dir.path()).unwrap();
        let error = DataDir::open(dir.path()).err().unwrap().to_string();
        assert!(error.contains("another `weir up`"), "{error}");
    }

    #[test]
    fn a_damaged_key_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        data.keys().unwrap();
        fs::write(dir.path().join("keys/tokens.key"), b"short").unwrap();
        assert!(data.keys().err().unwrap().to_string().contains("damaged"));
    }

    #[test]
    fn processes_starting_together_agree_on_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("shared");
        let loaded: Vec<Keys> = std::thread::scope(|scope| {
            let starts: Vec<_> = (0..8).map(|_| scope.spawn(|| Keys::load_or_generate(&keys).unwrap())).collect();
            starts.into_iter().map(|s| s.join().unwrap()).collect()
        });
        for other in &loaded[1..] {
            assert_eq!(
                (&other.events, &other.tokens, &other.pii),
                (&loaded[0].events, &loaded[0].tokens, &loaded[0].pii)
            );
        }
        let left: Vec<_> = fs::read_dir(&keys).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 4, "only the four keys remain: {left:?}");
    }
}
