//! Training: TF-IDF features, then multinomial logistic regression (softmax) fitted by
//! mini-batch gradient descent on the cross-entropy with L2 regularisation.
//!
//! Everything is deterministic: the vocabulary is sorted, the batches come from a seeded
//! shuffle, and the arithmetic runs in a fixed order, so the same samples and options give the
//! same weights (the version's timestamp aside).

use std::collections::BTreeSet;

use tracing::debug;

use crate::{Error, Model, Result, Sample, features::Vectorizer, model, rng::SplitMix64};

/// How to train; the defaults suit a few hundred to a few thousand documents.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// A term must appear in at least this many training texts to become a feature.
    pub min_df: u32,
    /// At most this many features (the most frequent terms).
    pub max_features: usize,
    /// Passes over the training set.
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// L2 penalty on the weights (not the biases): larger is smoother, less overfitted.
    pub l2: f64,
    /// Seeds the shuffling of the batches.
    pub seed: u64,
    /// The model's version; `None` makes `YYYYMMDD-HHMMSS-<8 hex of the content hash>` (UTC).
    pub version: Option<String>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            min_df: 2,
            max_features: 50_000,
            epochs: 30,
            batch_size: 16,
            learning_rate: 1.0,
            l2: 1e-4,
            seed: 42,
            version: None,
        }
    }
}

