//! The corpus shipped in `corpus/` is exactly what the generator makes, so anyone can reproduce it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use weir_samples::{DocClass, SHIPPED_PER_CLASS, SHIPPED_SEED, corpus, write_corpus};

const REGENERATE: &str = "regenerate it with `cargo run -p weir-samples --example write_corpus`";

#[test]
fn shipped_corpus_matches_the_generator() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../corpus");
    for class in DocClass::ALL {
        let label_dir = dir.join(class.as_str());
        let found: BTreeSet<String> = std::fs::read_dir(&label_dir)
            .unwrap_or_else(|e| panic!("{} is missing ({e}); {REGENERATE}", label_dir.display()))
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let expected: BTreeSet<String> = (0..SHIPPED_PER_CLASS).map(|n| format!("{n:04}.txt")).collect();
        assert_eq!(found, expected, "unexpected files in {}; {REGENERATE}", label_dir.display());
    }
    let samples = corpus(SHIPPED_SEED, SHIPPED_PER_CLASS);
    for (index, sample) in samples.iter().enumerate() {
        let path = dir.join(sample.class.as_str()).join(format!("{:04}.txt", index % SHIPPED_PER_CLASS));
        let shipped = std::fs::read_to_string(&path).unwrap();
        assert!(shipped == sample.text, "{} differs from the generator; {REGENERATE}", path.display());
    }
}

#[test]
fn write_corpus_lays_out_labelled_directories() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path(), 8, 3).unwrap();
    let samples = corpus(8, 3);
    for class in DocClass::ALL {
        let texts: Vec<&str> = samples.iter().filter(|s| s.class == class).map(|s| s.text.as_str()).collect();
        for (n, text) in texts.iter().enumerate() {
            let written = std::fs::read_to_string(dir.path().join(class.as_str()).join(format!("{n:04}.txt"))).unwrap();
            assert_eq!(&written, text);
        }
        assert_eq!(std::fs::read_dir(dir.path().join(class.as_str())).unwrap().count(), 3);
    }
}
