//! A model file as read: the decoded document of either format, detected from its content.
//!
//! Layer: document (imports its own layer and the ones below; see ARCHITECTURE.md).

use crate::error::{Error, Result};
use crate::model::payload::{payload_key, Deferred};
use crate::model::{Format, Model};
use crate::onnx::OnnxDocument;
use crate::tflite::TfliteDocument;
use std::path::Path;

// The variants are both large; one Document exists per open file, so boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Document {
    Onnx(OnnxDocument),
    Tflite(TfliteDocument),
}

impl Document {
    /// Reads a model file. The format comes from the content (the TFLite file identifier, else
    /// an ONNX protobuf with a graph), never from the extension.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_bytes(path, crate::io::map_file(path)?)
    }

    /// Decodes a model from bytes as if read from `path` (which names the model in messages
    /// and anchors ONNX external data locations).
    pub fn from_bytes(path: &Path, bytes: bytes::Bytes) -> Result<Self> {
        if bytes.is_empty() {
            return Err(Error::malformed(path, "the file is empty"));
        }
        if crate::tflite::has_identifier(&bytes) {
            return Ok(Document::Tflite(TfliteDocument::from_bytes(path, bytes)?));
        }
        // Every ONNX writer emits `ir_version` (field 1, varint: tag byte 0x08) first.
        let looks_like_onnx = bytes[0] == 0x08;
        match OnnxDocument::from_bytes(path, bytes) {
            Ok(doc) => Ok(Document::Onnx(doc)),
            // Keep errors about a real ONNX file's content (external data, tensors) as they are;
            // a file that does not decode at all is either a damaged ONNX file or not a model.
            Err(Error::Malformed { msg, .. }) if msg.starts_with("not ") => Err(Error::malformed(
                path,
                if looks_like_onnx {
                    format!("damaged ONNX model (truncated or corrupted): {msg}")
                } else {
                    "not an ONNX or TFLite model (no TFLite identifier, and it does not decode as an ONNX ModelProto with a graph)".into()
                },
            )),
            Err(e) => Err(e),
        }
    }

    pub fn format(&self) -> Format {
        match self {
            Document::Onnx(_) => Format::Onnx,
            Document::Tflite(_) => Format::Tflite,
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Document::Onnx(d) => &d.path,
            Document::Tflite(d) => &d.path,
        }
    }

    pub fn file_bytes(&self) -> u64 {
        match self {
            Document::Onnx(d) => d.file_bytes,
            Document::Tflite(d) => d.file_bytes,
        }
    }

    /// A copy with the data of some constants replaced, keyed by [`crate::model::Tensor::handle`].
    /// The new data must have the tensor's type and element count.
    pub fn with_tensor_data(&self, edits: &std::collections::HashMap<usize, bytes::Bytes>) -> Self {
        match self {
            Document::Onnx(d) => Document::Onnx(d.with_tensor_data(edits)),
            Document::Tflite(d) => Document::Tflite(d.with_tensor_data(edits)),
        }
    }

    /// A copy whose writers apply `recipes` (pruned float32 payloads produced while they are
    /// written). Such a document is for writing only: [`Document::to_model`] refuses it.
    pub fn with_deferred(&self, recipes: Deferred) -> Self {
        let mut d = self.clone();
        let (slot, edited) = match &mut d {
            Document::Onnx(d) => (&mut d.deferred, &mut d.edited),
            Document::Tflite(d) => (&mut d.deferred, &mut d.edited),
        };
        *slot = recipes;
        *edited = true;
        d
    }

    /// Identities (address, length) of the payloads the document stores as they are: ONNX
    /// raw and external data, TFLite buffers. Payloads decoded from typed fields are not
    /// among them.
    pub fn stored_payloads(&self) -> std::collections::HashSet<(usize, usize)> {
        match self {
            Document::Onnx(d) => d.stored_payloads(),
            Document::Tflite(d) => d.buffers.iter().flatten().map(|b| payload_key(b)).collect(),
        }
    }

    /// The recipes its writers apply (empty for documents read from files).
    pub fn deferred(&self) -> &Deferred {
        match self {
            Document::Onnx(d) => &d.deferred,
            Document::Tflite(d) => &d.deferred,
        }
    }

    /// The model that runs only part of the main graph `g` (this document's), fed with the
    /// activations before it (see [`crate::model::Segment`]).
    pub fn segment(&self, g: &crate::model::Graph, s: &crate::model::Segment) -> Result<Self> {
        Ok(match self {
            Document::Onnx(d) => Document::Onnx(d.segment(g, s)?),
            Document::Tflite(d) => Document::Tflite(d.segment(s)?),
        })
    }

    /// A copy with structural edits applied (channel pruning).
    pub fn with_structure(&self, edits: &crate::model::StructureEdits) -> Self {
        match self {
            Document::Onnx(d) => Document::Onnx(d.with_structure(edits)),
            Document::Tflite(d) => Document::Tflite(d.with_structure(edits)),
        }
    }

    /// A copy with constants stored as `policy` asks (sparse or dense; see
    /// [`crate::sparse::Storage`]), and what changed.
    pub fn with_storage(
        &self,
        policy: &crate::sparse::StoragePolicy,
    ) -> Result<(Self, crate::sparse::StorageReport)> {
        Ok(match self {
            Document::Onnx(d) => {
                let (d, r) = d.with_storage(policy)?;
                (Document::Onnx(d), r)
            }
            Document::Tflite(d) => {
                let (d, r) = d.with_storage(policy)?;
                (Document::Tflite(d), r)
            }
        })
    }

    /// [`Document::with_storage`] for writing: the constants it makes sparse keep no dense
    /// payload, so the result can be written but not read as a model (half the memory at
    /// high sparsity).
    pub fn with_storage_for_write(
        &self,
        policy: &crate::sparse::StoragePolicy,
    ) -> Result<(Self, crate::sparse::StorageReport)> {
        Ok(match self {
            Document::Onnx(d) => {
                let (d, r) = d.storage_pass(policy, false)?;
                (Document::Onnx(d), r)
            }
            Document::Tflite(d) => {
                let (d, r) = d.storage_pass(policy, false)?;
                (Document::Tflite(d), r)
            }
        })
    }

    /// True when some constant is stored sparse.
    pub fn has_sparse(&self) -> bool {
        match self {
            Document::Onnx(d) => !d.dense.is_empty(),
            Document::Tflite(d) => !d.dense.is_empty(),
        }
    }

    /// The document with every sparse constant stored dense (itself when there is none).
    pub fn densified(&self) -> Result<Self> {
        if !self.has_sparse() {
            return Ok(self.clone());
        }
        Ok(self
            .with_storage(&crate::sparse::StoragePolicy::new(
                crate::sparse::Storage::Dense,
            ))?
            .0)
    }

    pub fn to_model(&self) -> Result<Model> {
        let write_only = match self {
            Document::Onnx(d) => d.write_only,
            Document::Tflite(d) => d.write_only,
        };
        if write_only || !self.deferred().is_empty() {
            // Its stored bytes are not what it will write: reading them would be wrong.
            return Err(Error::Usage(format!(
                "{}: internal error: a document prepared for writing (deferred pruning, sparse storage without dense payloads) was read as a model",
                self.path().display()
            )));
        }
        match self {
            Document::Onnx(d) => d.to_model(),
            Document::Tflite(d) => d.to_model(),
        }
    }
}
