//! Writing an ONNX document, optionally moving tensors into (or out of) an external data file.

use super::tensor::{self, TensorPayload};
use super::{OnnxDocument, PROTOBUF_LIMIT};
use crate::error::{Error, Result};
use crate::model::payload::Deferred;
use crate::onnx_pb as pb;
use crate::output::Staging;
use bytes::Bytes;
use pb::tensor_proto::DataLocation;
use prost::Message;
use serde::Serialize;
use std::path::Path;

/// Where tensor data goes when a model is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalDataMode {
    /// Keep the input's layout: tensors that were external stay external (gathered into one
    /// file named after the output), inline tensors stay inline.
    Keep,
    /// Pull every external tensor back into the model file.
    Inline,
    /// Move every tensor of at least [`EXTERNAL_THRESHOLD`] bytes into this file (a bare file
    /// name, written beside the output).
    Into(String),
}

/// Tensors smaller than this stay inline (the `onnx` package's default `size_threshold`).
pub const EXTERNAL_THRESHOLD: usize = 1024;
/// Tensors of at least this size start at a multiple of [`LARGE_ALIGN`] in the data file, so
/// that runtimes can map them directly (what `onnx.save(..., align_offset=True)` does).
const LARGE_TENSOR: usize = 1 << 20;
const LARGE_ALIGN: u64 = 64 * 1024;
/// Every other external tensor starts at a multiple of 16, enough for any element type or SIMD load.
const SMALL_ALIGN: u64 = 16;

#[derive(Debug, Clone, Default, Serialize)]
pub struct WriteSummary {
    pub model_bytes: u64,
    /// The external data file written beside the model, if any.
    pub external_data_file: Option<String>,
    pub external_data_bytes: u64,
    pub external_tensors: usize,
}

/// The default external data file name for an output path: `model.onnx` → `model.onnx.data`.
pub fn default_data_file(out: &Path) -> String {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.onnx".into());
    format!("{name}.data")
}

/// Encodes `doc.model` (already edited by the caller) to `out`, with data placement per `mode`.
/// Files are staged in `pending`; nothing is visible at `out` until the caller commits.
pub fn write(
    doc: &OnnxDocument,
    model: &pb::ModelProto,
    out: &Path,
    mode: &ExternalDataMode,
    pending: &mut Staging,
) -> Result<WriteSummary> {
    let mut model = model.clone();
    let data_file = match mode {
        ExternalDataMode::Inline => None,
        ExternalDataMode::Keep => {
            if doc.external_locations().is_empty() {
                None
            } else {
                Some(default_data_file(out))
            }
        }
        ExternalDataMode::Into(name) => {
            check_data_file_name(name)?;
            Some(name.clone())
        }
    };
    let move_all = matches!(mode, ExternalDataMode::Into(_));

    let mut chunks: Vec<(u64, Bytes)> = Vec::new();
    let mut cursor = 0u64;
    let mut err: Option<Error> = None;
    // Sparse tensors' values and indices stay inline: onnxruntime reads them from external
    // data, but the onnx package's checker and loader do not.
    let mut sparse_parts = 0;
    tensor::walk_mut(&mut model, &mut |item| {
        let t = match item {
            tensor::ItemMut::Tensor(t) => t,
            tensor::ItemMut::Sparse(s) => {
                sparse_parts = s.values.is_some() as usize + s.indices.is_some() as usize;
                return;
            }
            tensor::ItemMut::Graph(_) => return,
        };
        let in_sparse = sparse_parts > 0;
        sparse_parts = sparse_parts.saturating_sub(1);
        if err.is_some() {
            return;
        }
        let was_external = doc.was_external(t);
        let payload = match doc.payload(t) {
            Ok(p) => p,
            Err(e) => {
                err = Some(e);
                return;
            }
        };
        let TensorPayload::Dense(bytes) = payload else {
            return;
        };
        let go_external = data_file.is_some()
            && !in_sparse
            && (was_external || (move_all && bytes.len() >= EXTERNAL_THRESHOLD));
        if go_external {
            let align = if bytes.len() >= LARGE_TENSOR {
                LARGE_ALIGN
            } else {
                SMALL_ALIGN
            };
            let offset = cursor.div_ceil(align) * align;
            cursor = offset + bytes.len() as u64;
            set_external(t, data_file.as_deref().unwrap(), offset, bytes.len() as u64);
            chunks.push((offset, bytes));
        } else if was_external {
            tensor::set_raw(t, bytes);
        }
    });
    if let Some(e) = err {
        return Err(e);
    }

    let encoded_len = model.encoded_len() as u64;
    if encoded_len > PROTOBUF_LIMIT {
        return Err(Error::Usage(format!(
            "{}: the model would be {encoded_len} bytes, over protobuf's 2 GiB limit that ONNX runtimes enforce; \
             write its weights to an external data file with --external-data",
            out.display()
        )));
    }

    let mut summary = WriteSummary {
        model_bytes: encoded_len,
        ..Default::default()
    };
    if let Some(name) = data_file.as_ref().filter(|_| !chunks.is_empty()) {
        let dest = out.with_file_name(name);
        summary.external_data_file = Some(name.clone());
        summary.external_data_bytes = cursor;
        summary.external_tensors = chunks.len();
        pending.write_with(&dest, |w| {
            let mut pos = 0u64;
            let zeros = [0u8; LARGE_ALIGN as usize];
            for (offset, bytes) in &chunks {
                w.write_all(&zeros[..(offset - pos) as usize])?;
                match doc.deferred.get(bytes) {
                    Some(r) => {
                        let mut res = Ok(());
                        r.write_to(&mut |b| {
                            if res.is_ok() {
                                res = w.write_all(b);
                            }
                        });
                        res?;
                    }
                    None => w.write_all(bytes)?,
                }
                pos = offset + bytes.len() as u64;
            }
            Ok(())
        })?;
    }
    pending.write_with(out, |w| {
        let mut sink = WriteBuf::new(w, &doc.deferred);
        model
            .encode(&mut sink)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        sink.finish()
    })?;
    Ok(summary)
}

