//! Runs the [worker](crate::worker) for one document, in its own process, and says what its end
//! means.
//!
//! The process is bounded four ways, so that one document can only ever fail itself:
//! - **Wall clock**: [`Limits::timeout`], plus [`Limits::timeout_per_page`] once the worker has
//!   reported the page count. Past it the whole process group is killed (the worker and any
//!   `pdftoppm` it started).
//! - **Memory**: `RLIMIT_AS` of [`Limits::memory_bytes`]; an allocation past it fails, and the
//!   worker dies of it.
//! - **CPU**: `RLIMIT_CPU` of the longest deadline, a backstop should this process die and leave
//!   the worker behind (it also gets `SIGKILL` when its parent thread dies).
//! - **Priority**: the worker runs under `SCHED_IDLE` (and at nice [`Limits::nice`]) with
//!   `OMP_THREAD_LIMIT=1`: it gets a core only when nothing else wants it, so request handling
//!   on the same machine preempts OCR at once and stays fast while every core does OCR.
//!
//! At most `workers` processes run at once (a semaphore, sized to the cores): a flood of uploads
//! queues here instead of oversubscribing the CPU.

use std::{
    io,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::Arc,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::Command,
    sync::Semaphore,
    time::Instant,
};
use tracing::{debug, warn};
use weir_contracts::MediaType;

use crate::{
    Limits, WorkerCommand,
    protocol::{Done, Report, Request, out_of_memory_reason},
};

/// More than this on the worker's stdout is not read (reports are a few hundred bytes).
const MAX_STDOUT: u64 = 1 << 20;
/// How much of the end of the worker's stderr is kept for the log.
const STDERR_TAIL: usize = 4096;
/// What a process that ran out of memory tends to say (Rust, C++, glibc, Leptonica).
const OUT_OF_MEMORY: [&str; 5] =
    ["memory allocation of", "bad_alloc", "cannot allocate memory", "out of memory", "malloc fail"];

/// How a worker run ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done(Done),
    /// The document cannot be processed: the reason, for the user.
    Failed(String),
}

/// Starts workers, at most `workers` at a time.
pub(crate) struct Runner {
    command: WorkerCommand,
    limits: Limits,
    permits: Arc<Semaphore>,
}

/// Where one run's files are.
pub(crate) struct Job<'a> {
    pub input: &'a Path,
    pub media_type: MediaType,
    /// An empty directory for the worker's output.
    pub output_dir: &'a Path,
    /// Where the worker's stderr goes.
    pub stderr: &'a Path,
}

impl Runner {
    pub(crate) fn new(command: WorkerCommand, limits: Limits, workers: usize) -> Self {
        Self { command, limits, permits: Arc::new(Semaphore::new(workers.max(1))) }
    }

    /// Waits for a free worker slot, then runs the worker on `job`. `Err` only when the worker
    /// could not be started or watched (a problem here, not the document's: worth a retry).
    pub(crate) async fn run(&self, job: Job<'_>) -> io::Result<Outcome> {
        let _permit = self.permits.acquire().await.map_err(io::Error::other)?;
        let _busy = Busy::start();
        let request = Request {
            input: job.input.to_owned(),
            media_type: job.media_type,
            output_dir: job.output_dir.to_owned(),
            max_pixels: self.limits.max_pixels,
            max_pages: self.limits.max_pages,
        };
        let mut command = Command::new(&self.command.program);
        command
            .args(&self.command.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(job.stderr)?)
            .env("OMP_THREAD_LIMIT", "1")
            .kill_on_drop(true)
            .process_group(0);
        let limits = ProcessLimits {
            memory_bytes: self.limits.memory_bytes,
            cpu_seconds: self.limits.longest().as_secs().saturating_add(1),
            nice: self.limits.nice,
        };
        // SAFETY: `apply` makes only async-signal-safe system calls (setrlimit, setpriority, sched_setscheduler,
        // prctl) and allocates nothing, as code between fork and exec must.
        unsafe {
            command.pre_exec(move || limits.apply());
        }
        let started = Instant::now();
        let mut child = command.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start the worker {}: {e}", self.command.program.display()))
        })?;
        // Killing the group on every way out of here (a timeout, or this future being dropped)
        // also stops the worker's own children.
        let group = KillGroup(child.id().and_then(|id| i32::try_from(id).ok()));

        if let Some(mut stdin) = child.stdin.take() {
            let line = serde_json::to_vec(&request).map_err(io::Error::other)?;
            // A worker that dies before reading its request is judged by how it ended.
            if let Err(e) = stdin.write_all(&line).await {
                debug!(error = %e, "the worker did not take its request");
            }
        }

        let mut deadline = started + self.limits.deadline(None);
        let mut last = None;
        let mut timed_out = false;
        if let Some(stdout) = child.stdout.take() {
            let mut lines = BufReader::new(stdout.take(MAX_STDOUT)).lines();
            loop {
                tokio::select! {
                    line = lines.next_line() => match line {
                        Ok(Some(line)) => match Report::parse(&line) {
                            Some(Report::Pages { pages }) => deadline = started + self.limits.deadline(Some(pages)),
                            Some(report) => last = Some(report),
                            None => debug!(line, "ignored a line the worker printed"),
                        },
                        Ok(None) | Err(_) => break,
                    },
                    () = tokio::time::sleep_until(deadline) => {
                        timed_out = true;
                        break;
                    }
                }
            }
        }
        let status =
            if timed_out { None } else { tokio::time::timeout_at(deadline, child.wait()).await.ok().transpose()? };
        let status = match status {
            Some(status) => status,
            None => {
                group.kill();
                child.wait().await?;
                let allowed = deadline - started;
                return Ok(Outcome::Failed(format!("processing took longer than {} s", allowed.as_secs())));
            }
        };
        // Anything the worker left running (it crashed while `pdftoppm` ran) goes too.
        drop(group);
        Ok(self.judge(status, last, job.stderr).await)
    }

    /// What the end of a worker that exited by itself means.
    async fn judge(&self, status: ExitStatus, last: Option<Report>, stderr: &Path) -> Outcome {
        if status.success() {
            return match last {
                Some(Report::Done(done)) => Outcome::Done(done),
                Some(Report::Rejected { reason }) => Outcome::Failed(reason),
                _ => Outcome::Failed("the processor exited without a result".into()),
            };
        }
        let tail = stderr_tail(stderr).await;
        warn!(%status, stderr = %tail, "the worker failed");
        let lower = tail.to_lowercase();
        if OUT_OF_MEMORY.iter().any(|m| lower.contains(m)) {
            return Outcome::Failed(out_of_memory_reason(Some(self.limits.memory_bytes)));
        }
        Outcome::Failed(match (status.signal(), status.code()) {
            (Some(libc::SIGXCPU), _) => {
                format!("processing used more than {} s of CPU time", self.limits.longest().as_secs())
            }
            (Some(signal), _) => format!("the processor crashed ({})", signal_name(signal)),
            (None, Some(code)) => format!("the processor failed (exit status {code})"),
            (None, None) => "the processor failed".into(),
        })
    }
}

