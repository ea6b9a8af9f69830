//! The Document Intelligence Platform end to end through `weir up`: real files uploaded over
//! HTTP, OCR'd in worker processes, classified by the trained model, notified — and the gRPC
//! service reached with the `weir classify` command.

mod common;

use std::process::Command;

use common::{Weir, assert_problem, data_dir};
use serde_json::Value;
use weir_samples::{DocClass, generate, render};

fn weir_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdf_a_scan_and_an_image_are_read_labelled_and_notified() {
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, &[]).await;
    let client = weir.client();
    let ada = client.register("ada@example.com").await;

    let invoice = generate(DocClass::Invoice, 11);
    let contract = [generate(DocClass::Contract, 12), generate(DocClass::Contract, 13)];
    let receipt = generate(DocClass::Receipt, 14);
    let uploads = [
        ("march-invoice.pdf", render::text_pdf(&[&invoice], Some("Invoice"), Some("Ada")), "invoice", 1),
        ("contract-scan.pdf", render::scanned_pdf(&[&contract[0], &contract[1]]), "contract", 2),
        ("receipt.png", render::png(&receipt), "receipt", 1),
    ];
    let mut ids = Vec::new();
    for (name, bytes, _, _) in &uploads {
        ids.push(client.upload(&ada, name, bytes.clone()).await);
    }
    for ((name, _, label, pages), id) in uploads.iter().zip(&ids) {
        let view = client.wait_for_document(&ada.token, id).await;
        assert_eq!(view["status"], "CLASSIFIED", "{name}: {view}");
        assert_eq!(view["label"], *label, "{name}: {view}");
        let confidence = view["confidence"].as_f64().unwrap();
        assert!(confidence > 0.3 && confidence <= 1.0, "{name}: {view}");
        assert!(view["model_version"].as_str().is_some_and(|v| !v.is_empty()), "{view}");
        assert_eq!(view["metadata"]["pages"], *pages, "{name}: {view}");
        assert!(!view["excerpt"].as_str().unwrap().is_empty(), "{view}");

        let thumbnail = client.document(&ada.token, id, "/thumbnail").await;
        assert_eq!(thumbnail.status(), 200);
        assert_eq!(thumbnail.headers()["content-type"], "image/jpeg");
        assert!(thumbnail.bytes().await.unwrap().starts_with(&[0xFF, 0xD8, 0xFF]), "{name}: not a JPEG");
        let events: Value = client.document(&ada.token, id, "/events").await.json().await.unwrap();
        assert!(events.to_string().contains("CLASSIFIED"), "{name}: {events}");
    }
    // The text layer comes back exactly; the scan and the image through OCR.
    let text = client.document(&ada.token, &ids[0], "/text").await.text().await.unwrap();
    let first_line = invoice.lines().find(|l| !l.trim().is_empty()).unwrap().trim();
    assert!(text.contains(first_line), "{first_line:?} not in the text layer:\n{text}");
    let ocr = client.document(&ada.token, &ids[2], "/text").await.text().await.unwrap();
    let words = receipt.split_whitespace().filter(|w| w.len() > 4).take(20).collect::<Vec<_>>();
    let found = words.iter().filter(|w| ocr.contains(*w)).count();
    assert!(found * 10 >= words.len() * 8, "OCR found {found} of {words:?} in:\n{ocr}");

    // A PDF cut short passes the upload checks (its first bytes are a PDF's) but cannot be
    // read: FAILED with the reason, and the service goes on.
    let whole = render::text_pdf(&[&invoice], None, None);
    let truncated = client.upload(&ada, "cut.pdf", whole[..whole.len() / 2].to_vec()).await;
    let view = client.wait_for_document(&ada.token, &truncated).await;
    assert_eq!(view["status"], "FAILED", "{view}");
    assert!(view["failure_reason"].as_str().is_some_and(|r| !r.is_empty()), "{view}");

    // One "ready" notification per document, one "could not be read".
    let notifications = client.wait_for_notifications(&ada.token, 4).await;
    let ready: Vec<_> = notifications.iter().filter(|n| n["kind"] == "document_classified").collect();
    assert_eq!(ready.len(), 3, "{notifications:?}");
    assert_eq!(notifications.iter().filter(|n| n["kind"] == "document_failed").count(), 1, "{notifications:?}");
    assert!(ready.iter().any(|n| n["body"].as_str().unwrap().contains("classified as invoice")), "{ready:?}");

    // Another user reaches none of it.
    let bob = client.register("bob@example.com").await;
    for part in ["", "/thumbnail", "/text", "/events"] {
        assert_problem(client.document(&bob.token, &ids[0], part).await, 404).await;
    }
    let bobs = client.get_json(&bob.token, "/v1/documents").await;
    assert_eq!(bobs["items"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_and_nothing_is_kept() {
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, &[]).await;
    let client = weir.client();
    let ada = client.register("ada@example.com").await;
    let png = render::png("hello");
    let eicar = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*".to_vec();
    let cases: [(&str, Vec<u8>, u16); 5] = [
        ("empty.pdf", Vec::new(), 422),
        ("named.pdf", png.clone(), 422),
        ("notes.txt", b"just some text".to_vec(), 415),
        ("eicar.pdf", [b"%PDF-1.4\n".to_vec(), eicar].concat(), 422),
        ("../../etc/passwd.png", png, 422),
    ];
    for (name, bytes, status) in cases {
        let problem = assert_problem(client.upload_raw(&ada.token, name, bytes).await, status).await;
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{name}: {problem}");
    }
    let list: Value = client
        .http
        .get(format!("{}/v1/documents", weir.url))
        .bearer_auth(&ada.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], serde_json::json!([]), "a refused upload was kept");
    let blobs = data.join("blobs");
    let kept = walk(&blobs);
    assert!(kept.is_empty(), "refused uploads left blobs: {kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_service_answers_weir_classify_and_a_new_model_is_used_without_a_restart() {
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, &[]).await;
    let classify = |args: &[&str]| {
        let out = weir_command()
            .arg("classify")
            .args(["--url", &weir.grpc, "--data-dir"])
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "weir classify failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let invoice = generate(DocClass::Invoice, 99);
    let answer = classify(&[&invoice]);
    assert!(answer.contains("invoice"), "{answer}");

    // Retrain into the running service's model file: later answers carry the new version.
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../corpus");
    let model = data.join("classifier/model.json");
    let trained = weir_command()
        .args(["classifier", "train", corpus, "--version", "retrained-in-test", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        let answer = classify(&[&invoice]);
        if answer.contains("retrained-in-test") {
            assert!(answer.contains("invoice"), "{answer}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new model was not picked up: {answer}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Without the service token the call is refused.
    let out =
        weir_command().arg("classify").args(["--url", &weir.grpc, "--token", "wrong", &invoice]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).to_lowercase().contains("token"), "{out:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
