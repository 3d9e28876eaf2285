//! ONNX: the decoded `ModelProto` is the document; pare edits it in place and re-encodes it.
//!
//! This module and its children are the only code that touches the protobuf types.
//!
//! Layer: formats (imports its own layer and the ones below; see ARCHITECTURE.md).

mod external;
pub mod lower;
mod segment;
mod sparse;
pub mod specialize;
mod structure;
mod tensor;
mod view;
pub mod write;

pub use external::resolve_location;
pub use tensor::{dtype_from_onnx, TensorPayload};
pub use write::{ExternalDataMode, WriteSummary};

use crate::error::{Error, Result};
use crate::model::payload::payload_key;
use crate::onnx_pb as pb;
use bytes::Bytes;
use external::ExternalFiles;
use prost::Message;
use std::path::{Path, PathBuf};

/// Protobuf messages cannot exceed 2 GiB: readers (protobuf C++, onnxruntime) refuse them.
pub const PROTOBUF_LIMIT: u64 = (1 << 31) - 1;

/// A decoded ONNX file plus the external data files it refers to.
#[derive(Debug, Clone)]
pub struct OnnxDocument {
    pub path: PathBuf,
    pub model: pb::ModelProto,
    base_dir: PathBuf,
    external: ExternalFiles,
    pub file_bytes: u64,
    /// The file as read (memory-mapped).
    source: Bytes,
    /// Tensors were replaced in memory ([`OnnxDocument::with_tensor_data`]): `model` no longer
    /// matches the file at `path`.
    pub edited: bool,
    /// Dense payloads of the sparse tensors, by the handle of their values, decoded and checked
    /// when the file is read.
    pub(crate) dense: std::collections::HashMap<usize, Bytes>,
    /// Pruned payloads the writer produces from stored bytes (see [`crate::model::payload`]).
    pub(crate) deferred: crate::model::payload::Deferred,
    /// Made by the write path's storage pass: its sparse tensors have no dense payloads, so
    /// it can be written but not read as a model.
    pub(crate) write_only: bool,
    /// New payloads (by address and length) of tensors that were stored as external data:
    /// the writer keeps them external when the output keeps the input's layout.
    pub(crate) from_external: std::sync::Arc<std::collections::HashSet<(usize, usize)>>,
}

impl OnnxDocument {
    /// Decodes `bytes` (usually a memory map of `path`). Weight payloads stay slices of `bytes`.
    pub fn from_bytes(path: &Path, bytes: Bytes) -> Result<Self> {
        let file_bytes = bytes.len() as u64;
        let model = pb::ModelProto::decode(bytes.clone()).map_err(|e| {
            Error::malformed(
                path,
                format!("not a valid ONNX model (protobuf decoding failed: {e})"),
            )
        })?;
        if model.graph.is_none() {
            return Err(Error::malformed(path, "not an ONNX model: it has no graph"));
        }
        let base_dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut doc = OnnxDocument {
            path: path.to_path_buf(),
            model,
            base_dir,
            external: ExternalFiles::default(),
            file_bytes,
            source: bytes,
            edited: false,
            dense: Default::default(),
            deferred: Default::default(),
            write_only: false,
            from_external: Default::default(),
        };
        doc.map_external_files()?;
        doc.dense = sparse::decode_all(&doc)?;
        Ok(doc)
    }

    /// Maps every external data file up front, so that a bad location is reported when the
    /// model is read, not halfway through writing it.
    fn map_external_files(&mut self) -> Result<()> {
        let mut locations = Vec::new();
        tensor::for_each_tensor(&self.model, &mut |t| {
            if tensor::is_external(t) {
                if let Some(loc) = tensor::external_field(t, "location") {
                    locations.push(loc.to_string());
                } else {
                    locations.push(String::new());
                }
            }
        });
        for loc in locations {
            self.external.get_or_map(&self.path, &self.base_dir, &loc)?;
        }
        Ok(())
    }

    /// The folder external data locations are relative to.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Resolved paths of the external data files (each checked to lie inside the model's folder).
    pub fn external_paths(&self) -> Result<Vec<PathBuf>> {
        self.external
            .locations()
            .map(|loc| resolve_location(&self.path, &self.base_dir, loc))
            .collect()
    }

    pub fn external_locations(&self) -> Vec<String> {
        self.external.locations().map(|s| s.to_string()).collect()
    }

