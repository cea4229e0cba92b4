//! The Helm chart renders the CRDs from its own copy, charts/maestro/files/crds/ (Helm
//! reads no file outside the chart): that copy must equal crds/. A change to the API
//! without `make chart` fails here.

use std::{collections::BTreeMap, path::Path};

fn yaml_files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            (name, text)
        })
        .collect()
}

#[test]
fn chart_crds_match_the_committed_crds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let want = yaml_files(&root.join("crds"));
    let have = yaml_files(&root.join("charts/maestro/files/crds"));
    assert!(!want.is_empty(), "crds/ holds no CRD");
    let mut stale: Vec<&str> = want
        .keys()
        .chain(have.keys())
        .filter(|name| want.get(*name) != have.get(*name))
        .map(String::as_str)
        .collect();
    stale.dedup();
    assert!(
        stale.is_empty(),
        "charts/maestro/files/crds/ differs from crds/ in {stale:?}: run `make chart`"
    );
}