fn set_external(t: &mut pb::TensorProto, location: &str, offset: u64, length: u64) {
    t.raw_data = None;
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
    t.data_location = Some(DataLocation::External as i32);
    let entry = |k: &str, v: String| pb::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    t.external_data = vec![
        entry("location", location.to_string()),
        entry("offset", offset.to_string()),
        entry("length", length.to_string()),
    ];
}

/// The external data file is named relative to the model and must sit beside it.
fn check_data_file_name(name: &str) -> Result<()> {
    let p = Path::new(name);
    if name.is_empty() || p.components().count() != 1 || p.file_name().is_none() {
        return Err(Error::Usage(format!(
            "--external-data {name:?}: give a plain file name; the data file is written beside the output model"
        )));
    }
    Ok(())
}

/// Streams prost's encoder into a `Write` through a 1 MiB buffer, so a model is never held
/// encoded in memory as a whole. `BufMut` cannot fail, so the first I/O error is kept and
/// returned by [`WriteBuf::finish`].
struct WriteBuf<'a> {
    w: &'a mut dyn std::io::Write,
    buf: Vec<u8>,
    err: Option<std::io::Error>,
    /// Payloads to produce in place of the stored bytes prost hands over.
    deferred: &'a Deferred,
}

const WRITE_CHUNK: usize = 1 << 20;

impl<'a> WriteBuf<'a> {
    fn new(w: &'a mut dyn std::io::Write, deferred: &'a Deferred) -> Self {
        WriteBuf {
            w,
            buf: Vec::with_capacity(WRITE_CHUNK),
            err: None,
            deferred,
        }
    }

    fn flush_buf(&mut self) {
        if self.err.is_none() {
            if let Err(e) = self.w.write_all(&self.buf) {
                self.err = Some(e);
            }
        }
        self.buf.clear();
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.flush_buf();
        self.err.map_or(Ok(()), Err)
    }
}

// Safety: `chunk_mut` hands out the spare capacity of `buf`, and `advance_mut` only extends
// `buf` over bytes the encoder has written into it.
unsafe impl bytes::BufMut for WriteBuf<'_> {
    fn remaining_mut(&self) -> usize {
        usize::MAX - self.buf.len()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        let len = self.buf.len() + cnt;
        assert!(len <= self.buf.capacity());
        unsafe { self.buf.set_len(len) };
        if self.buf.len() == self.buf.capacity() {
            self.flush_buf();
        }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush_buf();
        }
        bytes::buf::UninitSlice::uninit(self.buf.spare_capacity_mut())
    }

    // prost writes `bytes` fields (raw_data) with `put`, whose default copies chunk by chunk
    // through `chunk_mut`, i.e. every weight through the 1 MiB buffer. Handing each chunk to
    // `put_slice` instead lets large payloads go to the writer directly.
    fn put<T: bytes::Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        while src.has_remaining() {
            let chunk = src.chunk();
            let n = chunk.len();
            // A `Bytes` payload comes as one chunk, so a deferred one is recognised whole.
            match self.deferred.get(chunk) {
                Some(r) => r.write_to(&mut |b| self.put_slice(b)),
                None => self.put_slice(chunk),
            }
            src.advance(n);
        }
    }

    fn put_slice(&mut self, src: &[u8]) {
        // Large payloads (raw_data) go straight to the writer instead of through the buffer.
        if src.len() >= WRITE_CHUNK {
            self.flush_buf();
            if self.err.is_none() {
                if let Err(e) = self.w.write_all(src) {
                    self.err = Some(e);
                }
            }
        } else {
            let mut rest = src;
            while !rest.is_empty() {
                let room = self.buf.capacity() - self.buf.len();
                let n = room.min(rest.len());
                self.buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if self.buf.len() == self.buf.capacity() {
                    self.flush_buf();
                }
            }
        }
    }
}