impl TrainOptions {
    fn check(&self) -> Result<()> {
        let fail = |what: &str| Err(Error::InvalidOption(what.to_owned()));
        if self.min_df == 0 {
            return fail("min_df must be at least 1");
        }
        if self.max_features == 0 || self.epochs == 0 || self.batch_size == 0 {
            return fail("max_features, epochs and batch_size must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return fail("learning_rate must be a positive number");
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0 && self.learning_rate * self.l2 < 1.0) {
            return fail("l2 must be 0 or positive, and learning_rate × l2 below 1");
        }
        if let Some(version) = &self.version {
            check_version(version).map_err(Error::InvalidOption)?;
        }
        Ok(())
    }
}

/// A version travels in events and gRPC answers: 1 to 64 printable ASCII characters, no spaces.
pub(crate) fn check_version(version: &str) -> Result<(), String> {
    let printable = version.bytes().all(|b| b.is_ascii_graphic());
    if version.is_empty() || version.len() > 64 || !printable {
        return Err(format!("the version {version:?} must be 1 to 64 printable ASCII characters without spaces"));
    }
    Ok(())
}

/// Trains a model on `(label, text)` samples. Needs at least two labels; labels are taken as
/// they are (case matters).
pub fn train(samples: &[Sample], options: &TrainOptions) -> Result<Model> {
    options.check()?;
    if samples.iter().any(|(label, _)| label.trim().is_empty()) {
        return Err(Error::InvalidOption("every sample needs a non-empty label".to_owned()));
    }
    let labels: Vec<String> = samples.iter().map(|(l, _)| l.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    if labels.len() < 2 {
        return Err(Error::TooFewLabels(labels));
    }
    let vectorizer = Vectorizer::fit(samples.iter().map(|(_, t)| t.as_str()), options.min_df, options.max_features);
    let rows: Vec<_> = samples.iter().map(|(_, text)| vectorizer.transform(text)).collect();
    let targets: Vec<usize> =
        samples.iter().map(|(label, _)| labels.binary_search(label).unwrap_or_default()).collect();

    let (weights, bias) = fit(&rows, &targets, labels.len(), vectorizer.len(), options);
    let version = match &options.version {
        Some(version) => version.clone(),
        None => format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S"),
            model::content_hash(&labels, &vectorizer, &weights, &bias)
        ),
    };
    Ok(Model::new(version, labels, vectorizer, weights, bias))
}

/// Mini-batch gradient descent on the softmax cross-entropy; returns feature-major weights and
/// the biases.
///
/// The L2 shrink applies to every weight every batch; done literally it would cost
/// features × labels per batch, so the weights are kept as `scale × stored` and a shrink only
/// multiplies `scale` (the stored weights are folded back when `scale` gets small).
fn fit(
    rows: &[Vec<(u32, f32)>],
    targets: &[usize],
    classes: usize,
    features: usize,
    options: &TrainOptions,
) -> (Vec<f32>, Vec<f32>) {
    let mut stored = vec![0.0f64; features * classes];
    let mut scale = 1.0f64;
    let mut bias = vec![0.0f64; classes];
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut rng = SplitMix64::new(options.seed);
    let shrink = 1.0 - options.learning_rate * options.l2;
    let mut residuals = vec![0.0f64; classes * options.batch_size];

    for epoch in 0..options.epochs {
        rng.shuffle(&mut order);
        let mut loss = 0.0;
        for batch in order.chunks(options.batch_size) {
            // The gradient of the whole batch is taken at the weights before the batch.
            for (k, &i) in batch.iter().enumerate() {
                let p = &mut residuals[k * classes..(k + 1) * classes];
                p.copy_from_slice(&bias);
                for &(f, value) in &rows[i] {
                    let row = &stored[f as usize * classes..(f as usize + 1) * classes];
                    for (logit, w) in p.iter_mut().zip(row) {
                        *logit += scale * f64::from(value) * w;
                    }
                }
                model::softmax(p);
                loss -= p[targets[i]].max(1e-12).ln();
                p[targets[i]] -= 1.0;
            }
            scale *= shrink;
            let step = options.learning_rate / batch.len() as f64;
            for (k, &i) in batch.iter().enumerate() {
                let residual = &residuals[k * classes..(k + 1) * classes];
                for &(f, value) in &rows[i] {
                    let row = &mut stored[f as usize * classes..(f as usize + 1) * classes];
                    for (w, r) in row.iter_mut().zip(residual) {
                        *w -= step * f64::from(value) * r / scale;
                    }
                }
                for (b, r) in bias.iter_mut().zip(residual) {
                    *b -= step * r;
                }
            }
            if scale < 1e-9 {
                stored.iter_mut().for_each(|w| *w *= scale);
                scale = 1.0;
            }
        }
        debug!(epoch, loss = loss / rows.len().max(1) as f64, "training epoch");
    }
    let weights = stored.iter().map(|w| (w * scale) as f32).collect();
    (weights, bias.iter().map(|b| *b as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<(String, String)> {
        let texts = [
            ("fruit", "apple banana cherry sweet juicy fruit"),
            ("fruit", "banana mango ripe fruit sweet"),
            ("fruit", "cherry apple juicy orchard harvest"),
            ("fruit", "mango orange citrus sweet juicy"),
            ("tools", "hammer nail wrench bolt steel"),
            ("tools", "screwdriver wrench steel toolbox"),
            ("tools", "hammer saw drill workshop bolt"),
            ("tools", "drill screwdriver nail workshop steel"),
        ];
        texts.iter().map(|(l, t)| (l.to_string(), t.to_string())).collect()
    }

    fn options() -> TrainOptions {
        TrainOptions { min_df: 1, epochs: 50, batch_size: 2, ..TrainOptions::default() }
    }

    #[test]
    fn learns_a_tiny_corpus() {
        let model = train(&corpus(), &options()).expect("trains");
        assert_eq!(model.labels(), ["fruit", "tools"]);
        let fruit = model.predict("a sweet juicy mango");
        assert_eq!(fruit.label, "fruit");
        assert!(fruit.confidence > 0.5);
        assert_eq!(model.predict("steel wrench and a hammer").label, "tools");
        let sum: f32 = fruit.scores.iter().map(|(_, p)| p).sum();
        assert!((sum - 1.0).abs() < 1e-5, "probabilities sum to {sum}");
        assert_eq!(fruit.scores[0], (fruit.label.clone(), fruit.confidence));
        assert!(fruit.scores.windows(2).all(|w| w[0].1 >= w[1].1), "scores sorted: {:?}", fruit.scores);
    }

    #[test]
    fn training_is_deterministic_and_the_version_names_the_content() {
        let a = train(&corpus(), &options()).expect("trains");
        let b = train(&corpus(), &options()).expect("trains");
        assert_eq!(a.predict("juicy hammer"), b.predict("juicy hammer"));
        let hash = |m: &Model| m.version().rsplit('-').next().map(str::to_owned).expect("a hash part");
        assert_eq!(hash(&a), hash(&b));
        let version = a.version();
        assert_eq!(version.len(), "20250101-120000-1a2b3c4d".len(), "{version}");
        assert!(version.split('-').nth(2).is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit())), "{version}");
        let other = train(&corpus(), &TrainOptions { seed: 7, ..options() }).expect("trains");
        assert_ne!(hash(&a), hash(&other), "another shuffle gives other weights");
    }

    #[test]
    fn a_given_version_is_used() {
        let model = train(&corpus(), &TrainOptions { version: Some("v7".into()), ..options() }).expect("trains");
        assert_eq!(model.version(), "v7");
    }

    #[test]
    fn bad_input_is_refused() {
        let one_label: Vec<_> = corpus().into_iter().filter(|(l, _)| l == "fruit").collect();
        assert!(matches!(train(&one_label, &options()), Err(Error::TooFewLabels(l)) if l == ["fruit"]));
        assert!(matches!(train(&[], &options()), Err(Error::TooFewLabels(_))));
        let bad = [
            TrainOptions { epochs: 0, ..options() },
            TrainOptions { learning_rate: f64::NAN, ..options() },
            TrainOptions { l2: -1.0, ..options() },
            TrainOptions { min_df: 0, ..options() },
            TrainOptions { version: Some("has space".into()), ..options() },
        ];
        for options in bad {
            assert!(matches!(train(&corpus(), &options), Err(Error::InvalidOption(_))), "{options:?}");
        }
        let mut unlabelled = corpus();
        unlabelled[0].0 = " ".into();
        assert!(matches!(train(&unlabelled, &options()), Err(Error::InvalidOption(_))));
    }

    #[test]
    fn regularisation_shrinks_confidence() {
        let loose = train(&corpus(), &TrainOptions { l2: 0.0, ..options() }).expect("trains");
        let tight = train(&corpus(), &TrainOptions { l2: 0.05, ..options() }).expect("trains");
        let text = "sweet juicy mango";
        assert!(tight.predict(text).confidence < loose.predict(text).confidence);
    }
}
