//! What the service and its worker process say to each other.
//!
//! The parent writes one [`Request`] as JSON to the worker's stdin and closes it. The worker
//! writes [`Report`]s to stdout, one JSON object per line: first [`Report::Pages`] as soon as it
//! knows the page count (the parent's deadline grows with it), then exactly one final
//! [`Report::Done`] or [`Report::Rejected`]. The text and the thumbnail are files in the
//! request's output directory ([`TEXT_FILE`], [`THUMBNAIL_FILE`]), not part of the report.
//! Anything on stdout that is not a report (a library printing) is ignored.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use weir_contracts::MediaType;

/// The full text, UTF-8, in the output directory.
pub const TEXT_FILE: &str = "text.txt";
/// The JPEG thumbnail, in the output directory.
pub const THUMBNAIL_FILE: &str = "thumbnail.jpg";

/// One document to process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The raw bytes, as uploaded.
    pub input: PathBuf,
    pub media_type: MediaType,
    /// An existing, empty directory for [`TEXT_FILE`] and [`THUMBNAIL_FILE`].
    pub output_dir: PathBuf,
    /// Images (and PDF pages as rendered) larger than this are refused before decoding.
    pub max_pixels: u64,
    /// PDFs with more pages are refused.
    pub max_pages: u32,
}

/// One line of the worker's stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum Report {
    /// The page count, sent before the slow work starts.
    Pages { pages: u32 },
    /// Success: the text and thumbnail files are written.
    Done(Done),
    /// The document cannot be processed; `reason` is for the user.
    Rejected { reason: String },
}

/// What the worker learned about a document it processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub pages: u32,
    /// The image's pixel size, or the first page's as rendered for OCR (300 dpi, or a scanned
    /// page's own resolution).
    pub width: u32,
    pub height: u32,
    pub title: Option<String>,
    pub author: Option<String>,
    pub ocr_pages: u32,
    pub text_layer_pages: u32,
}

/// The reason given for a document that needed more memory than the worker may use
/// (`None`: no limit was set).
pub fn out_of_memory_reason(limit_bytes: Option<u64>) -> String {
    match limit_bytes {
        Some(limit) => format!("processing needed more than {} MiB of memory", limit / (1024 * 1024)),
        None => "processing needed more memory than the machine has".into(),
    }
}

impl Report {
    /// This report as one line of JSON (with its newline).
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("reports are plain data and always serialise");
        line.push('\n');
        line
    }

    /// Parses one line; `None` for anything that is not a report.
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line.trim()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_as_lines_and_noise_is_ignored() {
        let done = Report::Done(Done {
            pages: 2,
            width: 10,
            height: 20,
            title: Some("T".into()),
            author: None,
            ocr_pages: 1,
            text_layer_pages: 1,
        });
        for report in [Report::Pages { pages: 3 }, done, Report::Rejected { reason: "no".into() }] {
            let line = report.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(Report::parse(&line), Some(report));
        }
        assert_eq!(Report::parse("Estimating resolution as 158"), None);
        assert_eq!(Report::parse("{\"report\":\"unknown\"}"), None);
    }
}
