//! Measuring a model on held-out samples: accuracy, per-label precision, recall and F1, and
//! the confusion matrix, printable as a table.

use std::fmt;

use crate::{Model, Sample};

/// How a model did on a set of labelled samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Share of samples whose predicted label is the true one (0 for no samples).
    pub accuracy: f64,
    pub samples: usize,
    /// One row per label (the model's labels, then any unknown true labels), in that order.
    pub per_label: Vec<LabelScores>,
    /// The labels of the matrix's rows and columns (the same order as `per_label`).
    pub labels: Vec<String>,
    /// `confusion[true][predicted]` counts, indexed like `labels`.
    pub confusion: Vec<Vec<usize>>,
}

/// Precision, recall and F1 of one label (0 when undefined: nothing predicted or present).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelScores {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Samples whose true label this is.
    pub support: usize,
}

/// Classifies every `(label, text)` sample and compares with its label.
pub fn evaluate(model: &Model, samples: &[Sample]) -> Evaluation {
    let mut labels = model.labels().to_vec();
    for (label, _) in samples {
        if !labels.contains(label) {
            labels.push(label.clone());
        }
    }
    let index = |label: &str| labels.iter().position(|l| l == label).unwrap_or_default();
    let mut confusion = vec![vec![0usize; labels.len()]; labels.len()];
    for (label, text) in samples {
        confusion[index(label)][index(&model.predict(text).label)] += 1;
    }
    let correct: usize = (0..labels.len()).map(|i| confusion[i][i]).sum();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_label = labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let support: usize = confusion[i].iter().sum();
            let predicted: usize = confusion.iter().map(|row| row[i]).sum();
            let (precision, recall) = (ratio(confusion[i][i], predicted), ratio(confusion[i][i], support));
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            LabelScores { label: label.clone(), precision, recall, f1, support }
        })
        .collect();
    Evaluation { accuracy: ratio(correct, samples.len()), samples: samples.len(), per_label, labels, confusion }
}

impl fmt::Display for Evaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let correct: usize = (0..self.labels.len()).map(|i| self.confusion[i][i]).sum();
        writeln!(f, "accuracy {:.3} ({correct}/{} correct)", self.accuracy, self.samples)?;
        let width = self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).max("label".len());
        writeln!(f)?;
        writeln!(f, "{:<width$}  precision  recall     f1  support", "label")?;
        for s in &self.per_label {
            writeln!(
                f,
                "{:<width$}  {:>9.3}  {:>6.3}  {:>5.3}  {:>7}",
                s.label, s.precision, s.recall, s.f1, s.support
            )?;
        }
        writeln!(f)?;
        writeln!(f, "confusion (rows: true label, columns: predicted)")?;
        let column = self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).max(5);
        write!(f, "{:<width$}", "")?;
        for label in &self.labels {
            write!(f, "  {label:>column$}")?;
        }
        writeln!(f)?;
        for (label, row) in self.labels.iter().zip(&self.confusion) {
            write!(f, "{label:<width$}")?;
            for count in row {
                write!(f, "  {count:>column$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TrainOptions, train};

    fn sample(label: &str, text: &str) -> (String, String) {
        (label.to_owned(), text.to_owned())
    }

    #[test]
    fn scores_follow_the_confusion_matrix() {
        let training = [
            sample("cat", "meow purr whiskers"),
            sample("cat", "purr meow kitten"),
            sample("dog", "woof bark puppy"),
            sample("dog", "bark woof fetch"),
        ];
        let options = TrainOptions { min_df: 1, epochs: 40, batch_size: 1, ..TrainOptions::default() };
        let model = train(&training, &options).expect("trains");
        // Three cats (one written like a dog), one dog, and a bird the model has never seen.
        let held_out = [
            sample("cat", "meow meow"),
            sample("cat", "purr kitten"),
            sample("cat", "woof bark"),
            sample("dog", "bark fetch"),
            sample("bird", "meow"),
        ];
        let e = evaluate(&model, &held_out);
        assert_eq!(e.labels, ["cat", "dog", "bird"]);
        assert_eq!(e.confusion, [[2, 1, 0], [0, 1, 0], [1, 0, 0]]);
        assert!((e.accuracy - 0.6).abs() < 1e-9);
        let cat = &e.per_label[0];
        assert!((cat.precision - 2.0 / 3.0).abs() < 1e-9 && (cat.recall - 2.0 / 3.0).abs() < 1e-9);
        let dog = &e.per_label[1];
        assert!((dog.precision - 0.5).abs() < 1e-9 && (dog.recall - 1.0).abs() < 1e-9);
        assert!((dog.f1 - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!((e.per_label[2].f1, e.per_label[2].support), (0.0, 1));

        let table = e.to_string();
        assert!(table.starts_with("accuracy 0.600 (3/5 correct)"), "{table}");
        assert!(table.lines().any(|l| l.split_whitespace().eq(["cat", "0.667", "0.667", "0.667", "3"])), "{table}");
        assert!(table.lines().any(|l| l.split_whitespace().eq(["cat", "2", "1", "0"])), "{table}");
    }
}
