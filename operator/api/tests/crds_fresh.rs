//! crds/ must hold exactly what `crdgen` generates from the Rust types: a change to the
//! API without `cargo run --bin crdgen` fails here.

use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let mut stale = Vec::new();
    for (name, crd) in maestro_api::crds() {
        let path = dir.join(format!("{name}.yaml"));
        let want = maestro_api::crd_yaml(&crd).expect("CRD serializes");
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale CRDs {stale:?}: run `cargo run --bin crdgen` and commit crds/"
    );
}
