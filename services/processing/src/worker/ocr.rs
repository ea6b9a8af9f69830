//! Tesseract through libtesseract (leptess), one engine per document: the language model is
//! loaded once and reused for every page.

use leptess::LepTess;

use super::{Failure, LANGUAGE, internal, out_of_memory, rejected};

/// Bytes per pixel Leptonica and Tesseract may hold at once (a 32-bit copy of the page).
const BYTES_PER_PIXEL: u64 = 4;

pub(super) struct Ocr(LepTess);

impl Ocr {
    pub(super) fn new() -> Result<Self, Failure> {
        LepTess::new(None, LANGUAGE).map(Self).map_err(|e| {
            Failure::Internal(format!(
                "Tesseract cannot load its {LANGUAGE:?} language data ({e}); install tesseract-ocr-{LANGUAGE}"
            ))
        })
    }

    /// The text of an encoded image (PNG, JPEG, PNM) of `pixels` pixels. `dpi` is its resolution
    /// when the caller knows it (a page it rendered); otherwise the file's own, or Tesseract's
    /// estimate from the size of the text — exactly what the `tesseract` command does.
    pub(super) fn recognize(&mut self, encoded: &[u8], pixels: u64, dpi: Option<u32>) -> Result<String, Failure> {
        if let Err(e) = self.0.set_image_from_mem(encoded) {
            return Err(out_of_memory(pixels.saturating_mul(BYTES_PER_PIXEL))
                .unwrap_or_else(|| rejected(format!("the image cannot be decoded for OCR: {e}"))));
        }
        if let Some(dpi) = dpi {
            self.0.set_source_resolution(i32::try_from(dpi).unwrap_or(i32::MAX));
        }
        self.0.get_utf8_text().map_err(internal("read Tesseract's text"))
    }
}
