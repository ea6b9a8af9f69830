//! PDF files built with lopdf: a word processor's (text layer) and a scanner's (page images only).

use lopdf::content::{Content, Operation};
use lopdf::{Dictionary, Document, Object, ObjectId, Stream, StringFormat, dictionary, text_string};

use super::raster;
use super::winansi;
use super::wrap::wrap;

/// A4 in PDF points (1/72 inch).
const A4_WIDTH: f32 = 595.28;
const A4_HEIGHT: f32 = 841.89;
/// One inch all round, as word processors default to.
const MARGIN: f32 = 72.0;
/// Body text size; smaller sizes are tried, down to [`MIN_SIZE`], when a page's text would not fit.
const BODY_SIZE: f32 = 11.0;
const MIN_SIZE: f32 = 5.0;
/// Baseline distance as a multiple of the type size.
const LEADING: f32 = 1.3;

/// A PDF with a Helvetica text layer, one page per entry of `pages` (a blank page when there are none,
/// since a document needs at least one). A page's text is shrunk until it fits its page.
pub(crate) fn text_pdf(pages: &[&str], title: Option<&str>, author: Option<&str>) -> Vec<u8> {
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font_id = doc.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type1",
        "BaseFont" => "Helvetica",
        "Encoding" => "WinAnsiEncoding",
    });
    let resources = dictionary! { "Font" => dictionary! { "F1" => font_id } };

    let texts: Vec<&str> = if pages.is_empty() { vec![""] } else { pages.to_vec() };
    let mut kids = Vec::with_capacity(texts.len());
    for text in texts {
        let content = text_page_content(text);
        let content_id = doc.add_object(Stream::new(Dictionary::new(), encode(content)));
        kids.push(doc.add_object(dictionary! {
            "Type" => "Page",
            "Parent" => pages_id,
            "Contents" => content_id,
            "Resources" => resources.clone(),
        }));
    }
    finish(doc, pages_id, kids, [A4_WIDTH, A4_HEIGHT], title, author)
}

/// A PDF whose pages are only JPEG images of their text (no text layer), as a scanner makes them.
pub(crate) fn scanned_pdf(pages: &[&str]) -> Vec<u8> {
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let texts: Vec<&str> = if pages.is_empty() { vec![""] } else { pages.to_vec() };
    let mut kids = Vec::with_capacity(texts.len());
    for text in texts {
        let image = raster::page(text);
        // The image covers the whole page at the raster's resolution; a long text makes a taller page.
        let width = image.width() as f32 * 72.0 / raster::DPI as f32;
        let height = image.height() as f32 * 72.0 / raster::DPI as f32;
        let jpeg = raster::encode_jpeg(&image);
        let image_id = doc.add_object(
            Stream::new(
                dictionary! {
                    "Type" => "XObject",
                    "Subtype" => "Image",
                    "Width" => i64::from(image.width()),
                    "Height" => i64::from(image.height()),
                    "ColorSpace" => "DeviceGray",
                    "BitsPerComponent" => 8,
                    "Filter" => "DCTDecode",
                },
                jpeg,
            )
            .with_compression(false),
        );
        let content = Content {
            operations: vec![
                Operation::new("q", vec![]),
                Operation::new("cm", vec![width.into(), 0.into(), 0.into(), height.into(), 0.into(), 0.into()]),
                Operation::new("Do", vec!["Im0".into()]),
                Operation::new("Q", vec![]),
            ],
        };
        let content_id = doc.add_object(Stream::new(Dictionary::new(), encode(content)));
        kids.push(doc.add_object(dictionary! {
            "Type" => "Page",
            "Parent" => pages_id,
            "Contents" => content_id,
            "MediaBox" => vec![0.into(), 0.into(), width.into(), height.into()],
            "Resources" => dictionary! { "XObject" => dictionary! { "Im0" => image_id } },
        }));
    }
    finish(doc, pages_id, kids, [A4_WIDTH, A4_HEIGHT], None, None)
}

/// The drawing operations for one page of text: wrapped lines at the largest size that fits.
fn text_page_content(text: &str) -> Content {
    let max_width = A4_WIDTH - 2.0 * MARGIN;
    let max_height = A4_HEIGHT - 2.0 * MARGIN;
    let mut size = BODY_SIZE;
    let mut lines = wrap(text, max_width, |s| winansi::helvetica_width(s, size));
    while size > MIN_SIZE && lines.len() as f32 * size * LEADING > max_height {
        size -= 0.5;
        lines = wrap(text, max_width, |s| winansi::helvetica_width(s, size));
    }

    let mut operations = vec![
        Operation::new("BT", vec![]),
        Operation::new("Tf", vec!["F1".into(), size.into()]),
        Operation::new("TL", vec![(size * LEADING).into()]),
        Operation::new("Td", vec![MARGIN.into(), (A4_HEIGHT - MARGIN - size).into()]),
    ];
    for (index, line) in lines.iter().enumerate() {
        if index > 0 {
            operations.push(Operation::new("T*", vec![]));
        }
        if !line.is_empty() {
            operations.push(Operation::new("Tj", vec![Object::String(winansi::encode(line), StringFormat::Literal)]));
        }
    }
    operations.push(Operation::new("ET", vec![]));
    Content { operations }
}

/// Serialises content operations; writing into memory has no failure mode.
fn encode(content: Content) -> Vec<u8> {
    content.encode().expect("encoding PDF content operations into memory cannot fail")
}

/// Adds the page tree, catalog and document information, and serialises the document.
fn finish(
    mut doc: Document,
    pages_id: ObjectId,
    kids: Vec<ObjectId>,
    media_box: [f32; 2],
    title: Option<&str>,
    author: Option<&str>,
) -> Vec<u8> {
    let count = kids.len() as i64;
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => kids.into_iter().map(Object::Reference).collect::<Vec<_>>(),
            "Count" => count,
            "MediaBox" => vec![0.into(), 0.into(), media_box[0].into(), media_box[1].into()],
        }),
    );
    let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog_id);

    let mut info = dictionary! { "Producer" => Object::string_literal("weir-samples") };
    if let Some(title) = title {
        info.set("Title", text_string(title));
    }
    if let Some(author) = author {
        info.set("Author", text_string(author));
    }
    let info_id = doc.add_object(info);
    doc.trailer.set("Info", info_id);

    doc.compress();
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).expect("writing a PDF into memory cannot fail");
    bytes
}
