//! The rendered files are what real tools expect: images decode, PDFs open in lopdf, pdf-extract and
//! Poppler, and Tesseract reads the page images back.

use std::path::Path;
use std::process::Command;

use image::GenericImageView;
use lopdf::{Document, Object, decode_text_string};
use weir_samples::render;

const LETTER: &str = "Dear Ms. Lindqvist,\n\nThank you for your letter of March 4, 2024 regarding invoice \
INV-2024-0193. We have credited $1,250.00 to your account and the balance is now zero.\n\nKind regards,\nPeter Novak";

/// Runs an external program from a Debian package the crate's tests depend on, failing loudly if it
/// is missing.
fn run(program: &str, args: &[&str]) -> std::process::Output {
    let output = Command::new(program).args(args).output().unwrap_or_else(|error| {
        panic!("cannot run `{program}` ({error}); install it with `apt-get install poppler-utils tesseract-ocr`")
    });
    assert!(output.status.success(), "{program} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Characters that differ between the two texts (Levenshtein distance) per character of `expected`,
/// with runs of white space counted as one space.
fn character_error_rate(expected: &str, actual: &str) -> f64 {
    let normalize = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").chars().collect::<Vec<char>>();
    let (a, b) = (normalize(expected), normalize(actual));
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            current[j + 1] = (previous[j] + usize::from(ca != cb)).min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()] as f64 / a.len().max(1) as f64
}

/// Tesseract's reading of the image, treating the page as one block of text: the mode the Tesseract
/// API (and so leptess) uses by default. The command line's default automatic layout analysis can
/// split a numbered list into a column of numbers and a column of text.
fn ocr(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let output = run("tesseract", &[path.to_str().unwrap(), "stdout", "-l", "eng", "--psm", "6"]);
    String::from_utf8(output.stdout).unwrap()
}

/// Renders page 1 of `pdf` with `pdftoppm -r 50 -png` and returns the decoded image.
fn pdftoppm_first_page(dir: &Path, pdf: &[u8]) -> image::DynamicImage {
    let input = dir.join("input.pdf");
    std::fs::write(&input, pdf).unwrap();
    let prefix = dir.join("page");
    run(
        "pdftoppm",
        &["-r", "50", "-png", "-f", "1", "-l", "1", "-singlefile", input.to_str().unwrap(), prefix.to_str().unwrap()],
    );
    image::open(dir.join("page.png")).expect("pdftoppm wrote a PNG")
}

/// Share of pixels darker than mid-grey.
fn ink(image: &image::DynamicImage) -> f64 {
    let gray = image.to_luma8();
    gray.pixels().filter(|p| p.0[0] < 128).count() as f64 / gray.pixels().len() as f64
}

fn info_string(doc: &Document, key: &[u8]) -> Option<String> {
    let info = doc.trailer.get(b"Info").ok()?;
    let info = match info {
        Object::Reference(id) => doc.get_dictionary(*id).ok()?,
        Object::Dictionary(dict) => dict,
        _ => return None,
    };
    decode_text_string(info.get(key).ok()?).ok()
}

#[test]
fn png_and_jpeg_are_a4_pages_at_150_dpi_with_text_on_white() {
    for (format, bytes) in [("png", render::png(LETTER)), ("jpeg", render::jpeg(LETTER))] {
        let guessed = image::guess_format(&bytes).unwrap();
        assert_eq!(format!("{guessed:?}").to_lowercase(), format);
        let image = image::load_from_memory(&bytes).unwrap();
        assert_eq!(image.dimensions(), (1240, 1754), "{format}");
        let share = ink(&image);
        assert!(share > 0.002 && share < 0.1, "{format}: {share} of the page is ink");
        // Margins stay white: the left and top 100 px carry no ink.
        let gray = image.to_luma8();
        assert!(gray.enumerate_pixels().filter(|(x, y, _)| *x < 100 || *y < 100).all(|(_, _, p)| p.0[0] > 200));
    }
}

#[test]
fn tesseract_reads_the_page_images_almost_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for (index, class) in weir_samples::DocClass::ALL.into_iter().enumerate() {
        let text = weir_samples::generate(class, 11);
        let (name, bytes) =
            if index % 2 == 0 { ("page.png", render::png(&text)) } else { ("page.jpg", render::jpeg(&text)) };
        let read = ocr(dir.path(), name, &bytes);
        let cer = character_error_rate(&text, &read);
        assert!(cer < 0.02, "{class:?} {name}: character error rate {cer:.3}\n--- expected\n{text}\n--- read\n{read}");
    }
}

