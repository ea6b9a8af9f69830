//! The Document Intelligence Platform's events (ARCHITECTURE.md, the Document Intelligence Platform), choreographed over three topics:
//! upload → `doc.uploaded` → processing → `doc.processed` → classification → `doc.classified`.
//! Every payload's subject is its document id, so everything about one document is handled in
//! order. Blobs travel by key (`raw/{user}/{document}`, `text/...`, `thumbnails/...`), never inline.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Contract, topics};

macro_rules! document_contract {
    ($name:ident, $topic:expr, $kind:literal) => {
        impl Contract for $name {
            const TOPIC: &'static str = $topic;
            const KIND: &'static str = $kind;
            fn subject(&self) -> String {
                self.document_id.to_string()
            }
        }
    };
}

/// What a document is, decided from its first bytes (never from its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MediaType {
    Pdf,
    Png,
    Jpeg,
}

impl MediaType {
    /// The MIME type, e.g. `application/pdf`.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Pdf => "application/pdf",
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
        }
    }

    /// Recognises PDF, PNG and JPEG by their magic bytes; `None` for anything else.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(b"%PDF-") {
            Some(Self::Pdf)
        } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else {
            None
        }
    }
}

/// A user uploaded a document; its raw bytes are stored, scanned clean, at `blob_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DocumentUploaded {
    pub document_id: Uuid,
    pub user_id: Uuid,
    /// The file name the user gave, reduced to a safe base name (no directories).
    pub filename: String,
    pub media_type: MediaType,
    pub size_bytes: u64,
    /// Hex SHA-256 of the raw bytes.
    pub sha256: String,
    /// Where the raw bytes are: `raw/{user}/{document}`.
    pub blob_key: String,
}
document_contract!(DocumentUploaded, topics::DOC_UPLOADED, "document_uploaded");

/// What processing learned about a document besides its text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DocumentMetadata {
    pub pages: u32,
    /// Pixel size of the image, or of the first page as rendered for OCR or the thumbnail.
    pub width: u32,
    pub height: u32,
    /// Hex SHA-256 of the raw bytes.
    pub sha256: String,
    /// The PDF's document information, when it has any.
    pub title: Option<String>,
    pub author: Option<String>,
    /// Pages whose text came from OCR (images, scanned PDF pages) and from a PDF text layer.
    pub ocr_pages: u32,
    pub text_layer_pages: u32,
}

/// A document's text was extracted and its thumbnail made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DocumentProcessed {
    pub document_id: Uuid,
    pub user_id: Uuid,
    pub filename: String,
    pub media_type: MediaType,
    /// The full text, as UTF-8: `text/{user}/{document}`.
    pub text_key: String,
    /// A JPEG thumbnail: `thumbnails/{user}/{document}`.
    pub thumbnail_key: String,
    /// The start of the text (at most [`EXCERPT_CHARS`] characters), enough to classify it by.
    pub excerpt: String,
    /// Characters in the full text.
    pub text_chars: u64,
    pub metadata: DocumentMetadata,
}
document_contract!(DocumentProcessed, topics::DOC_PROCESSED, "document_processed");

/// How many characters of the text travel in [`DocumentProcessed::excerpt`].
pub const EXCERPT_CHARS: usize = 4000;

/// A document could not be processed (unreadable, too big once decoded, a parser that crashed or
/// ran out of time or memory). It is final: the document is `FAILED` with `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DocumentFailed {
    pub document_id: Uuid,
    pub user_id: Uuid,
    pub filename: String,
    /// Which stage gave up: `processing` or `classification`.
    pub stage: String,
    /// What went wrong, for the user to read.
    pub reason: String,
}
document_contract!(DocumentFailed, topics::DOC_PROCESSED, "document_failed");

/// A document was classified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DocumentClassified {
    pub document_id: Uuid,
    pub user_id: Uuid,
    pub filename: String,
    /// The class: `invoice`, `receipt`, `contract`, `resume`, `letter`, `report`, ...
    pub label: String,
    /// The model's probability for `label`, in 0..=1.
    pub confidence: f32,
    /// The version of the model that decided.
    pub model_version: String,
}
document_contract!(DocumentClassified, topics::DOC_CLASSIFIED, "document_classified");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_decided_by_magic_bytes() {
        assert_eq!(MediaType::sniff(b"%PDF-1.7\n..."), Some(MediaType::Pdf));
        assert_eq!(MediaType::sniff(b"\x89PNG\r\n\x1a\n\0\0"), Some(MediaType::Png));
        assert_eq!(MediaType::sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(MediaType::Jpeg));
        assert_eq!(MediaType::sniff(b"GIF89a"), None);
        assert_eq!(MediaType::sniff(b"%PD"), None);
        assert_eq!(MediaType::sniff(b""), None);
    }
}
