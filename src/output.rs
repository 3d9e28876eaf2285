//! Atomic output: every file pare writes goes to a temporary file in the destination directory
//! and is renamed into place only once it is complete, so a crash, a full disk or a failed check
//! never leaves a half-written model where a later pipeline step would pick it up.
//!
//! Layer: core (imports its own layer and the ones below; see ARCHITECTURE.md).

use crate::error::{Error, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Refuses destinations that would clobber an input (same path, symlink or hard link to it)
/// or an existing file without `force`.
pub fn check_destination(dest: &Path, inputs: &[&Path], force: bool) -> Result<()> {
    if let Ok(meta) = fs::metadata(dest) {
        for input in inputs {
            if let Ok(imeta) = fs::metadata(input) {
                if same_file(&meta, &imeta) {
                    return Err(Error::Usage(format!(
                        "refusing to write {}: it is the input file {} (pare never modifies its input)",
                        dest.display(),
                        input.display()
                    )));
                }
            }
        }
        if meta.is_dir() {
            return Err(Error::Usage(format!("{} is a directory", dest.display())));
        }
        if !force {
            return Err(Error::Usage(format!(
                "{} already exists; pass --force to replace it",
                dest.display()
            )));
        }
    }
    Ok(())
}

#[cfg(unix)]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}
#[cfg(not(unix))]
fn same_file(_: &fs::Metadata, _: &fs::Metadata) -> bool {
    false
}

/// Files written together (a model and its external data file), staged under their final
/// names in a temporary directory beside the destination, so they can be loaded and checked
/// exactly as a user would load them, then renamed into place.
pub struct Staging {
    dir: tempfile::TempDir,
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staging {
    /// Creates the staging directory in `dest`'s directory (same filesystem, so the final
    /// rename is atomic).
    pub fn beside(dest: &Path) -> Result<Self> {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = tempfile::Builder::new()
            .prefix(".pare-staging-")
            .tempdir_in(&parent)
            .map_err(|e| Error::io(&parent, e))?;
        Ok(Staging {
            dir,
            files: Vec::new(),
        })
    }

    /// Where the file bound for `dest` is staged.
    pub fn staged_path(&self, dest: &Path) -> PathBuf {
        self.dir.path().join(dest.file_name().unwrap_or_default())
    }

    /// Creates the staged file for `dest` and lets `write` fill it.
    pub fn write_with(
        &mut self,
        dest: &Path,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        let staged = self.staged_path(dest);
        let file = fs::File::create(&staged).map_err(|e| Error::io(dest, e))?;
        {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &file);
            write(&mut w).map_err(|e| Error::io(dest, e))?;
            w.flush().map_err(|e| Error::io(dest, e))?;
        }
        file.sync_all().map_err(|e| Error::io(dest, e))?;
        self.files.push((staged, dest.to_path_buf()));
        Ok(())
    }

    /// Destinations staged so far, in order.
    pub fn destinations(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(_, d)| d.as_path())
    }

    /// Renames every file into place, data files before the model that refers to them (they
    /// were staged first), so a model never points at data that is not there yet.
    pub fn commit(self) -> Result<()> {
        crate::cancel::check()?;
        for (staged, dest) in &self.files {
            fs::rename(staged, dest).map_err(|e| Error::io(dest, e))?;
        }
        Ok(())
    }
}

/// Writes a small file atomically (temporary file beside it, then rename): reports, charts.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::cancel::check()?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(path, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