    /// The dense little-endian payload of a tensor, wherever it is stored.
    pub fn payload(&self, t: &pb::TensorProto) -> Result<TensorPayload> {
        tensor::payload(t, &self.path, |loc| {
            self.external.get(loc).ok_or_else(|| {
                Error::malformed(
                    &self.path,
                    format!("external data file {loc:?} was not mapped"),
                )
            })
        })
    }

    /// The model with every external tensor pulled inline, encoded: what tract and other
    /// in-memory consumers are given.
    pub fn inlined_bytes(&self) -> Result<Bytes> {
        if self.external.is_empty() {
            return Ok(self.source.clone());
        }
        let mut model = self.model.clone();
        self.inline_external(&mut model)?;
        Ok(Bytes::from(model.encode_to_vec()))
    }

    /// Pulls every external tensor of `model` (this document's model or a copy of it) inline.
    pub fn inline_external(&self, model: &mut pb::ModelProto) -> Result<()> {
        if self.external.is_empty() {
            return Ok(());
        }
        let mut err = None;
        tensor::for_each_tensor_mut(model, &mut |t| {
            if err.is_some() || !tensor::is_external(t) {
                return;
            }
            match self.payload(t) {
                Ok(TensorPayload::Dense(b)) => tensor::set_raw(t, b),
                Ok(_) => {}
                Err(e) => err = Some(e),
            }
        });
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn to_model(&self) -> Result<crate::model::Model> {
        view::build(self)
    }

    /// A copy of the document with the data of some tensors replaced, by handle (see
    /// [`crate::model::Tensor::handle`]). Replaced tensors keep their name, type and dims; their
    /// data becomes `raw_data` (the writer moves it back to external data as the output asks).
    /// Every other tensor, and everything else in the model, is untouched.
    pub fn with_tensor_data(
        &self,
        edits: &std::collections::HashMap<usize, Bytes>,
    ) -> OnnxDocument {
        let mut doc = self.clone();
        doc.edited = doc.edited || !edits.is_empty();
        // Sparse tensors take their edit as dense data and are re-encoded sparse.
        let sparse = doc.reencode_sparse(edits);
        let mut ordinal = 0usize;
        let mut moved = Vec::new();
        tensor::for_each_tensor_mut(&mut doc.model, &mut |t| {
            if let Some(b) = edits.get(&ordinal).filter(|_| !sparse.contains(&ordinal)) {
                if tensor::is_external(t) {
                    moved.push(payload_key(b));
                }
                tensor::set_raw(t, b.clone());
            }
            ordinal += 1;
        });
        doc.note_from_external(moved);
        doc
    }

    /// Identities of the payloads stored as they are (raw and external data).
    pub(crate) fn stored_payloads(&self) -> std::collections::HashSet<(usize, usize)> {
        let mut set = std::collections::HashSet::new();
        tensor::for_each_tensor(&self.model, &mut |t| {
            if let Some(r) = &t.raw_data {
                set.insert(payload_key(r));
            } else if tensor::is_external(t) {
                if let Ok(TensorPayload::Dense(b)) = self.payload(t) {
                    set.insert(payload_key(&b));
                }
            }
        });
        set
    }

    /// Records payloads that replaced external tensors (see `from_external`).
    pub(crate) fn note_from_external(&mut self, keys: Vec<(usize, usize)>) {
        if !keys.is_empty() {
            std::sync::Arc::make_mut(&mut self.from_external).extend(keys);
        }
    }

    /// Whether `t` is stored as external data, or was before pruning replaced its payload.
    pub(crate) fn was_external(&self, t: &pb::TensorProto) -> bool {
        tensor::is_external(t)
            || t.raw_data
                .as_ref()
                .is_some_and(|r| self.from_external.contains(&payload_key(r)))
    }
}

/// The dense payload of a TensorProto read on its own (ONNX test data `input_K.pb`), which
/// cannot refer to external data.
pub fn payload_of_standalone(t: &pb::TensorProto, path: &Path) -> Result<Bytes> {
    match tensor::payload(t, path, |loc| {
        Err(Error::malformed(
            path,
            format!("a stand-alone tensor cannot refer to external data ({loc:?})"),
        ))
    })? {
        TensorPayload::Dense(b) => Ok(b),
        TensorPayload::Opaque => Err(Error::unsupported(
            path,
            format!("tensor {:?}: its type cannot feed a model here", t.name()),
        )),
    }
}
