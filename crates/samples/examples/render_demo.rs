//! Writes a PNG, a JPEG, a text PDF and a scanned PDF of one generated document into a directory,
//! to look at: `cargo run -p weir-samples --example render_demo -- /tmp/samples [class] [seed]`.

use weir_samples::{DocClass, generate, render};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let class = args.next().unwrap_or_else(|| "invoice".into());
    let class = DocClass::ALL.into_iter().find(|c| c.as_str() == class).unwrap_or(DocClass::Invoice);
    let seed = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let text = generate(class, seed);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("sample.txt"), &text)?;
    std::fs::write(dir.join("sample.png"), render::png(&text))?;
    std::fs::write(dir.join("sample.jpg"), render::jpeg(&text))?;
    std::fs::write(dir.join("sample.pdf"), render::text_pdf(&[&text], Some(class.as_str()), None))?;
    std::fs::write(dir.join("sample-scanned.pdf"), render::scanned_pdf(&[&text]))?;
    println!("wrote {class:?} (seed {seed}) to {}", dir.display());
    Ok(())
}
