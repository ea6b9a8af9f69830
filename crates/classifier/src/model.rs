//! A trained model: predicting, and its file format.
//!
//! The file is JSON (`format`, `format_version`, then the vocabulary, IDF weights and the
//! logistic regression's weights as `f32`). It is written to a temporary file in the same
//! directory and renamed over the target, so a reader sees the old file or the new one, never
//! half of one. A file of another `format_version` is refused with [`Error::Incompatible`]
//! rather than misread.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result, features::Vectorizer};

/// The `format` field every model file carries.
const FORMAT: &str = "weir-classifier";
/// The file layout this build reads and writes; bump it on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

/// What the model thinks of one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The most probable label.
    pub label: String,
    /// The softmax probability of `label`, in 0..=1.
    pub confidence: f32,
    /// Every label with its probability, most probable first (ties by label).
    pub scores: Vec<(String, f32)>,
}

/// A trained text classifier; immutable, cheap to share behind an `Arc`.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    version: String,
    labels: Vec<String>,
    vectorizer: Vectorizer,
    /// Feature-major: the weight of feature `f` for label `c` is at `f * labels.len() + c`, so
    /// a sparse text touches contiguous memory.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl Model {
    /// Assembles a model; `weights` is feature-major (see the field) and sizes agree.
    pub(crate) fn new(
        version: String,
        labels: Vec<String>,
        vectorizer: Vectorizer,
        weights: Vec<f32>,
        bias: Vec<f32>,
    ) -> Self {
        debug_assert_eq!(weights.len(), vectorizer.len() * labels.len());
        debug_assert_eq!(bias.len(), labels.len());
        Self { version, labels, vectorizer, weights, bias }
    }

    /// The version set at training, e.g. `20250101-120000-1a2b3c4d`; it names the model in
    /// every classification it makes.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The labels it chooses from, sorted.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// How many unigrams and bigrams it knows.
    pub fn vocabulary_size(&self) -> usize {
        self.vectorizer.len()
    }

    /// Classifies `text`. A text with no known word gets the labels' prior (the biases).
    pub fn predict(&self, text: &str) -> Prediction {
        let features = self.vectorizer.transform(text);
        let classes = self.labels.len();
        let mut logits: Vec<f64> = self.bias.iter().map(|b| f64::from(*b)).collect();
        for (f, value) in features {
            let row = &self.weights[f as usize * classes..(f as usize + 1) * classes];
            for (logit, w) in logits.iter_mut().zip(row) {
                *logit += f64::from(value) * f64::from(*w);
            }
        }
        softmax(&mut logits);
        let mut scores: Vec<(String, f32)> =
            self.labels.iter().zip(&logits).map(|(label, p)| (label.clone(), *p as f32)).collect();
        scores.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let (label, confidence) = scores[0].clone();
        Prediction { label, confidence, scores }
    }

    /// Writes the model to `path` atomically (a temporary file in the same directory, synced,
    /// then renamed over `path`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let write_error = |source| Error::Write { path: path.to_owned(), source };
        let bytes = serde_json::to_vec(&self.to_file()).map_err(|e| write_error(io::Error::other(e)))?;
        let temporary = temporary_path(path);
        let written = (|| {
            let mut file = fs::File::create(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&temporary, path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temporary);
            return Err(write_error(e));
        }
        // Make the rename itself durable; not every platform can open a directory, so this is best effort.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir) = fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Reads a model written by [`save`](Self::save). A missing file is [`Error::ModelMissing`],
    /// a file that is not a model (or is damaged) [`Error::Corrupt`], a model of another format
    /// version [`Error::Incompatible`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => Error::ModelMissing { path: path.to_owned() },
            _ => Error::Read { path: path.to_owned(), source },
        })?;
        Self::from_bytes(&bytes).map_err(|problem| match problem {
            Problem::Corrupt(reason) => Error::Corrupt { path: path.to_owned(), reason },
            Problem::Incompatible(found) => {
                Error::Incompatible { path: path.to_owned(), found, supported: FORMAT_VERSION }
            }
        })
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, Problem> {
        let header: Header = serde_json::from_slice(bytes).map_err(|e| Problem::Corrupt(e.to_string()))?;
        if header.format != FORMAT {
            return Err(Problem::Corrupt(format!("its format is {:?}, not {FORMAT:?}", header.format)));
        }
        if header.format_version != FORMAT_VERSION {
            return Err(Problem::Incompatible(header.format_version));
        }
        let file: ModelFile = serde_json::from_slice(bytes).map_err(|e| Problem::Corrupt(e.to_string()))?;
        file.into_model().map_err(Problem::Corrupt)
    }

    fn to_file(&self) -> ModelFile {
        let classes = self.labels.len();
        let weights = (0..classes).map(|c| self.weights.iter().skip(c).step_by(classes).copied().collect()).collect();
        ModelFile {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            version: self.version.clone(),
            labels: self.labels.clone(),
            terms: self.vectorizer.terms().to_vec(),
            idf: self.vectorizer.idf().to_vec(),
            weights,
            bias: self.bias.clone(),
        }
    }
}

