//! `maestro-agent install DIR`: the step pod's init container copies the agent into a shared
//! volume, so the main container can run it from any image.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The file name the agent is installed as; the operator runs `<dir>/maestro-agent`.
pub const INSTALLED_FILE_NAME: &str = "maestro-agent";

/// Copies the running executable to `<dir>/maestro-agent`.
pub fn install_current_exe(dir: &Path) -> anyhow::Result<PathBuf> {
    let source = std::env::current_exe().context("cannot find the agent's own executable")?;
    install_executable(&source, dir)
}

/// Copies `source` to `<dir>/maestro-agent` with mode 0755. The copy goes to a temporary file
/// renamed into place, so a restarted init container never leaves a half-written agent that
/// the main container would then fail to run.
pub fn install_executable(source: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let destination = dir.join(INSTALLED_FILE_NAME);
    let temporary = dir.join(format!(".{INSTALLED_FILE_NAME}.{}.tmp", std::process::id()));
    let copied = copy_executable(source, &temporary).and_then(|()| {
        fs::rename(&temporary, &destination).with_context(|| {
            format!(
                "cannot rename {} to {}",
                temporary.display(),
                destination.display()
            )
        })
    });
    if copied.is_err() {
        // Best effort: the error being reported is the copy's, not this cleanup's.
        let _ = fs::remove_file(&temporary);
    }
    copied.map(|()| destination)
}

fn copy_executable(source: &Path, destination: &Path) -> anyhow::Result<()> {
    fs::copy(source, destination).with_context(|| {
        format!(
            "cannot copy {} to {}",
            source.display(),
            destination.display()
        )
    })?;
    fs::set_permissions(destination, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", destination.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_the_executable_with_mode_0755() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let source = dir.path().join("source");
        fs::write(&source, b"agent bytes")?;
        fs::set_permissions(&source, fs::Permissions::from_mode(0o600))?;
        let install_dir = dir.path().join("maestro").join("bin");

        let installed = install_executable(&source, &install_dir)?;

        assert_eq!(installed, install_dir.join("maestro-agent"));
        assert_eq!(fs::read(&installed)?, b"agent bytes");
        assert_eq!(
            fs::metadata(&installed)?.permissions().mode() & 0o7777,
            0o755
        );
        // Only the installed file is left: no temporary file.
        assert_eq!(fs::read_dir(&install_dir)?.count(), 1);
        Ok(())
    }

    #[test]
    fn replaces_an_existing_installation() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let source = dir.path().join("source");
        fs::write(&source, b"new")?;
        fs::write(dir.path().join("maestro-agent"), b"old")?;

        install_executable(&source, dir.path())?;

        assert_eq!(fs::read(dir.path().join("maestro-agent"))?, b"new");
        Ok(())
    }

    #[test]
    fn missing_source_is_an_error_and_leaves_nothing_behind() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let install_dir = dir.path().join("bin");
        let error = install_executable(&dir.path().join("absent"), &install_dir)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.starts_with("cannot copy "), "{error}");
        assert_eq!(fs::read_dir(&install_dir)?.count(), 0);
        Ok(())
    }
}
