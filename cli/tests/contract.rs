//! The HTTP API against its own OpenAPI document. Schemathesis (a property-based API tester,
//! from PyPI) reads `weir up`'s `/openapi.json`, generates requests from it — valid and invalid,
//! as a user and without the token — and checks every answer: never a 5xx, only the status codes
//! and media types the document lists, bodies and headers of the documented shape, invalid input
//! refused, resources created by one operation usable by the next. An answer the document does
//! not describe is a failure here, so the document cannot drift from the code.

mod common;

use std::process::Command;

use common::{Weir, data_dir};

/// The checks left out, because the document cannot say what they expect:
/// - `positive_data_acceptance` takes every schema-valid request for one that must succeed, but
///   some are refused by what only the server knows (a product id that is no product, a file
///   whose bytes are no PDF, PNG or JPEG) — with a documented 4xx problem;
/// - `ensure_resource_availability` expects a document's text and thumbnail as soon as the
///   upload is accepted, but they exist once processing has finished (404 until then, as
///   documented).
const LEFT_OUT: &str = "positive_data_acceptance,ensure_resource_availability";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_its_openapi_document_says() {
    let probe = Command::new("python3").args(["-c", "import schemathesis"]).output();
    assert!(
        probe.is_ok_and(|p| p.status.success()),
        "this test needs Schemathesis, from PyPI: run `python3 -m pip install schemathesis` (python3 must be on \
         PATH), then rerun"
    );
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, &[]).await;
    let client = weir.client();
    let user = client.register("contract@example.com").await;

    let run = tokio::process::Command::new("python3")
        // Its example database and reports go there, not into the checkout.
        .current_dir(data.parent().unwrap())
        .args(["-m", "schemathesis.cli", "--no-color", "run", &format!("{}/openapi.json", client.url)])
        .args(["--header", &format!("Authorization: Bearer {}", user.token)])
        .args(["--checks", "all", "--exclude-checks", LEFT_OUT])
        // A fixed seed and one worker: the same requests on every run.
        .args(["--max-examples", "50", "--seed", "1", "--workers", "1"])
        .output()
        .await
        .expect("run schemathesis");
    assert!(
        run.status.success(),
        "the API answered as its OpenAPI document does not say:\n{}{}\n--- weir up's log:\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        weir.log_tail()
    );
}
