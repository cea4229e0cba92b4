//! Builds the web app (web/) into OUT_DIR, so `include_str!` embeds it in the binary and a
//! clean clone's `cargo build` needs nothing but node and npm. The sources are copied into
//! OUT_DIR and built there: the build writes nothing into the source tree, and npm's
//! download cache (~/.npm) makes a rebuild cheap.

use std::path::{Path, PathBuf};
use std::process::Command;

const WEB_FILES: &[&str] = &[
    "package.json",
    "package-lock.json",
    "tsconfig.json",
    "build.mjs",
];

fn main() {
    if let Err(error) = build() {
        // A build script's panic is how cargo reports its failure.
        panic!("building the web UI (operator/ui/web): {error}");
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let web = manifest_dir.join("web");
    let out = PathBuf::from(env("OUT_DIR")?).join("web");
    println!("cargo::rerun-if-changed=web/src");
    for file in WEB_FILES {
        println!("cargo::rerun-if-changed=web/{file}");
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    for file in WEB_FILES {
        copy(&web.join(file), &out.join(file))?;
    }
    let src = out.join("src");
    if src.exists() {
        std::fs::remove_dir_all(&src).map_err(|e| format!("clearing {}: {e}", src.display()))?;
    }
    copy_dir(&web.join("src"), &src)?;

    // npm ci only when the lock file differs from the one last installed.
    let lock = read(&out.join("package-lock.json"))?;
    let stamp = out.join("node_modules/.installed-lock.json");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(lock.as_str()) {
        // --ignore-scripts: no package needs one (esbuild finds its platform binary as an
        // optional dependency), and none should run at build time.
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
                .current_dir(&out),
            "npm ci",
        )?;
        std::fs::write(&stamp, &lock).map_err(|e| format!("writing {}: {e}", stamp.display()))?;
    }
    run(
        Command::new("node")
            .args(["node_modules/typescript/bin/tsc", "--noEmit", "-p", "."])
            .current_dir(&out),
        "tsc (type check)",
    )?;
    run(
        Command::new("node").arg("build.mjs").current_dir(&out),
        "esbuild",
    )
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", from.display()))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            copy(&path, &target)?;
        }
    }
    Ok(())
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command.output().map_err(|e| {
        format!("cannot start {what} ({e}): building the web UI needs node (18 or later) and npm")
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}
