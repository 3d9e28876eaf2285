//! TFLite: the unpacked flatbuffer object tree (`ModelT`) is the document; buffer payloads are
//! kept apart as zero-copy slices of the input file and written back 16-byte aligned.
//!
//! This module is the only code that touches the generated flatbuffer types.
//!
//! Layer: formats (imports its own layer and the ones below; see ARCHITECTURE.md).

mod check;
mod segment;
pub mod sparse;
mod structure;
mod view;
mod write;

pub use write::WriteSummary;

use crate::error::{Error, Result};
use crate::tflite_gen::tflite as fb;
use bytes::Bytes;
use std::path::{Path, PathBuf};

pub const FILE_IDENTIFIER: &[u8; 4] = b"TFL3";

/// A decoded TFLite file.
#[derive(Debug, Clone)]
pub struct TfliteDocument {
    pub path: PathBuf,
    /// The whole model except buffer payloads (every `BufferT::data` is `None`).
    pub model: fb::ModelT,
    /// Payload of each buffer, by buffer index; `None` where the buffer has no data vector.
    pub buffers: Vec<Option<Bytes>>,
    /// True when the input stored buffers after the flatbuffer (`offset`/`size`), the form
    /// TensorFlow uses for models over 2 GiB; pare writes the same form back.
    pub offset_form: bool,
    pub file_bytes: u64,
    /// The file as read (memory-mapped): what tract is given, so verification runs on the
    /// bytes on disk.
    pub source: Bytes,
    /// Buffers were replaced in memory ([`TfliteDocument::with_tensor_data`]): `source` no
    /// longer matches the document.
    pub edited: bool,
    /// Dense payloads of the buffers that sparse tensors store (by buffer index), decoded and
    /// checked when the file is read.
    pub(crate) dense: std::collections::HashMap<usize, Bytes>,
    /// Pruned payloads the writer produces from stored bytes (see [`crate::model::payload`]).
    pub(crate) deferred: crate::model::payload::Deferred,
    /// Made by the write path's storage pass: its sparse tensors have no dense payloads, so
    /// it can be written but not read as a model.
    pub(crate) write_only: bool,
}

pub fn has_identifier(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[4..8] == FILE_IDENTIFIER
}

impl TfliteDocument {
    /// A document built in memory (a generated model): `buffers` holds the payload of each
    /// entry of `model.buffers` (whose own `data` is ignored). Write it with
    /// [`TfliteDocument::encode`].
    pub fn new(path: &Path, model: fb::ModelT, buffers: Vec<Option<Bytes>>) -> Self {
        TfliteDocument {
            path: path.to_path_buf(),
            model,
            buffers,
            offset_form: false,
            file_bytes: 0,
            source: Bytes::new(),
            edited: true,
            dense: Default::default(),
            deferred: Default::default(),
            write_only: false,
        }
    }

    pub fn from_bytes(path: &Path, bytes: Bytes) -> Result<Self> {
        if !has_identifier(&bytes) {
            return Err(Error::malformed(
                path,
                "not a TFLite model (no TFL3 file identifier)",
            ));
        }
        let opts = flatbuffers::VerifierOptions {
            max_depth: 128,
            // Large models have millions of tables. The verifier's limits only need to stop
            // runaway inputs: its "apparent size" counts what it visits, which exceeds the
            // file's length on ordinary models (an 8.8 MB MobileNetV2 export was refused with
            // a bound at the file length), so allow a generous multiple of it.
            max_tables: 1 << 26,
            max_apparent_size: bytes.len().saturating_mul(8).max(1 << 31),
            ignore_missing_null_terminator: false,
        };
        let root = fb::root_as_model_with_opts(&opts, &bytes)
            .map_err(|e| Error::malformed(path, format!("damaged TFLite flatbuffer: {e}")))?;
        if root.subgraphs().map_or(0, |s| s.len()) == 0 {
            return Err(Error::malformed(path, "TFLite model has no subgraph"));
        }
        let (model, buffers, offset_form) = unpack(path, &root, &bytes)?;
        let doc = TfliteDocument {
            path: path.to_path_buf(),
            model,
            buffers,
            offset_form,
            file_bytes: bytes.len() as u64,
            dense: Default::default(),
            deferred: Default::default(),
            write_only: false,
            source: bytes.clone(),
            edited: false,
        };
        doc.check_references()?;
        doc.check_layer_shapes()?;
        let mut doc = doc;
        doc.dense = sparse::decode_all(&doc)?;
        Ok(doc)
    }

    /// The builtin operator of an opcode, resolving the two fields the schema keeps for it
    /// (`deprecated_builtin_code` for codes < 127, `builtin_code` for all).
    pub fn builtin(&self, opcode_index: u32) -> fb::BuiltinOperator {
        let code = &self.model.operator_codes.as_ref().expect("checked")[opcode_index as usize];
        builtin_of(code)
    }

    /// A copy of the document with some buffers' payloads replaced, by buffer index (the
    /// handle of [`crate::model::Tensor`]). Everything else is untouched.
    pub fn with_tensor_data(
        &self,
        edits: &std::collections::HashMap<usize, Bytes>,
    ) -> TfliteDocument {
        let mut doc = self.clone();
        doc.edited = doc.edited || !edits.is_empty();
        for (&i, b) in edits {
            if doc.dense.contains_key(&i) {
                doc.reencode_sparse(i, b.clone());
            } else if let Some(slot) = doc.buffers.get_mut(i) {
                *slot = Some(b.clone());
            }
        }
        doc
    }

