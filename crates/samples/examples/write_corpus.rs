//! Regenerates the labelled training corpus shipped in the repository's `corpus/` directory:
//!
//! ```text
//! cargo run -p weir-samples --example write_corpus                  # corpus/, seed 2026, 100 per class
//! cargo run -p weir-samples --example write_corpus -- DIR SEED PER_CLASS
//! ```
//!
//! The six `<DIR>/<label>/` directories are emptied first, so a smaller corpus leaves no stale files.

use std::path::PathBuf;

use weir_samples::{DocClass, SHIPPED_PER_CLASS, SHIPPED_SEED, write_corpus};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../corpus"));
    let seed = args.next().map(|s| s.parse()).transpose()?.unwrap_or(SHIPPED_SEED);
    let per_class = args.next().map(|s| s.parse()).transpose()?.unwrap_or(SHIPPED_PER_CLASS);

    for class in DocClass::ALL {
        let label_dir = dir.join(class.as_str());
        if label_dir.exists() {
            std::fs::remove_dir_all(&label_dir)?;
        }
    }
    write_corpus(&dir, seed, per_class)?;
    println!("wrote {per_class} documents per class (seed {seed}) to {}", dir.display());
    Ok(())
}