/// The first 8 hex digits of a SHA-256 over everything that decides predictions: two models
/// with the same hash predict the same.
pub(crate) fn content_hash(labels: &[String], vectorizer: &Vectorizer, weights: &[f32], bias: &[f32]) -> String {
    let mut hash = Sha256::new();
    for text in labels.iter().chain(vectorizer.terms()) {
        hash.update((text.len() as u64).to_le_bytes());
        hash.update(text.as_bytes());
    }
    for number in vectorizer.idf().iter().chain(weights).chain(bias) {
        hash.update(number.to_le_bytes());
    }
    hex::encode(&hash.finalize()[..4])
}

/// Turns logits into probabilities in place (shifted by the maximum, so it never overflows).
pub(crate) fn softmax(logits: &mut [f64]) {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for l in logits.iter_mut() {
        *l = (*l - max).exp();
        sum += *l;
    }
    for l in logits.iter_mut() {
        *l /= sum;
    }
}

/// A unique name next to `path` for the write-then-rename.
fn temporary_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".to_owned());
    let unique = format!(".{name}.tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    path.with_file_name(unique)
}

enum Problem {
    Corrupt(String),
    Incompatible(u32),
}

/// Read first, so that a file of another version is recognised even if its layout changed.
#[derive(Deserialize)]
struct Header {
    format: String,
    format_version: u32,
}

#[derive(Serialize, Deserialize)]
struct ModelFile {
    format: String,
    format_version: u32,
    version: String,
    labels: Vec<String>,
    /// The vocabulary, by feature index.
    terms: Vec<String>,
    idf: Vec<f32>,
    /// One row per label, one weight per term.
    weights: Vec<Vec<f32>>,
    bias: Vec<f32>,
}

impl ModelFile {
    fn into_model(self) -> Result<Model, String> {
        let (classes, features) = (self.labels.len(), self.terms.len());
        crate::train::check_version(&self.version)?;
        if classes < 2 {
            return Err(format!("it has {classes} label(s); a model needs at least 2"));
        }
        if unique(&self.labels) != classes || unique(&self.terms) != features {
            return Err("its labels or terms repeat".to_owned());
        }
        if self.idf.len() != features || self.bias.len() != classes || self.weights.len() != classes {
            return Err("its vocabulary, IDF, weights and biases disagree in size".to_owned());
        }
        if let Some(row) = self.weights.iter().position(|row| row.len() != features) {
            return Err(format!("the weights of label {:?} have the wrong length", self.labels[row]));
        }
        let numbers = self.idf.iter().chain(&self.bias).chain(self.weights.iter().flatten());
        if numbers.into_iter().any(|n| !n.is_finite()) {
            return Err("it holds a number that is not finite".to_owned());
        }
        let mut weights = vec![0.0; features * classes];
        for (c, row) in self.weights.iter().enumerate() {
            for (f, w) in row.iter().enumerate() {
                weights[f * classes + c] = *w;
            }
        }
        let vectorizer = Vectorizer::from_parts(self.terms, self.idf);
        Ok(Model::new(self.version, self.labels, vectorizer, weights, self.bias))
    }
}

fn unique(items: &[String]) -> usize {
    items.iter().collect::<std::collections::HashSet<_>>().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_a_distribution_even_for_huge_logits() {
        let mut logits = [1000.0, 1000.0, -1000.0];
        softmax(&mut logits);
        assert!((logits[0] - 0.5).abs() < 1e-12 && (logits[1] - 0.5).abs() < 1e-12 && logits[2] < 1e-12);
    }

    #[test]
    fn temporary_files_are_unique_and_beside_the_target() {
        let a = temporary_path(Path::new("/models/current.json"));
        let b = temporary_path(Path::new("/models/current.json"));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/models")));
    }
}
