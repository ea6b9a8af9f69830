//! Page images: text drawn with the embedded DejaVu Sans, black on white, at 150 dpi.

use std::sync::LazyLock;

use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont, point};
use image::codecs::jpeg::{JpegEncoder, PixelDensity};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, GrayImage, ImageEncoder, Luma};

use super::wrap::wrap;

/// DejaVu Sans, embedded so a render looks the same on every machine (licence: `fonts/DejaVuSans-LICENSE`).
static FONT: LazyLock<FontRef<'static>> = LazyLock::new(|| {
    FontRef::try_from_slice(include_bytes!("../../fonts/DejaVuSans.ttf"))
        .expect("the embedded DejaVu Sans is a valid TrueType font")
});

/// Resolution the page is drawn at; A4 (210 × 297 mm) at this density is 1240 × 1754 px.
pub(crate) const DPI: u32 = 150;
/// Width of an A4 page at [`DPI`].
pub(crate) const PAGE_WIDTH: u32 = 1240;
/// Height of an A4 page at [`DPI`]; longer texts make the page taller rather than losing lines.
pub(crate) const PAGE_HEIGHT: u32 = 1754;
const MARGIN_X: u32 = 110;
const MARGIN_TOP: u32 = 120;
const MARGIN_BOTTOM: u32 = 120;
/// Ascender-to-descender height in pixels: capitals come out about 24 px tall (11 pt at 150 dpi is
/// 23 px), large enough for Tesseract to read without guessing.
const SCALE: f32 = 38.0;
/// Baseline-to-baseline distance: 1.5 × the glyph height keeps lines well apart.
const LINE_HEIGHT: u32 = 56;

/// Draws `text` on a white A4 page (taller when the text needs it), word-wrapped inside the margins.
pub(crate) fn page(text: &str) -> GrayImage {
    let font = &*FONT;
    let scaled = font.as_scaled(PxScale::from(SCALE));
    let max_width = (PAGE_WIDTH - 2 * MARGIN_X) as f32;
    let lines = wrap(text, max_width, line_width);
    let needed = MARGIN_TOP + LINE_HEIGHT * lines.len() as u32 + MARGIN_BOTTOM;
    let mut image = GrayImage::from_pixel(PAGE_WIDTH, needed.max(PAGE_HEIGHT), Luma([255]));

    for (row, line) in lines.iter().enumerate() {
        let baseline = MARGIN_TOP as f32 + row as f32 * LINE_HEIGHT as f32 + scaled.ascent();
        let mut x = MARGIN_X as f32;
        let mut previous: Option<GlyphId> = None;
        for c in line.chars() {
            let id = scaled.glyph_id(c);
            if let Some(previous) = previous {
                x += scaled.kern(previous, id);
            }
            let glyph = id.with_scale_and_position(SCALE, point(x, baseline));
            if let Some(outlined) = font.outline_glyph(glyph) {
                let bounds = outlined.px_bounds();
                outlined.draw(|gx, gy, coverage| {
                    let px = bounds.min.x as i64 + i64::from(gx);
                    let py = bounds.min.y as i64 + i64::from(gy);
                    if px < 0 || py < 0 || px >= i64::from(image.width()) || py >= i64::from(image.height()) {
                        return;
                    }
                    let ink = (coverage.clamp(0.0, 1.0) * 255.0).round() as u8;
                    let pixel = image.get_pixel_mut(px as u32, py as u32);
                    pixel.0[0] = pixel.0[0].min(255 - ink);
                });
            }
            x += scaled.h_advance(id);
            previous = Some(id);
        }
    }
    image
}

/// Width of `line` in pixels at the page's type size, kerning included.
fn line_width(line: &str) -> f32 {
    let scaled = FONT.as_scaled(PxScale::from(SCALE));
    let mut width = 0.0;
    let mut previous: Option<GlyphId> = None;
    for c in line.chars() {
        let id = scaled.glyph_id(c);
        if let Some(previous) = previous {
            width += scaled.kern(previous, id);
        }
        width += scaled.h_advance(id);
        previous = Some(id);
    }
    width
}

