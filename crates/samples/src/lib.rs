//! Realistic sample documents for Weir's Document Intelligence Platform.
//!
//! Two halves: [`generate`] and [`corpus`] write labelled document *texts* (invoices, receipts,
//! contracts, résumés, letters, reports) from a seed — the classifier's training corpus and the
//! content of test uploads; [`render`] turns text into the *files* users upload: PNG and JPEG page
//! images, PDFs with a text layer, and scanned PDFs that hold only page images. Everything is
//! deterministic and offline (the font is embedded). This crate knows nothing of services, storage
//! or OCR; it only makes inputs.

mod text;

use std::path::Path;

/// The document classes Weir's classifier knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocClass {
    Invoice,
    Receipt,
    Contract,
    Resume,
    Letter,
    Report,
}

impl DocClass {
    pub const ALL: [DocClass; 6] =
        [Self::Invoice, Self::Receipt, Self::Contract, Self::Resume, Self::Letter, Self::Report];

    /// The label: `invoice`, `receipt`, `contract`, `resume`, `letter`, `report`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invoice => "invoice",
            Self::Receipt => "receipt",
            Self::Contract => "contract",
            Self::Resume => "resume",
            Self::Letter => "letter",
            Self::Report => "report",
        }
    }
}

/// One labelled document text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub class: DocClass,
    pub text: String,
}

/// The seed of the corpus shipped in the repository's `corpus/` directory.
pub const SHIPPED_SEED: u64 = 2026;
/// Documents per class in the shipped corpus.
pub const SHIPPED_PER_CLASS: usize = 100;

/// A realistic document of `class`; the same `seed` always gives the same text.
///
/// Names, companies, dates, amounts, the order of sections and which optional sections appear all
/// vary with the seed; the same seed gives different documents for different classes.
pub fn generate(class: DocClass, seed: u64) -> String {
    text::generate(class, seed)
}

/// `per_class` documents of every class, deterministic in `seed`: all invoices first, then receipts,
/// and so on in the order of [`DocClass::ALL`].
pub fn corpus(seed: u64, per_class: usize) -> Vec<Sample> {
    DocClass::ALL
        .into_iter()
        .flat_map(|class| {
            (0..per_class).map(move |index| Sample { class, text: generate(class, document_seed(seed, index)) })
        })
        .collect()
}

/// The seed of the `index`-th document of a corpus: well mixed, so neighbouring corpus seeds share
/// no documents.
fn document_seed(seed: u64, index: usize) -> u64 {
    text::rng::mix(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64)
}

/// Writes [`corpus`]`(seed, per_class)` as `<dir>/<label>/<NNNN>.txt`, the labelled-directory layout
/// `weir classifier train <dir>` reads. Directories are created as needed; files of the same name are
/// overwritten, other files are left alone.
pub fn write_corpus(dir: &Path, seed: u64, per_class: usize) -> std::io::Result<()> {
    for class in DocClass::ALL {
        std::fs::create_dir_all(dir.join(class.as_str()))?;
    }
    let mut index = std::collections::HashMap::new();
    for sample in corpus(seed, per_class) {
        let n = index.entry(sample.class).or_insert(0usize);
        std::fs::write(dir.join(sample.class.as_str()).join(format!("{n:04}.txt")), sample.text)?;
        *n += 1;
    }
    Ok(())
}

/// Files made from text, as a scanner or a word processor would make them.
///
/// Images are A4 pages at 150 dpi (1240 px wide; taller when the text needs it), black DejaVu Sans
/// on white with one-inch-ish margins, word-wrapped — crisp enough for Tesseract to read almost
/// exactly. Encoding into memory cannot fail, so these return bytes rather than `Result`.
pub mod render {
    mod pdf;
    mod raster;
    mod winansi;
    mod wrap;

    /// A page-like PNG (black text on white, about 150 dpi) of `text`.
    pub fn png(text: &str) -> Vec<u8> {
        raster::encode_png(&raster::page(text))
    }
    /// The same page as a JPEG.
    pub fn jpeg(text: &str) -> Vec<u8> {
        raster::encode_jpeg(&raster::page(text))
    }
    /// A PDF with a text layer, one page per entry; `title`/`author` in its document information.
    ///
    /// The text is set in the base-14 Helvetica with WinAnsiEncoding: Latin-1 text such as "Résumé"
    /// comes back exactly from text extraction; other accented letters lose their accent and other
    /// characters become `?`. A page whose text is too long is set smaller rather than split, so the
    /// page count always equals `pages.len()` (one blank page when `pages` is empty).
    pub fn text_pdf(pages: &[&str], title: Option<&str>, author: Option<&str>) -> Vec<u8> {
        pdf::text_pdf(pages, title, author)
    }
    /// A scanned PDF: each page is only an image of its text (no text layer).
    ///
    /// Each page holds one grayscale JPEG (DCTDecode) of [`png`]'s page, drawn over the whole page.
    pub fn scanned_pdf(pages: &[&str]) -> Vec<u8> {
        pdf::scanned_pdf(pages)
    }
}
