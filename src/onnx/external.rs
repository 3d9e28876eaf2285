//! External tensor data: resolving `location` safely and mapping the files.

use crate::error::{Error, Result};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Resolves an external-data `location` inside `base_dir`, refusing absolute paths, `..`
/// components and symlinks that lead outside the model's folder: a model file must not be able
/// to make pare read arbitrary files.
pub fn resolve_location(model_path: &Path, base_dir: &Path, location: &str) -> Result<PathBuf> {
    let refuse = |why: &str| {
        Error::malformed(
            model_path,
            format!("external data location {location:?} {why}; it must be a relative path inside the model's folder"),
        )
    };
    if location.is_empty() {
        return Err(refuse("is empty"));
    }
    if location.contains('\0') {
        return Err(refuse("contains a NUL byte"));
    }
    let rel = Path::new(location);
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(refuse("contains '..'")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("is absolute")),
        }
    }
    // Windows-style absolute paths written on another OS are refused too.
    if location.starts_with('\\') || location.as_bytes().get(1) == Some(&b':') {
        return Err(refuse("is absolute"));
    }
    let joined = base_dir.join(rel);
    let canon = joined.canonicalize().map_err(|e| {
        Error::malformed(
            model_path,
            format!(
                "external data file {} cannot be opened: {e}",
                joined.display()
            ),
        )
    })?;
    let canon_base = base_dir
        .canonicalize()
        .map_err(|e| Error::io(base_dir, e))?;
    if !canon.starts_with(&canon_base) {
        return Err(refuse(
            "leads outside the model's folder (through a symlink)",
        ));
    }
    Ok(canon)
}

/// Memory-mapped external data files, keyed by their `location` string.
#[derive(Default, Debug, Clone)]
pub struct ExternalFiles {
    files: BTreeMap<String, Bytes>,
}

impl ExternalFiles {
    pub fn get_or_map(
        &mut self,
        model_path: &Path,
        base_dir: &Path,
        location: &str,
    ) -> Result<Bytes> {
        if let Some(b) = self.files.get(location) {
            return Ok(b.clone());
        }
        let path = resolve_location(model_path, base_dir, location)?;
        let bytes = crate::io::map_file(&path)?;
        self.files.insert(location.to_string(), bytes.clone());
        Ok(bytes)
    }

    pub fn get(&self, location: &str) -> Option<Bytes> {
        self.files.get(location).cloned()
    }

    pub fn locations(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(|s| s.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}
