//! The model file and hot swapping, on a tiny inline corpus (independent of `weir-samples`).

use std::{fs, path::Path, time::Duration};

use tokio_util::sync::CancellationToken;
use weir_classifier::{Error, FORMAT_VERSION, Model, SharedModel, TrainOptions, train};

fn corpus() -> Vec<(String, String)> {
    let texts = [
        ("invoice", "invoice number due date amount payable bank transfer"),
        ("invoice", "invoice total amount due payment terms net thirty"),
        ("invoice", "please pay this invoice by the due date amount due"),
        ("letter", "dear madam thank you for your letter kind regards"),
        ("letter", "dear sir I write to you with kind regards yours sincerely"),
        ("letter", "dear friend thank you yours sincerely"),
    ];
    texts.iter().map(|(l, t)| (l.to_string(), t.to_string())).collect()
}

fn model(version: &str) -> Model {
    let options =
        TrainOptions { min_df: 1, epochs: 40, batch_size: 2, version: Some(version.into()), ..TrainOptions::default() };
    train(&corpus(), &options).expect("the tiny corpus trains")
}

#[test]
fn a_saved_model_loads_and_predicts_identically() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.json");
    let trained = model("v1");
    trained.save(&path).expect("saves");
    let loaded = Model::load(&path).expect("loads");
    assert_eq!(loaded, trained);
    assert_eq!(loaded.version(), "v1");
    for text in ["amount due on this invoice", "dear madam, kind regards", "", "unrelated words entirely"] {
        assert_eq!(loaded.predict(text), trained.predict(text), "{text:?}");
    }
    assert_eq!(trained.predict("amount due on this invoice").label, "invoice");
    // Only the model is left in the directory: the temporary file was renamed.
    let names: Vec<_> = fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, ["model.json"]);
}

#[test]
fn missing_corrupt_and_incompatible_files_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.json");
    let missing = Model::load(&path).expect_err("no file");
    assert!(matches!(missing, Error::ModelMissing { .. }), "{missing}");
    assert!(missing.to_string().contains("train one first"), "{missing}");

    model("v1").save(&path).expect("saves");
    let good = fs::read_to_string(&path).expect("read");

    fs::write(&path, &good[..good.len() / 2]).expect("truncate");
    let truncated = Model::load(&path).expect_err("half a file");
    assert!(matches!(truncated, Error::Corrupt { .. }), "{truncated}");

    fs::write(&path, b"\x89PNG\r\n\x1a\n").expect("write");
    assert!(matches!(Model::load(&path), Err(Error::Corrupt { .. })));

    fs::write(&path, good.replace("\"format\":\"weir-classifier\"", "\"format\":\"other\"")).expect("write");
    assert!(matches!(Model::load(&path), Err(Error::Corrupt { reason, .. }) if reason.contains("other")));

    let future = FORMAT_VERSION + 1;
    let newer = good.replace(&format!("\"format_version\":{FORMAT_VERSION}"), &format!("\"format_version\":{future}"));
    fs::write(&path, newer).expect("write");
    let incompatible = Model::load(&path).expect_err("another format version");
    assert!(matches!(incompatible, Error::Incompatible { found, .. } if found == future), "{incompatible}");

    // Well-formed JSON whose parts disagree in size.
    let mut value: serde_json::Value = serde_json::from_str(&good).expect("json");
    value["bias"].as_array_mut().expect("bias array").pop();
    fs::write(&path, value.to_string()).expect("write");
    assert!(matches!(Model::load(&path), Err(Error::Corrupt { reason, .. }) if reason.contains("size")));
}

/// Replaces the file the way a retraining does: a complete new file renamed over the old one.
fn replace(path: &Path, model: &Model) {
    model.save(path).expect("saves");
}

#[test]
fn a_replaced_file_is_swapped_in_and_a_bad_one_is_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.json");
    replace(&path, &model("v1"));
    let shared = SharedModel::load(&path).expect("loads");
    let version = |s: &SharedModel| s.current().map(|m| m.version().to_owned());
    assert_eq!(version(&shared), Some("v1".into()));
    assert!(!shared.reload_if_changed().expect("unchanged"), "an unchanged file is not reloaded");

    let in_flight = shared.current().expect("a model");
    replace(&path, &model("v2"));
    assert!(shared.reload_if_changed().expect("reloads"));
    assert_eq!(version(&shared), Some("v2".into()));
    assert_eq!(in_flight.version(), "v1", "a request keeps the model it started with");

    fs::write(&path, b"{ not a model").expect("write");
    assert!(matches!(shared.reload_if_changed(), Err(Error::Corrupt { .. })));
    assert_eq!(version(&shared), Some("v2".into()), "the model in use is kept");
    assert!(!shared.reload_if_changed().expect("reported once"), "a bad file is reported once");

    fs::remove_file(&path).expect("remove");
    assert!(matches!(shared.reload_if_changed(), Err(Error::ModelMissing { .. })));
    assert_eq!(version(&shared), Some("v2".into()));

    replace(&path, &model("v3"));
    assert!(shared.reload_if_changed().expect("reloads"));
    assert_eq!(version(&shared), Some("v3".into()));
}

#[test]
fn a_shared_model_can_wait_for_its_first_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.json");
    assert!(matches!(SharedModel::load(&path), Err(Error::ModelMissing { .. })));
    fs::write(&path, b"garbage").expect("write");
    assert!(matches!(SharedModel::load(&path), Err(Error::Corrupt { .. })));

    let shared = SharedModel::open(&path);
    assert!(shared.current().is_none());
    replace(&path, &model("v1"));
    assert!(shared.reload_if_changed().expect("loads"));
    assert_eq!(shared.current().map(|m| m.version().to_owned()), Some("v1".into()));
}

#[tokio::test]
async fn the_watcher_swaps_models_without_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.json");
    replace(&path, &model("v1"));
    let shared = SharedModel::load(&path).expect("loads");
    let stop = CancellationToken::new();
    let watcher = tokio::spawn({
        let (shared, stop) = (shared.clone(), stop.clone());
        async move { shared.watch_every(Duration::from_millis(20), stop).await }
    });

    let wait_for = |wanted: &'static str| {
        let shared = shared.clone();
        async move {
            for _ in 0..250 {
                if shared.current().is_some_and(|m| m.version() == wanted) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!(
                "the watcher did not swap in {wanted}; in use: {:?}",
                shared.current().map(|m| m.version().to_owned())
            );
        }
    };
    replace(&path, &model("v2"));
    wait_for("v2").await;
    fs::write(&path, b"corrupt").expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(shared.current().map(|m| m.version().to_owned()), Some("v2".into()), "a corrupt file is not used");
    replace(&path, &model("v3"));
    wait_for("v3").await;

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), watcher).await.expect("the watcher stops").expect("no panic");
}