/// `image` as a grayscale PNG that records its [`DPI`] (a `pHYs` chunk), so OCR engines need not guess.
pub(crate) fn encode_png(image: &GrayImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(image.as_raw(), image.width(), image.height(), ExtendedColorType::L8)
        .expect("encoding a valid in-memory grayscale image as PNG cannot fail");
    with_png_density(bytes, DPI)
}

/// `image` as a grayscale baseline JPEG (quality 90) that records its [`DPI`].
pub(crate) fn encode_jpeg(image: &GrayImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut bytes, 90);
    encoder.set_pixel_density(PixelDensity::dpi(DPI as u16));
    encoder
        .write_image(image.as_raw(), image.width(), image.height(), ExtendedColorType::L8)
        .expect("encoding a valid in-memory grayscale image as JPEG cannot fail");
    bytes
}

/// Inserts a `pHYs` chunk (pixels per metre) right after `IHDR`, which is where the PNG spec wants it.
fn with_png_density(png: Vec<u8>, dpi: u32) -> Vec<u8> {
    // Signature (8 bytes) + IHDR chunk (4 length + 4 type + 13 data + 4 CRC).
    const AFTER_IHDR: usize = 8 + 4 + 4 + 13 + 4;
    if png.len() < AFTER_IHDR || &png[12..16] != b"IHDR" {
        return png;
    }
    let per_metre = (f64::from(dpi) / 0.0254).round() as u32;
    let mut chunk = Vec::with_capacity(21);
    chunk.extend_from_slice(&9u32.to_be_bytes());
    chunk.extend_from_slice(b"pHYs");
    chunk.extend_from_slice(&per_metre.to_be_bytes());
    chunk.extend_from_slice(&per_metre.to_be_bytes());
    chunk.push(1); // unit: metre
    let crc = crc32(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());

    let mut out = Vec::with_capacity(png.len() + chunk.len());
    out.extend_from_slice(&png[..AFTER_IHDR]);
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[AFTER_IHDR..]);
    out
}

/// The CRC-32 (ISO 3309) PNG chunks carry; bitwise, as it runs once per image.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_reference_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn text_is_drawn_inside_the_margins() {
        let image = page(
            "Hello, world. A fairly long line of text that must wrap around the right margin of the page and continue below it.",
        );
        let inked: Vec<(u32, u32)> =
            image.enumerate_pixels().filter(|(_, _, p)| p.0[0] < 128).map(|(x, y, _)| (x, y)).collect();
        assert!(inked.len() > 1000, "too little ink: {}", inked.len());
        let (min_x, max_x) = (inked.iter().map(|p| p.0).min().unwrap(), inked.iter().map(|p| p.0).max().unwrap());
        let max_y = inked.iter().map(|p| p.1).max().unwrap();
        assert!(min_x >= MARGIN_X - 2, "ink left of the margin at x={min_x}");
        assert!(max_x <= PAGE_WIDTH - MARGIN_X, "ink right of the margin at x={max_x}");
        assert!(max_y > MARGIN_TOP + LINE_HEIGHT, "the long line did not wrap onto a second line");
    }

    #[test]
    fn long_text_makes_a_taller_page() {
        let text = "line\n".repeat(60);
        let image = page(&text);
        assert_eq!(image.width(), PAGE_WIDTH);
        assert!(image.height() >= MARGIN_TOP + 60 * LINE_HEIGHT, "height {}", image.height());
        assert_eq!(page("short").height(), PAGE_HEIGHT);
    }

    #[test]
    fn png_records_its_resolution() {
        let png = encode_png(&page("dpi"));
        let at = png.windows(4).position(|w| w == b"pHYs").expect("a pHYs chunk");
        let per_metre = u32::from_be_bytes([png[at + 4], png[at + 5], png[at + 6], png[at + 7]]);
        assert_eq!(per_metre, 5906); // 150 dpi
        image::load_from_memory(&png).expect("the PNG with pHYs still decodes");
    }
}
