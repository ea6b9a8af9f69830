//! Every contract's JSON Schema is checked into `schemas/` at the repository root. A change to a
//! contract type that changes its schema fails here until the files are regenerated, so no
//! schema change reaches consumers unreviewed: an incompatible one needs a new version (and an
//! upcaster) instead.
//!
//! Regenerate with: `WEIR_UPDATE_SCHEMAS=1 cargo test -p weir-contracts --test schemas`.

use std::path::PathBuf;

#[test]
fn checked_in_schemas_match_the_contract_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let update = std::env::var_os("WEIR_UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (name, schema) in weir_contracts::schemas() {
        let path = dir.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "these schemas differ from the contract types: {stale:?}\n\
         If the change is compatible (a new optional field), regenerate them with\n\
         `WEIR_UPDATE_SCHEMAS=1 cargo test -p weir-contracts --test schemas` and commit the diff;\n\
         if not, add a new version of the event instead."
    );
}
