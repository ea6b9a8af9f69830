//! `weir samples`: example documents to upload — the same generator as the classifier's
//! corpus, rendered as a word processor and a scanner would make them.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use weir_samples::{DocClass, generate, render};

#[derive(Args)]
pub struct SamplesArgs {
    /// Where to write the files (created if needed).
    #[arg(default_value = "samples")]
    dir: PathBuf,
}

pub fn run(args: SamplesArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let invoice = generate(DocClass::Invoice, 1);
    let contract = [generate(DocClass::Contract, 2), generate(DocClass::Contract, 3)];
    let files = [
        (
            "invoice.pdf",
            "a PDF with a text layer",
            render::text_pdf(&[&invoice], Some("Invoice"), Some("Weir samples")),
        ),
        ("contract-scan.pdf", "a scanned two-page PDF (OCR)", render::scanned_pdf(&[&contract[0], &contract[1]])),
        ("receipt.png", "a photo-like PNG (OCR)", render::png(&generate(DocClass::Receipt, 4))),
        ("letter.jpg", "a JPEG (OCR)", render::jpeg(&generate(DocClass::Letter, 5))),
    ];
    for (name, what, bytes) in files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}  ({what})", path.display());
    }
    Ok(())
}
