//! PDFs: the text layer where a page has one, OCR of the rendered page where it has not.
//!
//! lopdf (as re-exported by pdf-extract, so the file is parsed once) reads the structure: the
//! page count, the page sizes and the document information. pdf-extract reads each page's text
//! layer; it panics on some malformed input, so each page runs under `catch_unwind` and a page
//! it cannot read is OCR'd instead. `pdftoppm` (poppler) renders pages; it runs as a child of
//! this worker, in its process group, under the same limits.

use std::{
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::Command,
};

use image::ImageReader;
use pdf_extract::{Dictionary, Document, Object, PlainTextOutput};

use super::{
    Emit, Failure, OCR_DPI, THUMBNAIL_SIZE, check_pixels, internal, ocr::Ocr, rejected, thumbnail, write_text,
};
use crate::protocol::{Done, Report, Request};

/// A page whose text layer has fewer letters and digits than this is treated as a scan.
const MIN_TEXT_LAYER_CHARS: usize = 3;
/// A page is never rendered for OCR below this resolution; a page so large that it would have
/// to be is refused.
const MIN_OCR_DPI: u32 = 50;
/// Scanned pages are rendered at their images' own resolution (no scanned pixel lost, none
/// invented: Tesseract sees what it would see in the scan itself), but not below this.
const MIN_SCAN_DPI: f64 = 150.0;
/// US Letter, in points: the size of a page that states none.
const DEFAULT_PAGE: (f64, f64) = (612.0, 792.0);

pub(super) fn process(request: &Request, emit: &mut Emit<'_>) -> Result<Done, Failure> {
    let bytes = std::fs::read(&request.input).map_err(internal("read the document"))?;
    let mut doc = Document::load_mem(&bytes).map_err(|e| rejected(format!("the PDF is damaged or truncated: {e}")))?;
    drop(bytes);
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err(rejected("the PDF is protected by a password"));
    }
    let pages = doc.get_pages();
    let count = u32::try_from(pages.len()).unwrap_or(u32::MAX);
    if count == 0 {
        return Err(rejected("the PDF has no pages"));
    }
    if count > request.max_pages {
        return Err(rejected(format!("the PDF has {count} pages; at most {} can be processed", request.max_pages)));
    }
    emit(&Report::Pages { pages: count })?;

    let (title, author) = (info(&doc, b"Title"), info(&doc, b"Author"));
    let mut ocr: Option<Ocr> = None;
    let mut texts = Vec::with_capacity(pages.len());
    let (mut ocr_pages, mut text_layer_pages) = (0, 0);
    let mut first_page_pixels = (0, 0);
    let render_prefix = request.output_dir.join("page");
    for (&number, &id) in &pages {
        let page = doc.get_dictionary(id).ok();
        let size = page.map(|p| page_size(&doc, p)).unwrap_or(DEFAULT_PAGE);
        let target = page.and_then(|p| image_dpi(&doc, p, size)).unwrap_or(f64::from(OCR_DPI));
        let (dpi, pixels) = render_size(size, target, request.max_pixels).map_err(|(width, height)| {
            rejected(format!(
                "page {number} is {:.0} × {:.0} inches, too large to render for OCR",
                width / 72.0,
                height / 72.0
            ))
        })?;
        if texts.is_empty() {
            first_page_pixels = pixels;
        }
        match text_layer(&doc, number) {
            Some(text) => {
                text_layer_pages += 1;
                texts.push(text);
            }
            None => {
                let rendered = render(&request.input, number, &render_prefix, Render::Gray { dpi })?;
                check_pixels(&format!("page {number} as rendered"), rendered.1, rendered.2, request.max_pixels)?;
                let engine = match &mut ocr {
                    Some(engine) => engine,
                    None => ocr.insert(Ocr::new()?),
                };
                texts.push(engine.recognize(&rendered.0, u64::from(rendered.1) * u64::from(rendered.2), Some(dpi))?);
                ocr_pages += 1;
            }
        }
    }
    drop(ocr);
    write_text(&request.output_dir, &join_pages(&texts))?;

    let first = pages.keys().next().copied().unwrap_or(1);
    let (thumb, _, _) = render(&request.input, first, &render_prefix, Render::Thumbnail)?;
    let image = ImageReader::new(std::io::Cursor::new(thumb))
        .with_guessed_format()
        .map_err(internal("read the rendered thumbnail"))?
        .decode()
        .map_err(internal("decode the rendered thumbnail"))?;
    thumbnail::write(&image, &request.output_dir)?;

    Ok(Done {
        pages: count,
        width: first_page_pixels.0,
        height: first_page_pixels.1,
        title,
        author,
        ocr_pages,
        text_layer_pages,
    })
}

