//! Labelled texts: reading a training directory, and a stratified held-out split.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use crate::{Error, Result, Sample, rng::SplitMix64};

/// Reads `<dir>/<label>/*.txt` as `(label, text)` samples, in name order. Hidden entries and
/// other files are skipped. Fails with a message naming the path when the directory cannot be
/// read, a file is unreadable or not UTF-8, there is no text at all, or fewer than two labels
/// have texts.
pub fn load_labelled_dir(dir: impl AsRef<Path>) -> Result<Vec<Sample>> {
    let dir = dir.as_ref();
    let mut samples = Vec::new();
    for label_dir in sorted_entries(dir)? {
        let Some(label) = visible_name(&label_dir) else { continue };
        if !label_dir.is_dir() {
            continue;
        }
        for file in sorted_entries(&label_dir)? {
            let is_text = file.extension().is_some_and(|e| e == "txt") && file.is_file();
            if visible_name(&file).is_none() || !is_text {
                continue;
            }
            let text = fs::read_to_string(&file).map_err(|source| match source.kind() {
                io::ErrorKind::InvalidData => Error::NotText { path: file.clone() },
                _ => Error::Read { path: file.clone(), source },
            })?;
            samples.push((label.clone(), text));
        }
    }
    if samples.is_empty() {
        return Err(Error::EmptyDir { path: dir.to_owned() });
    }
    let mut labels: Vec<String> = samples.iter().map(|(l, _)| l.clone()).collect();
    labels.dedup();
    if labels.len() < 2 {
        return Err(Error::TooFewLabels(labels));
    }
    Ok(samples)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let read = |source| Error::Read { path: dir.to_owned(), source };
    let mut paths = fs::read_dir(dir)
        .map_err(read)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(read)?;
    paths.sort();
    Ok(paths)
}

/// The file name, unless it is hidden or not UTF-8.
fn visible_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    (!name.starts_with('.')).then(|| name.to_owned())
}

/// Splits samples into `(train, test)` with each label's share of the test set equal to
/// `test_fraction` (clamped to 0..=1), shuffled by `seed`. A label with at least two samples
/// gives at least one to each side, so every label is both learnt and tested; a label with one
/// sample keeps it for training.
pub fn split(samples: &[Sample], test_fraction: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
    let fraction = if test_fraction.is_nan() { 0.0 } else { test_fraction.clamp(0.0, 1.0) };
    let mut by_label: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for sample in samples {
        by_label.entry(sample.0.as_str()).or_default().push(sample);
    }
    let mut rng = SplitMix64::new(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (_, mut group) in by_label {
        rng.shuffle(&mut group);
        let n = group.len();
        let wanted = (n as f64 * fraction).round() as usize;
        let tested = if n < 2 || fraction == 0.0 { 0 } else { wanted.clamp(1, n - 1) };
        test.extend(group[..tested].iter().map(|s| (*s).clone()));
        train.extend(group[tested..].iter().map(|s| (*s).clone()));
    }
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(counts: &[(&str, usize)]) -> Vec<(String, String)> {
        counts.iter().flat_map(|(l, n)| (0..*n).map(move |i| (l.to_string(), format!("{l} text {i}")))).collect()
    }

    fn count(samples: &[(String, String)], label: &str) -> usize {
        samples.iter().filter(|(l, _)| l == label).count()
    }

    #[test]
    fn the_split_is_stratified_complete_and_seeded() {
        let all = samples(&[("a", 10), ("b", 20), ("c", 2), ("d", 1)]);
        let (train, test) = split(&all, 0.2, 1);
        assert_eq!((count(&test, "a"), count(&test, "b"), count(&test, "c"), count(&test, "d")), (2, 4, 1, 0));
        assert_eq!(train.len() + test.len(), all.len());
        let mut rejoined: Vec<_> = train.iter().chain(&test).cloned().collect();
        rejoined.sort();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(rejoined, sorted, "no sample lost or repeated");
        assert_eq!(split(&all, 0.2, 1), (train, test.clone()));
        assert_ne!(split(&all, 0.2, 2).1, test, "another seed picks other samples");
        assert!(split(&all, 0.0, 1).1.is_empty());
        assert_eq!(count(&split(&all, 1.0, 1).0, "a"), 1, "every label keeps one to learn from");
    }

    #[test]
    fn a_labelled_directory_is_read_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (label, name, text) in [("memo", "b.txt", "second"), ("memo", "a.txt", "first"), ("bill", "x.txt", "due")] {
            fs::create_dir_all(dir.path().join(label)).expect("mkdir");
            fs::write(dir.path().join(label).join(name), text).expect("write");
        }
        fs::write(dir.path().join("memo").join("notes.md"), "not a sample").expect("write");
        fs::create_dir_all(dir.path().join(".hidden")).expect("mkdir");
        fs::write(dir.path().join(".hidden").join("h.txt"), "hidden").expect("write");
        let read = load_labelled_dir(dir.path()).expect("reads");
        let expected = [("bill", "due"), ("memo", "first"), ("memo", "second")];
        assert_eq!(read, expected.map(|(l, t)| (l.to_owned(), t.to_owned())));
    }

    #[test]
    fn a_bad_directory_gets_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing");
        let error = load_labelled_dir(&missing).expect_err("missing dir");
        assert!(matches!(error, Error::Read { .. }) && error.to_string().contains("missing"), "{error}");

        assert!(matches!(load_labelled_dir(dir.path()), Err(Error::EmptyDir { .. })));

        fs::create_dir_all(dir.path().join("only")).expect("mkdir");
        fs::write(dir.path().join("only").join("a.txt"), "text").expect("write");
        assert!(matches!(load_labelled_dir(dir.path()), Err(Error::TooFewLabels(l)) if l == ["only"]));

        fs::create_dir_all(dir.path().join("other")).expect("mkdir");
        fs::write(dir.path().join("other").join("bad.txt"), [0xFF, 0xFE, 0x00]).expect("write");
        let error = load_labelled_dir(dir.path()).expect_err("not UTF-8");
        assert!(matches!(&error, Error::NotText { path } if path.ends_with("other/bad.txt")), "{error}");
    }
}
