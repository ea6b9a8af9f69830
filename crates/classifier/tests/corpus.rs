//! The classifier on Weir's sample documents: trained on a stratified part of
//! `weir_samples::corpus`, measured on the held-out rest.

use std::time::Instant;

use weir_classifier::{TrainOptions, evaluate, split, train};
use weir_samples::{DocClass, corpus, generate};

fn labelled(seed: u64, per_class: usize) -> Vec<(String, String)> {
    corpus(seed, per_class).into_iter().map(|s| (s.class.as_str().to_owned(), s.text)).collect()
}

#[test]
fn held_out_accuracy_is_at_least_ninety_percent() {
    let samples = labelled(11, 60);
    let (training, held_out) = split(&samples, 0.25, 5);
    let started = Instant::now();
    let model = train(&training, &TrainOptions::default()).expect("the corpus trains");
    let trained_in = started.elapsed();
    let evaluation = evaluate(&model, &held_out);
    println!(
        "trained on {} documents ({} features) in {trained_in:.2?}; held out {}:\n{evaluation}",
        training.len(),
        model.vocabulary_size(),
        held_out.len()
    );
    assert_eq!(held_out.len(), 6 * 15, "a quarter of every class is held out");
    assert!(evaluation.accuracy >= 0.9, "held-out accuracy {:.3} is below 0.9:\n{evaluation}", evaluation.accuracy);
    for scores in &evaluation.per_label {
        assert!(scores.recall >= 0.7, "{} is mostly missed:\n{evaluation}", scores.label);
    }
}

#[test]
fn documents_of_another_corpus_seed_are_recognised() {
    let model = train(&labelled(3, 40), &TrainOptions::default()).expect("the corpus trains");
    let mut wrong = Vec::new();
    for class in DocClass::ALL {
        for seed in 1_000..1_010 {
            let prediction = model.predict(&generate(class, seed));
            if prediction.label != class.as_str() {
                wrong.push((class, seed, prediction.label));
            }
        }
    }
    assert!(wrong.len() <= 6, "{} of 60 fresh documents misclassified: {wrong:?}", wrong.len());
}
