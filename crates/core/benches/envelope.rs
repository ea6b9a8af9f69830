//! What every delivery costs before any database work: an event leaving through the outbox is
//! signed and stored as JSON (`to_json`), the relay turns it into a binary-mode message
//! (`to_message`), and each consumer decodes the message and checks its signature
//! (`from_message` + `verify`). `weir up` does the consumer side eight times per order.
//!
//! `cargo bench -p weir-core --bench envelope`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use weir_core::{event::Event, signing::Keyring};

/// An `order_created` as the orders service writes it: two priced lines, a total, a trace.
fn order_created() -> Event {
    let data = json!({
        "order_id": "01938f6e-7c1a-7d2b-9a51-3b8f2c4d5e6f",
        "user_id": "01938f6e-1111-7d2b-9a51-3b8f2c4d5e6f",
        "items": [
            {"product_id": "5f0c3a9e-2b1d-5c7e-8f9a-0b1c2d3e4f50", "quantity": 2,
             "unit_price": {"amount": 1250, "currency": "EUR"}},
            {"product_id": "6a1d4b0f-3c2e-5d8f-9a0b-1c2d3e4f5061", "quantity": 1,
             "unit_price": {"amount": 899, "currency": "EUR"}},
        ],
        "total": {"amount": 3399, "currency": "EUR"},
    });
    let mut event = Event::new("weir/orders", "order_created", "01938f6e-7c1a-7d2b-9a51-3b8f2c4d5e6f", &data)
        .expect("plain JSON serialises");
    event.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    event
}

fn envelope(c: &mut Criterion) {
    let keyring = Keyring::generate("bench");
    let event = order_created();
    let mut signed = event.clone();
    keyring.sign(&mut signed);
    let stored = signed.to_json();
    let message = signed.to_message();

    let mut group = c.benchmark_group("envelope");
    group.bench_function("sign and store (outbox row)", |b| {
        b.iter(|| {
            let mut event = black_box(&event).clone();
            keyring.sign(&mut event);
            event.to_json()
        })
    });
    group.bench_function("stored to message (relay)", |b| {
        b.iter(|| Event::from_json(black_box(&stored)).expect("decodes").to_message())
    });
    group.bench_function("decode and verify (each delivery)", |b| {
        b.iter(|| {
            let event = Event::from_message(black_box(&message)).expect("decodes");
            keyring.verify(&event).expect("verifies");
            event
        })
    });
    group.finish();
}

criterion_group!(benches, envelope);
criterion_main!(benches);
