//! Reading model files: memory-mapped, so weights are never copied just to be looked at.
//!
//! Layer: core (imports its own layer and the ones below; see ARCHITECTURE.md).

use crate::error::{Error, Result};
use bytes::Bytes;
use std::path::Path;

/// Maps a file read-only. Empty files come back as empty `Bytes` (mapping zero bytes fails).
pub fn map_file(path: &Path) -> Result<Bytes> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::malformed(path, "is a directory, not a model file"));
    }
    if meta.len() == 0 {
        return Ok(Bytes::new());
    }
    // Safety: the mapping is read-only; pare never writes to its inputs. Another process
    // truncating the file while we read it is the one hazard mmap cannot rule out, the same
    // trade-off every mmap-based model loader (onnxruntime, LiteRT) makes.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Bytes::from_owner(map))
}

/// The process's peak resident memory so far (Linux `VmHWM`), in bytes; `None` elsewhere.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
