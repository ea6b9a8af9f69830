//! The generated texts: deterministic, varied, of plausible length, and classifiable by a plain
//! TF-IDF model without being trivially separable.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use weir_samples::{DocClass, Sample, corpus, generate};

fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|t| t.len() > 1).map(str::to_lowercase).collect()
}

fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// A TF-IDF nearest-centroid classifier: about the simplest model a "decent" classifier beats.
struct Centroids {
    idf: HashMap<String, f64>,
    centroids: Vec<(DocClass, HashMap<String, f64>)>,
}

impl Centroids {
    fn train(samples: &[Sample]) -> Self {
        let mut document_frequency: HashMap<String, usize> = HashMap::new();
        for sample in samples {
            for token in tokens(&sample.text).into_iter().collect::<BTreeSet<_>>() {
                *document_frequency.entry(token).or_default() += 1;
            }
        }
        let n = samples.len() as f64;
        let idf = document_frequency.into_iter().map(|(t, df)| (t, (n / df as f64).ln() + 1.0)).collect();
        let mut model = Self { idf, centroids: Vec::new() };
        for class in DocClass::ALL {
            let mut centroid: HashMap<String, f64> = HashMap::new();
            for sample in samples.iter().filter(|s| s.class == class) {
                for (token, weight) in model.vector(&sample.text) {
                    *centroid.entry(token).or_default() += weight;
                }
            }
            normalize(&mut centroid);
            model.centroids.push((class, centroid));
        }
        model
    }

    fn vector(&self, text: &str) -> HashMap<String, f64> {
        let mut vector: HashMap<String, f64> = HashMap::new();
        for token in tokens(text) {
            if let Some(idf) = self.idf.get(&token) {
                *vector.entry(token).or_default() += idf;
            }
        }
        normalize(&mut vector);
        vector
    }

    fn classify(&self, text: &str) -> DocClass {
        let vector = self.vector(text);
        let score = |centroid: &HashMap<String, f64>| -> f64 {
            vector.iter().map(|(t, w)| w * centroid.get(t).copied().unwrap_or(0.0)).sum()
        };
        self.centroids.iter().max_by(|a, b| score(&a.1).total_cmp(&score(&b.1))).map(|(class, _)| *class).unwrap()
    }
}

fn normalize(vector: &mut HashMap<String, f64>) {
    let norm = vector.values().map(|w| w * w).sum::<f64>().sqrt();
    if norm > 0.0 {
        vector.values_mut().for_each(|w| *w /= norm);
    }
}

#[test]
fn the_same_seed_gives_the_same_text_and_other_seeds_other_texts() {
    for class in DocClass::ALL {
        assert_eq!(generate(class, 42), generate(class, 42), "{class:?}");
        assert_ne!(generate(class, 42), generate(class, 43), "{class:?}");
    }
    assert_ne!(generate(DocClass::Invoice, 7), generate(DocClass::Receipt, 7));
    assert_eq!(corpus(5, 3), corpus(5, 3));
    assert_ne!(corpus(5, 3), corpus(6, 3));
}

#[test]
fn corpus_holds_per_class_documents_of_every_class_in_order() {
    let samples = corpus(9, 4);
    assert_eq!(samples.len(), 24);
    let classes: Vec<DocClass> = samples.iter().map(|s| s.class).collect();
    let expected: Vec<DocClass> = DocClass::ALL.into_iter().flat_map(|c| [c; 4]).collect();
    assert_eq!(classes, expected);
    // A corpus is generated, not a fixed list: its documents are those `generate` gives.
    assert!(samples.iter().all(|s| !s.text.trim().is_empty()));
    assert!(corpus(9, 0).is_empty());
}

#[test]
fn every_class_has_documents_of_plausible_length() {
    for class in DocClass::ALL {
        let counts: Vec<usize> = (0..300).map(|seed| word_count(&generate(class, seed))).collect();
        let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        let mean = counts.iter().sum::<usize>() / counts.len();
        eprintln!("{class:?}: words min {min}, mean {mean}, max {max}");
        assert!(min >= 80 && max <= 400, "{class:?}: {min}..{max} words");
    }
}

#[test]
fn texts_are_mostly_ascii() {
    for sample in corpus(3, 50) {
        let other = sample.text.chars().filter(|c| !c.is_ascii()).count();
        assert!(other * 100 <= sample.text.len(), "{:?} has {other} non-ASCII characters", sample.class);
    }
}