    pub fn to_model(&self) -> Result<crate::model::Model> {
        view::build(self)
    }

    pub fn encode(&self) -> Result<(Bytes, WriteSummary)> {
        write::encode(self)
    }
}

/// Index of the operator code for `builtin`, added (version 1) if the model has none.
pub(crate) fn opcode_index(model: &mut fb::ModelT, builtin: fb::BuiltinOperator) -> u32 {
    let codes = model.operator_codes.get_or_insert_with(Vec::new);
    if let Some(i) = codes.iter().position(|c| builtin_of(c) == builtin) {
        return i as u32;
    }
    codes.push(fb::OperatorCodeT {
        deprecated_builtin_code: builtin.0.min(127) as i8,
        custom_code: None,
        version: 1,
        builtin_code: builtin,
    });
    (codes.len() - 1) as u32
}

pub fn builtin_of(code: &fb::OperatorCodeT) -> fb::BuiltinOperator {
    let deprecated = code.deprecated_builtin_code as i32;
    fb::BuiltinOperator(deprecated.max(code.builtin_code.0))
}

/// Op name as users know it: the builtin's name, or a custom op's `custom_code`.
pub fn op_name(code: &fb::OperatorCodeT) -> String {
    let b = builtin_of(code);
    if b == fb::BuiltinOperator::CUSTOM {
        return code.custom_code.clone().unwrap_or_else(|| "CUSTOM".into());
    }
    b.variant_name()
        .map(str::to_string)
        .unwrap_or_else(|| format!("BUILTIN_{}", b.0))
}

/// `ModelT::unpack` without copying buffer payloads: they become slices of `file`.
fn unpack(
    path: &Path,
    m: &fb::Model,
    file: &Bytes,
) -> Result<(fb::ModelT, Vec<Option<Bytes>>, bool)> {
    let base = file.as_ptr() as usize;
    let mut payloads = Vec::new();
    let mut buffers = Vec::new();
    let mut offset_form = false;
    for (i, b) in m.buffers().iter().flatten().enumerate() {
        let (offset, size) = (b.offset(), b.size());
        let payload = if let Some(data) = b.data() {
            let bytes = data.bytes();
            let start = bytes.as_ptr() as usize - base;
            Some(file.slice(start..start + bytes.len()))
        } else if offset > 1 {
            offset_form = true;
            let end = offset
                .checked_add(size)
                .filter(|&e| e <= file.len() as u64)
                .ok_or_else(|| {
                    Error::malformed(
                        path,
                        format!(
                            "buffer {i} claims bytes {offset}..{} but the file has {}",
                            offset.saturating_add(size),
                            file.len()
                        ),
                    )
                })?;
            Some(file.slice(offset as usize..end as usize))
        } else {
            None
        };
        payloads.push(payload);
        // Offsets are recomputed on write; the payload carries the data.
        buffers.push(fb::BufferT {
            data: None,
            offset: 0,
            size: 0,
        });
    }
    let model = fb::ModelT {
        version: m.version(),
        operator_codes: m
            .operator_codes()
            .map(|x| x.iter().map(|t| t.unpack()).collect()),
        subgraphs: m
            .subgraphs()
            .map(|x| x.iter().map(|t| t.unpack()).collect()),
        description: m.description().map(str::to_string),
        buffers: m.buffers().map(|_| buffers),
        metadata_buffer: m.metadata_buffer().map(|x| x.into_iter().collect()),
        metadata: m.metadata().map(|x| x.iter().map(|t| t.unpack()).collect()),
        signature_defs: m
            .signature_defs()
            .map(|x| x.iter().map(|t| t.unpack()).collect()),
        external_buffer_groups: m
            .external_buffer_groups()
            .map(|x| x.iter().map(|t| t.unpack()).collect()),
        external_buffers: m
            .external_buffers()
            .map(|x| x.iter().map(|t| t.unpack()).collect()),
    };
    Ok((model, payloads, offset_form))
}

/// The pare dtype of a TFLite tensor type (`Other` for types pare does not name).
pub(crate) fn dtype_from_tflite(t: fb::TensorType) -> crate::model::DType {
    use crate::model::DType;
    match t {
        fb::TensorType::FLOAT32 => DType::F32,
        fb::TensorType::FLOAT16 => DType::F16,
        fb::TensorType::BFLOAT16 => DType::BF16,
        fb::TensorType::FLOAT64 => DType::F64,
        fb::TensorType::INT8 => DType::I8,
        fb::TensorType::UINT8 => DType::U8,
        fb::TensorType::INT16 => DType::I16,
        fb::TensorType::UINT16 => DType::U16,
        fb::TensorType::INT32 => DType::I32,
        fb::TensorType::UINT32 => DType::U32,
        fb::TensorType::INT64 => DType::I64,
        fb::TensorType::UINT64 => DType::U64,
        fb::TensorType::BOOL => DType::Bool,
        fb::TensorType::STRING => DType::String,
        fb::TensorType::COMPLEX64 => DType::Complex64,
        fb::TensorType::COMPLEX128 => DType::Complex128,
        fb::TensorType::INT4 => DType::I4,
        _ => DType::Other,
    }
}
