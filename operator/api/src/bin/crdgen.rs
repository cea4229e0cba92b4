//! Writes Maestro's CRDs, generated from the Rust types, to `crds/` (or the folder given
//! as the first argument). CI fails when the committed files differ from this output.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| "crds".into());
    std::fs::create_dir_all(&dir)?;
    for (name, crd) in maestro_api::crds() {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, maestro_api::crd_yaml(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