#[test]
fn documents_of_a_class_vary() {
    for class in DocClass::ALL {
        let texts: Vec<String> = (0..100).map(|seed| generate(class, seed)).collect();
        let distinct_texts: BTreeSet<&String> = texts.iter().collect();
        assert_eq!(distinct_texts.len(), 100, "{class:?}");
        let first_lines: BTreeSet<&str> = texts.iter().filter_map(|t| t.lines().next()).collect();
        assert!(first_lines.len() >= 20, "{class:?}: only {} different first lines", first_lines.len());
        let lengths: BTreeSet<usize> = texts.iter().map(|t| word_count(t) / 10).collect();
        assert!(lengths.len() >= 4, "{class:?}: lengths hardly vary");

        // Two documents of the same class share well under all of their words.
        let sets: Vec<BTreeSet<String>> = texts.iter().map(|t| tokens(t).into_iter().collect()).collect();
        let mut total = 0.0;
        let mut pairs = 0;
        for i in 0..sets.len() {
            for j in i + 1..sets.len() {
                total += sets[i].intersection(&sets[j]).count() as f64 / sets[i].union(&sets[j]).count() as f64;
                pairs += 1;
            }
        }
        let mean = total / pairs as f64;
        eprintln!("{class:?}: mean Jaccard similarity {mean:.2}");
        assert!(mean < 0.5, "{class:?}: documents too alike (mean Jaccard {mean:.2})");
    }
}

#[test]
fn a_tf_idf_classifier_separates_the_classes_on_held_out_documents() {
    let model = Centroids::train(&corpus(1, 80));
    let test = corpus(2, 50);
    let mut confusion: BTreeMap<(DocClass, DocClass), usize> = BTreeMap::new();
    for sample in &test {
        *confusion.entry((sample.class, model.classify(&sample.text))).or_default() += 1;
    }
    let correct: usize = confusion.iter().filter(|((a, b), _)| a == b).map(|(_, n)| n).sum();
    let accuracy = correct as f64 / test.len() as f64;
    eprintln!(
        "accuracy {accuracy:.3}; errors: {:?}",
        confusion.iter().filter(|((a, b), _)| a != b).collect::<Vec<_>>()
    );
    assert!(accuracy >= 0.9, "held-out accuracy {accuracy:.3}");
}

#[test]
fn classes_share_vocabulary_and_no_word_alone_gives_a_class_away() {
    let samples = corpus(4, 100);
    // Share of each class's documents that contain each word.
    let mut share: HashMap<String, HashMap<DocClass, f64>> = HashMap::new();
    for sample in &samples {
        for token in tokens(&sample.text).into_iter().collect::<BTreeSet<_>>() {
            *share.entry(token).or_default().entry(sample.class).or_default() += 0.01;
        }
    }

    // Every pair of classes has words in common that are frequent in both (amounts, dates, names,
    // company words, ...), so a classifier cannot rely on vocabulary alone.
    for (i, a) in DocClass::ALL.iter().enumerate() {
        for b in &DocClass::ALL[i + 1..] {
            let common = share
                .values()
                .filter(|by_class| {
                    by_class.get(a).copied().unwrap_or(0.0) >= 0.05 && by_class.get(b).copied().unwrap_or(0.0) >= 0.05
                })
                .count();
            assert!(common >= 25, "{a:?} and {b:?} share only {common} words");
        }
    }
    let everywhere: Vec<&String> = share
        .iter()
        .filter(|(_, by_class)| DocClass::ALL.iter().all(|c| by_class.get(c).copied().unwrap_or(0.0) >= 0.1))
        .map(|(t, _)| t)
        .collect();
    assert!(everywhere.len() >= 5, "words common to all classes: {everywhere:?}");

    // No word is in (nearly) every document of one class and in no document of the others.
    let mut giveaways = Vec::new();
    for (token, by_class) in &share {
        for class in DocClass::ALL {
            let inside = by_class.get(&class).copied().unwrap_or(0.0);
            let outside: f64 = by_class.iter().filter(|(c, _)| **c != class).map(|(_, s)| s).sum();
            if inside > 0.9 && outside == 0.0 {
                giveaways.push((token, class));
            }
        }
    }
    assert!(giveaways.is_empty(), "words that alone identify a class: {giveaways:?}");
}