#[test]
fn text_pdf_has_one_page_per_entry_a_text_layer_and_document_information() {
    let pages = ["Résumé of Zoë Müller\nSenior Accountant", "Page two: invoice INV-0042 total $99.50", LETTER];
    let pdf = render::text_pdf(&pages, Some("Résumé — Zoë Müller"), Some("Zoë Müller"));

    let doc = Document::load_mem(&pdf).unwrap();
    assert_eq!(doc.get_pages().len(), 3);
    assert_eq!(info_string(&doc, b"Title").as_deref(), Some("Résumé — Zoë Müller"));
    assert_eq!(info_string(&doc, b"Author").as_deref(), Some("Zoë Müller"));

    let text = pdf_extract::extract_text_from_mem(&pdf).unwrap();
    for expected in ["Résumé of Zoë Müller", "Senior Accountant", "INV-0042", "$99.50", "$1,250.00", "Kind regards"]
    {
        assert!(text.contains(expected), "{expected:?} missing from the extracted text:\n{text}");
    }
    let by_page = pdf_extract::extract_text_from_mem_by_pages(&pdf).unwrap();
    assert_eq!(by_page.len(), 3);
    assert!(by_page[1].contains("Page two") && !by_page[0].contains("Page two"));
}

#[test]
fn text_pdf_without_information_and_long_text_keeps_every_word() {
    let long = weir_samples::generate(weir_samples::DocClass::Contract, 3).repeat(3);
    let pdf = render::text_pdf(&[&long], None, None);
    let doc = Document::load_mem(&pdf).unwrap();
    assert_eq!(doc.get_pages().len(), 1, "a long text is set smaller, not split");
    assert_eq!(info_string(&doc, b"Title"), None);
    let text = pdf_extract::extract_text_from_mem(&pdf).unwrap();
    let expected: Vec<&str> = long.split_whitespace().collect();
    let found: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(found, expected);
}

#[test]
fn text_pdf_of_no_pages_is_one_blank_page() {
    let doc = Document::load_mem(&render::text_pdf(&[], Some("Empty"), None)).unwrap();
    assert_eq!(doc.get_pages().len(), 1);
}

#[test]
fn scanned_pdf_has_only_page_images() {
    let pages = [LETTER, "Second scanned page\nwith two lines", "Third"];
    let pdf = render::scanned_pdf(&pages);
    let doc = Document::load_mem(&pdf).unwrap();
    assert_eq!(doc.get_pages().len(), 3);

    for (number, page_id) in doc.get_pages() {
        let images = doc.get_page_images(page_id).unwrap();
        assert_eq!(images.len(), 1, "page {number}");
        assert_eq!(images[0].filters.as_deref(), Some(&["DCTDecode".to_string()][..]));
        let decoded = image::load_from_memory_with_format(images[0].content, image::ImageFormat::Jpeg).unwrap();
        assert_eq!(decoded.dimensions(), (1240, 1754));
    }

    let text = pdf_extract::extract_text_from_mem(&pdf).unwrap();
    assert!(!text.chars().any(char::is_alphanumeric), "a scan must have no text layer, found {text:?}");
}

#[test]
fn pdftoppm_renders_both_kinds_of_pdf() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, pdf) in [
        ("text", render::text_pdf(&[LETTER, "two"], Some("t"), None)),
        ("scanned", render::scanned_pdf(&[LETTER, "two"])),
    ] {
        let page = pdftoppm_first_page(dir.path(), &pdf);
        // A4 at 50 dpi is 413 × 585 px.
        let (width, height) = page.dimensions();
        assert!((410..=416).contains(&width) && (582..=588).contains(&height), "{kind}: {width}x{height}");
        assert!(ink(&page) > 0.001, "{kind}: pdftoppm drew no text");
    }
}

#[test]
fn tesseract_reads_a_scanned_page_rendered_by_pdftoppm() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("scan.pdf");
    std::fs::write(&input, render::scanned_pdf(&[LETTER])).unwrap();
    let prefix = dir.path().join("scan");
    run("pdftoppm", &["-r", "150", "-png", "-singlefile", input.to_str().unwrap(), prefix.to_str().unwrap()]);
    let read = ocr(dir.path(), "scan-again.png", &std::fs::read(dir.path().join("scan.png")).unwrap());
    let cer = character_error_rate(LETTER, &read);
    assert!(cer < 0.02, "character error rate {cer:.3}: {read}");
}

#[test]
fn character_error_rate_counts_edits() {
    assert_eq!(character_error_rate("abc", "abc"), 0.0);
    assert_eq!(character_error_rate("abcd", "abxd"), 0.25);
    assert_eq!(character_error_rate("a  b\nc", "a b c"), 0.0);
}
