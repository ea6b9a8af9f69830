//! The worker: processes ONE document in its own process, so that a parser or OCR engine that
//! crashes, hangs or eats memory takes down only this process, never the service. The service
//! starts it with time, CPU and memory limits and reads its reports.
//!
//! [`main`] is the whole program: it reads a [`Request`] from stdin and writes [`Report`]s to
//! stdout (see [`crate::protocol`]). The `weir-process-worker` binary calls it, and so can any
//! binary that embeds Weir (the `weir` CLI runs it through a hidden subcommand).
//!
//! - Images (PNG, JPEG): the declared pixel size is checked before anything is decoded (a
//!   decompression bomb is refused from its header), then the image is OCR'd with Tesseract.
//! - PDFs: parsed with lopdf (page count, title, author; damaged files are refused); each page's
//!   text layer is extracted with pdf-extract, and a page without one is rendered with
//!   `pdftoppm` (at its scanned image's own resolution, else [`OCR_DPI`]) and OCR'd.
//! - A JPEG thumbnail (longest side at most [`THUMBNAIL_SIZE`]) of the image or first page.

mod image;
mod ocr;
mod pdf;
mod thumbnail;

use std::{
    any::Any,
    fmt::Display,
    io::{self, Write},
    panic::{self, AssertUnwindSafe},
    path::Path,
    process::ExitCode,
};

use weir_contracts::MediaType;

use crate::protocol::{Done, Report, Request, TEXT_FILE, out_of_memory_reason};

/// The resolution PDF pages are rendered at for OCR: Tesseract's sweet spot for body text.
pub const OCR_DPI: u32 = 300;
/// The longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIZE: u32 = 256;
/// Tesseract's language.
const LANGUAGE: &str = "eng";

/// Why a document was not processed.
#[derive(Debug)]
enum Failure {
    /// The document's fault (damaged, too big, unreadable): reported to the user as the reason.
    Rejected(String),
    /// Ours (no Tesseract data, an output file that cannot be written): the worker exits with
    /// a failure status and the message goes to stderr, for the operator.
    Internal(String),
}

fn rejected(reason: impl Into<String>) -> Failure {
    Failure::Rejected(reason.into())
}

/// Wraps an error of ours with what we were doing.
fn internal<E: Display>(doing: &'static str) -> impl FnOnce(E) -> Failure {
    move |e| Failure::Internal(format!("cannot {doing}: {e}"))
}

/// Sends one report to the parent.
type Emit<'a> = dyn FnMut(&Report) -> Result<(), Failure> + 'a;

/// Runs the worker: one request from stdin, reports to stdout. Exit status 0 means a final
/// report (done or rejected) was written; anything else is a failure of the worker itself.
/// A binary that embeds it must leave stdout to it: no logging there.
pub fn main() -> ExitCode {
    let request: Request = match serde_json::from_reader(io::stdin().lock()) {
        Ok(request) => request,
        Err(e) => {
            eprintln!("weir-process-worker: expected a processing request as JSON on stdin: {e}");
            return ExitCode::from(2);
        }
    };
    let mut emit = |report: &Report| -> Result<(), Failure> {
        let mut out = io::stdout().lock();
        out.write_all(report.to_line().as_bytes()).and_then(|()| out.flush()).map_err(internal("write a report"))
    };
    // A panicking parser is the document's doing (it is malformed in a way the parser did not
    // expect): the user gets a reason. The default hook still prints the panic to stderr.
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| process(&request, &mut emit)));
    let report = match outcome {
        Ok(Ok(done)) => Report::Done(done),
        Ok(Err(Failure::Rejected(reason))) => Report::Rejected { reason },
        Ok(Err(Failure::Internal(message))) => {
            eprintln!("weir-process-worker: {message}");
            return ExitCode::FAILURE;
        }
        Err(panic) => Report::Rejected {
            reason: format!("the document could not be parsed (the parser failed: {})", panic_message(&*panic)),
        },
    };
    match emit(&report) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Internal(message) | Failure::Rejected(message)) => {
            eprintln!("weir-process-worker: {message}");
            ExitCode::FAILURE
        }
    }
}

fn process(request: &Request, emit: &mut Emit<'_>) -> Result<Done, Failure> {
    match request.media_type {
        MediaType::Png | MediaType::Jpeg => image::process(request, emit),
        MediaType::Pdf => pdf::process(request, emit),
    }
}

fn write_text(dir: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(dir.join(TEXT_FILE), text).map_err(internal("write the text"))
}

/// Refuses an image (or page render) of more than `max_pixels` pixels.
fn check_pixels(what: &str, width: u32, height: u32, max_pixels: u64) -> Result<(), Failure> {
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(rejected(format!(
            "{what} is {width} × {height} pixels; at most {:.1} megapixels can be processed",
            max_pixels as f64 / 1e6
        )));
    }
    Ok(())
}

/// Tells a library's failure to allocate from its other failures (Leptonica reports both as
/// "cannot read the image"): `Some` when `bytes` more cannot be had under the memory limit.
fn out_of_memory(bytes: u64) -> Option<Failure> {
    let mut probe = Vec::<u8>::new();
    if probe.try_reserve_exact(usize::try_from(bytes).unwrap_or(usize::MAX)).is_ok() {
        return None;
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
    let limit = (known && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur);
    Some(rejected(out_of_memory_reason(limit)))
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
