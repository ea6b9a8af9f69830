//! PNG and JPEG: one page, OCR'd whole.

use std::io::Cursor;

use image::{ImageFormat, ImageReader};
use weir_contracts::MediaType;

use super::{Emit, Failure, check_pixels, internal, ocr::Ocr, rejected, thumbnail, write_text};
use crate::protocol::{Done, Report, Request};

pub(super) fn process(request: &Request, emit: &mut Emit<'_>) -> Result<Done, Failure> {
    let format = match request.media_type {
        MediaType::Png => ImageFormat::Png,
        MediaType::Jpeg => ImageFormat::Jpeg,
        MediaType::Pdf => return Err(Failure::Internal("a PDF was sent to the image processor".into())),
    };
    let bytes = std::fs::read(&request.input).map_err(internal("read the document"))?;
    // The header's size, before a single pixel is decoded: a few hundred bytes of PNG can
    // declare gigapixels (a decompression bomb).
    let (width, height) = ImageReader::with_format(Cursor::new(&bytes), format)
        .into_dimensions()
        .map_err(|e| rejected(format!("the image cannot be read: {e}")))?;
    check_pixels("the image", width, height, request.max_pixels)?;
    emit(&Report::Pages { pages: 1 })?;

    let image = ImageReader::with_format(Cursor::new(&bytes), format)
        .decode()
        .map_err(|e| rejected(format!("the image is damaged: {e}")))?;
    thumbnail::write(&image, &request.output_dir)?;
    drop(image);

    // Tesseract decodes the original file itself (through Leptonica), as the `tesseract`
    // command would, so it sees the file's own resolution.
    let text = Ocr::new()?.recognize(&bytes, u64::from(width) * u64::from(height), None)?;
    write_text(&request.output_dir, &text)?;
    Ok(Done { pages: 1, width, height, title: None, author: None, ocr_pages: 1, text_layer_pages: 0 })
}
