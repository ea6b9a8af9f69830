//! Servers a test starts for itself — its own `tansu` or `redis-server` on a free port, with
//! its data in a temporary directory — rather than restarting the machine's shared ones.
//!
//! A [`Server`] is killed when dropped, and also when the test process dies without dropping
//! it (the child asks the kernel for `SIGKILL` on its parent's death), so a crashed or
//! timed-out test leaves no broker behind. A program that is not installed fails the test with
//! the command that installs it: never a skip.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A server process of the test's own, listening on `127.0.0.1:port`.
pub struct Server {
    name: String,
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    install: String,
}

impl Server {
    /// Starts `program` with `args` and waits (up to 60 s) until `127.0.0.1:port` accepts
    /// connections. `{dir}` in an argument becomes the server's own temporary directory, where
    /// its output goes too (`server.log`). Panics with `install` — the command that provides
    /// the program — when it cannot be started, and with the log when it never answers.
    pub fn start(name: &str, program: &Path, args: &[String], port: u16, install: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("weir-{name}-")).tempdir().expect("a temporary directory");
        let log = dir.path().join("server.log");
        let args: Vec<String> = args.iter().map(|a| a.replace("{dir}", &dir.path().to_string_lossy())).collect();
        let (name, program, install) = (name.to_owned(), program.to_path_buf(), install.to_owned());
        let child = spawn(&name, &program, &args, &log, &install);
        let mut server = Self { name, child, port, dir, log, program, args, install };
        server.wait_until_answering(Duration::from_secs(60));
        server
    }

    /// Kills the server (as [`kill`](Self::kill)) and starts it again over its data.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.name, &self.program, &self.args, &self.log, &self.install);
        self.wait_until_answering(Duration::from_secs(60));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's own directory (its data and `server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server at once (`SIGKILL`: nothing flushed that it had not synced), keeping its
    /// directory for a [`restart`](Self::restart).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_until_answering(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before answering on port {}:\n{}",
                    self.name,
                    self.port,
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                panic!("{} did not answer on port {} within {within:?}:\n{}", self.name, self.port, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of the server's output, for a failure message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        log[log.ceil_char_boundary(start)..].to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(name: &str, program: &Path, args: &[String], log: &Path, install: &str) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("the server's log file");
    let err = out.try_clone().expect("the server's log file");
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    die_with_parent(&mut command);
    command.spawn().unwrap_or_else(|e| {
        panic!("\n\ncannot start {name} ({}): {e}\nInstall it with:\n\n    {install}\n\n", program.display())
    })
}

/// Asks the kernel to kill the child when this process dies, so no test leaves a server behind.
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// How to get the Kafka-protocol test broker when it is missing.
pub const TANSU_INSTALL: &str = "cargo install tansu --locked --features dynostore --root ~/.cache/weir/tansu \
                                 (scripts/test does it; ~10-20 min once)";

/// A `tansu` Kafka-protocol broker of the test's own on a free port, storing in memory: it
/// lives as long as the returned [`Server`]. The binary is `$WEIR_TANSU`, else
/// `~/.cache/weir/tansu/bin/tansu` (where `scripts/test` installs it), else `tansu` on `PATH`.
pub fn tansu() -> Server {
    let port = crate::free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let args =
        ["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"];
    let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    Server::start("tansu", &tansu_binary(), &args, port, TANSU_INSTALL)
}

fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WEIR_TANSU") {
        return path.into();
    }
    let cached = std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/weir/tansu/bin/tansu"));
    cached.filter(|path| path.exists()).unwrap_or_else(|| "tansu".into())
}

/// A `redis-server` of the test's own on a free port, its data in its directory, started with
/// `extra` arguments (e.g. `--appendonly yes --appendfsync always` for a durable one).
pub fn redis(extra: &[&str]) -> Server {
    let port = crate::free_port();
    let mut args = vec!["--bind".to_owned(), "127.0.0.1".to_owned(), "--port".to_owned(), port.to_string()];
    args.extend(["--dir", "{dir}", "--save", ""].map(str::to_owned));
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Server::start("redis-server", Path::new("redis-server"), &args, port, "apt-get install redis-server")
}
