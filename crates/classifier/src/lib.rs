//! Weir's document classifier: a real, trained text classifier in pure Rust. Texts become
//! TF-IDF vectors over word unigrams and bigrams ([`tokenize`] folds case and accents and
//! buckets numbers); a multinomial logistic regression trained by mini-batch gradient descent
//! turns them into label probabilities.
//!
//! - [`train`] fits a [`Model`] to `(label, text)` samples ([`load_labelled_dir`] reads them
//!   from `<dir>/<label>/*.txt`); [`split`] holds out a stratified test set and [`evaluate`]
//!   measures the model on it.
//! - A [`Model`] predicts, carries a version, and is saved to and loaded from a versioned JSON
//!   file written atomically.
//! - [`SharedModel`] is a service's current model, swapped for a new one when its file changes,
//!   without a restart.
//!
//! It is not a general machine-learning library: one feature pipeline, one model family.

mod data;
mod evaluate;
mod features;
mod model;
mod rng;
mod shared;
mod tokenize;
mod train;

use std::{io, path::PathBuf};

pub use data::{load_labelled_dir, split};
pub use evaluate::{Evaluation, LabelScores, evaluate};
pub use model::{FORMAT_VERSION, Model, Prediction};
pub use shared::{POLL_INTERVAL, SharedModel};
pub use tokenize::tokenize;
pub use train::{TrainOptions, train};

/// A labelled text: `(label, text)`.
pub type Sample = (String, String);

/// What can go wrong training, reading or writing a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("there is no model file at {}: train one first (`weir classifier train`)", path.display())]
    ModelMissing { path: PathBuf },
    #[error("{} is not a usable model file ({reason}): retrain the model or restore a good file", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{} is a model file of format version {found}, but this build reads version {supported}: retrain the model with this build",
        path.display()
    )]
    Incompatible { path: PathBuf, found: u32, supported: u32 },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{} is not UTF-8 text", path.display())]
    NotText { path: PathBuf },
    #[error("{} holds no labelled texts: put them in <dir>/<label>/*.txt", path.display())]
    EmptyDir { path: PathBuf },
    #[error("training needs texts of at least two labels, but found {0:?}")]
    TooFewLabels(Vec<String>),
    #[error("invalid training input: {0}")]
    InvalidOption(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