/// Pages' texts, trimmed, separated by a blank line.
fn join_pages(texts: &[String]) -> String {
    texts.iter().map(|t| t.trim()).collect::<Vec<_>>().join("\n\n")
}

/// A page's text layer, if it has a real one (see [`MIN_TEXT_LAYER_CHARS`]).
fn text_layer(doc: &Document, number: u32) -> Option<String> {
    let extracted = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut text = String::new();
        let mut output = PlainTextOutput::new(&mut text);
        pdf_extract::output_doc_page(doc, &mut output, number).ok()?;
        Some(text)
    }));
    let text = extracted.ok().flatten()?;
    (text.chars().filter(|c| c.is_alphanumeric()).count() >= MIN_TEXT_LAYER_CHARS).then_some(text)
}

/// A string from the document information dictionary, such as `Title`.
fn info(doc: &Document, key: &[u8]) -> Option<String> {
    let (_, info) = doc.dereference(doc.trailer.get(b"Info").ok()?).ok()?;
    let (_, value) = doc.dereference(info.as_dict().ok()?.get(key).ok()?).ok()?;
    let text = pdf_extract::decode_text_string(value).ok()?;
    let text = text.trim().trim_matches('\0').trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// A page's visible size in points (width, height), its rotation applied.
fn page_size(doc: &Document, page: &Dictionary) -> (f64, f64) {
    let media_box = inherited(doc, page, b"MediaBox")
        .and_then(|b| b.as_array().ok())
        .and_then(|b| b.iter().map(|n| number(doc, n)).collect::<Option<Vec<f64>>>())
        .filter(|b| b.len() == 4);
    let (width, height) = match media_box {
        Some(b) => ((b[2] - b[0]).abs(), (b[3] - b[1]).abs()),
        None => DEFAULT_PAGE,
    };
    if !(width.is_finite() && height.is_finite() && width >= 1.0 && height >= 1.0) {
        return DEFAULT_PAGE;
    }
    let rotate = inherited(doc, page, b"Rotate").and_then(|r| number(doc, r)).unwrap_or(0.0) as i64;
    if rotate.rem_euclid(180) == 90 { (height, width) } else { (width, height) }
}

/// The resolution a page of `size` points is rendered at, and its pixel size there: `target`,
/// or less for a page so large that it would exceed `max_pixels`. `Err(size)` when even
/// [`MIN_OCR_DPI`] is too much.
fn render_size((width, height): (f64, f64), target: f64, max_pixels: u64) -> Result<(u32, (u32, u32)), (f64, f64)> {
    let square_inches = (width / 72.0) * (height / 72.0);
    let fitting = (max_pixels as f64 / square_inches).sqrt().floor();
    let dpi = target.round().min(fitting);
    if dpi < f64::from(MIN_OCR_DPI) {
        return Err((width, height));
    }
    let pixels = |points: f64| (points * dpi / 72.0).ceil() as u32;
    Ok((dpi as u32, (pixels(width), pixels(height))))
}

/// The resolution of the sharpest image drawn directly on the page (pixels per inch of the page,
/// assuming the image fills it, as a scan does), within [`MIN_SCAN_DPI`]..=[`OCR_DPI`]; `None`
/// for a page without images.
fn image_dpi(doc: &Document, page: &Dictionary, (width, height): (f64, f64)) -> Option<f64> {
    let resources = inherited(doc, page, b"Resources")?.as_dict().ok()?;
    let xobjects = doc.dereference(resources.get(b"XObject").ok()?).ok()?.1.as_dict().ok()?;
    let page_inches = width.max(height) / 72.0;
    xobjects
        .iter()
        .filter_map(|(_, object)| {
            let image = &doc.dereference(object).ok()?.1.as_stream().ok()?.dict;
            (image.get(b"Subtype").ok()?.as_name().ok()? == b"Image").then_some(())?;
            let pixels = number(doc, image.get(b"Width").ok()?)?.max(number(doc, image.get(b"Height").ok()?)?);
            Some(pixels / page_inches)
        })
        .reduce(f64::max)
        .map(|dpi| dpi.clamp(MIN_SCAN_DPI, f64::from(OCR_DPI)))
}

/// A page attribute, looked up the page tree (MediaBox and Rotate are inheritable).
fn inherited<'a>(doc: &'a Document, page: &'a Dictionary, key: &[u8]) -> Option<&'a Object> {
    let mut dict = page;
    // Bounded: a malicious page tree may loop.
    for _ in 0..64 {
        if let Ok(value) = dict.get(key) {
            return doc.dereference(value).ok().map(|(_, v)| v);
        }
        let parent = dict.get(b"Parent").ok()?.as_reference().ok()?;
        dict = doc.get_dictionary(parent).ok()?;
    }
    None
}

fn number(doc: &Document, object: &Object) -> Option<f64> {
    match doc.dereference(object).ok()?.1 {
        Object::Integer(i) => Some(*i as f64),
        Object::Real(r) => Some(f64::from(*r)),
        _ => None,
    }
}

enum Render {
    /// Grayscale at `dpi`, for OCR (Tesseract works on gray anyway; PGM is quick to write).
    Gray { dpi: u32 },
    /// In colour, the longest side scaled to the thumbnail's size.
    Thumbnail,
}

/// Renders page `number` with `pdftoppm`; returns the PNM bytes and the pixel size.
fn render(input: &Path, number: u32, prefix: &Path, how: Render) -> Result<(Vec<u8>, u32, u32), Failure> {
    let page = number.to_string();
    let mut command = Command::new("pdftoppm");
    command.args(["-f", &page, "-l", &page, "-singlefile"]);
    let file = match how {
        Render::Gray { dpi } => {
            command.args(["-gray", "-r", &dpi.to_string()]);
            prefix.with_extension("pgm")
        }
        Render::Thumbnail => {
            command.args(["-scale-to", &THUMBNAIL_SIZE.to_string()]);
            prefix.with_extension("ppm")
        }
    };
    let output = command.arg(input).arg(prefix).output().map_err(|e| {
        Failure::Internal(format!("cannot run pdftoppm ({e}); install poppler-utils to render PDF pages"))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let why = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no message").trim();
        return Err(rejected(format!("page {number} cannot be rendered: {why}")));
    }
    let bytes = read_and_remove(&file)?;
    let (width, height) = ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(internal("read a rendered page"))?
        .into_dimensions()
        .map_err(internal("read a rendered page's size"))?;
    Ok((bytes, width, height))
}

fn read_and_remove(file: &PathBuf) -> Result<Vec<u8>, Failure> {
    let bytes = std::fs::read(file).map_err(internal("read a rendered page"))?;
    std::fs::remove_file(file).map_err(internal("remove a rendered page"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_render_at_300_dpi_unless_too_large() {
        // A4 at 300 dpi: 2480 × 3508.
        assert_eq!(render_size((595.0, 842.0), 300.0, 40_000_000), Ok((300, (2480, 3509))));
        assert_eq!(render_size((595.0, 842.0), 150.0, 40_000_000), Ok((150, (1240, 1755))));
        // A0 (about 33 × 47 in) would be 139 MP at 300 dpi: rendered at the resolution that fits.
        let (dpi, (w, h)) = render_size((2384.0, 3370.0), 300.0, 40_000_000).unwrap();
        assert!((MIN_OCR_DPI..300).contains(&dpi), "{dpi}");
        assert!(u64::from(w) * u64::from(h) <= 40_000_000);
        // A page the size of a building is refused.
        assert!(render_size((200_000.0, 200_000.0), 300.0, 40_000_000).is_err());
    }

    #[test]
    fn pages_are_joined_trimmed_with_blank_lines() {
        assert_eq!(join_pages(&[" one \n".into(), "\ntwo\n\n".into()]), "one\n\ntwo");
    }
}