/// The end of the worker's stderr, for the log.
async fn stderr_tail(path: &Path) -> String {
    let Ok(bytes) = tokio::fs::read(path).await else { return String::new() };
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// The limits a worker process sets on itself between fork and exec.
#[derive(Clone, Copy)]
struct ProcessLimits {
    memory_bytes: u64,
    cpu_seconds: u64,
    nice: i32,
}

impl ProcessLimits {
    fn apply(self) -> io::Result<()> {
        fn check(result: libc::c_int) -> io::Result<()> {
            if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
        }
        let memory = libc::rlimit { rlim_cur: self.memory_bytes, rlim_max: self.memory_bytes };
        let cpu = libc::rlimit { rlim_cur: self.cpu_seconds, rlim_max: self.cpu_seconds.saturating_add(5) };
        // SAFETY: plain system calls on this (child) process with valid arguments.
        unsafe {
            check(libc::setrlimit(libc::RLIMIT_AS, &memory))?;
            check(libc::setrlimit(libc::RLIMIT_CPU, &cpu))?;
            check(libc::setpriority(libc::PRIO_PROCESS, 0, self.nice))?;
            // Any process may lower itself to SCHED_IDLE; a niced worker still let a wake-up of
            // the request path wait behind it (orders' p99 33 ms under an OCR flood).
            check(libc::sched_setscheduler(0, libc::SCHED_IDLE, &libc::sched_param { sched_priority: 0 }))?;
            // Dies with the thread that started it: no orphan OCR if the service is killed.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0))?;
        }
        Ok(())
    }
}

/// Kills a worker's process group when dropped.
struct KillGroup(Option<i32>);

impl KillGroup {
    fn kill(&self) {
        if let Some(group) = self.0 {
            // SAFETY: signals a process group we created; ESRCH (already gone) is fine.
            unsafe {
                libc::killpg(group, libc::SIGKILL);
            }
        }
    }
}

impl Drop for KillGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Counts a busy worker slot in the `weir_processing_busy_workers` gauge while it lives.
struct Busy;

impl Busy {
    fn start() -> Self {
        metrics::gauge!("weir_processing_busy_workers").increment(1.0);
        Self
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        metrics::gauge!("weir_processing_busy_workers").decrement(1.0);
    }
}

/// A per-run scratch directory: the downloaded input, the worker's output and its stderr.
pub(crate) struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub(crate) fn new(parent: &Path) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("weir-processing-").tempdir_in(parent)?;
        std::fs::create_dir(dir.path().join("out"))?;
        Ok(Self { dir })
    }

    pub(crate) fn input(&self) -> PathBuf {
        self.dir.path().join("input")
    }

    pub(crate) fn output_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    pub(crate) fn stderr(&self) -> PathBuf {
        self.dir.path().join("stderr")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn limits_scale_the_deadline_with_pages() {
        let limits = Limits {
            timeout: Duration::from_secs(30),
            timeout_per_page: Duration::from_secs(10),
            max_pages: 100,
            ..Limits::default()
        };
        assert_eq!(limits.deadline(None), Duration::from_secs(30));
        assert_eq!(limits.deadline(Some(3)), Duration::from_secs(60));
        assert_eq!(limits.longest(), Duration::from_secs(1030));
    }
}
