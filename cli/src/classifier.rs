//! `weir classifier`: train, evaluate and generate the corpus of the document classifier.
//! A model file written where a running `weir up` reads it (`<data-dir>/classifier/model.json`)
//! is picked up within a second, without a restart.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use weir_classifier::{Model, TrainOptions, evaluate, load_labelled_dir, split, train};

#[derive(Subcommand)]
pub enum Command {
    /// Train a model on a labelled directory (`<dir>/<label>/*.txt`), report its accuracy on a
    /// held-out part and write it. Example: `weir classifier train corpus`.
    Train(TrainArgs),
    /// Measure a model on a labelled directory.
    Eval {
        /// The labelled directory: one folder of `.txt` files per label.
        dir: PathBuf,
        /// The model file.
        #[arg(long, default_value = "weir-data/classifier/model.json")]
        model: PathBuf,
    },
    /// Write the generated training corpus (realistic documents of every class) as a labelled
    /// directory; the repository ships the same corpus in `corpus/`.
    Corpus {
        /// Where to write `<label>/<NNNN>.txt`.
        dir: PathBuf,
        /// Documents per class.
        #[arg(long, default_value_t = CORPUS_PER_CLASS)]
        per_class: usize,
        #[arg(long, default_value_t = CORPUS_SEED)]
        seed: u64,
    },
}

#[derive(Args)]
pub struct TrainArgs {
    /// The labelled directory: one folder of `.txt` files per label.
    dir: PathBuf,
    /// Where to write the model (a running `weir up` with the default data directory reads
    /// this one).
    #[arg(long, default_value = "weir-data/classifier/model.json")]
    model: PathBuf,
    /// Share of each label held out to measure the model (it is not trained on).
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    /// The model's version, shown in every result (default: the time and a content hash).
    #[arg(long)]
    version: Option<String>,
}

/// The shipped corpus: `weir classifier corpus corpus` writes it again.
pub const CORPUS_SEED: u64 = 2026;
pub const CORPUS_PER_CLASS: usize = 100;

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train(args) => {
            let samples = load_labelled_dir(&args.dir)?;
            anyhow::ensure!(
                (0.0..1.0).contains(&args.holdout),
                "--holdout {} must be at least 0 and below 1",
                args.holdout
            );
            let (training, held_out) = split(&samples, args.holdout, 7);
            let model = train(&training, &TrainOptions { version: args.version, ..TrainOptions::default() })?;
            println!(
                "trained model {} on {} documents ({} labels, {} features)",
                model.version(),
                training.len(),
                model.labels().len(),
                model.vocabulary_size()
            );
            if !held_out.is_empty() {
                println!("\nheld out: {} documents\n{}", held_out.len(), evaluate(&model, &held_out));
            }
            save(&model, &args.model)?;
            println!("wrote {}", args.model.display());
        }
        Command::Eval { dir, model } => {
            let model = Model::load(&model)?;
            let samples = load_labelled_dir(&dir)?;
            println!("model {} on {} documents\n{}", model.version(), samples.len(), evaluate(&model, &samples));
        }
        Command::Corpus { dir, per_class, seed } => {
            weir_samples::write_corpus(&dir, seed, per_class)
                .with_context(|| format!("cannot write the corpus to {}", dir.display()))?;
            println!("wrote {} documents of each class to {}", per_class, dir.display());
        }
    }
    Ok(())
}

fn save(model: &Model, path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    Ok(model.save(path)?)
}

/// The embedded default's first model: when `path` holds none, trains one on the generated
/// corpus (the same documents as `corpus/`) and writes it there.
pub fn ensure_model(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let samples: Vec<(String, String)> = weir_samples::corpus(CORPUS_SEED, CORPUS_PER_CLASS)
        .into_iter()
        .map(|s| (s.class.as_str().to_owned(), s.text))
        .collect();
    let model = train(&samples, &TrainOptions::default())?;
    save(&model, path)?;
    tracing::info!(model = %path.display(), version = model.version(), "trained the first classifier model");
    Ok(())
}
