//! Packing a TFLite document back into a flatbuffer.
//!
//! `ModelT::pack` would do, except that the Rust generator ignores the schema's
//! `force_align: 16` on `Buffer.data`: runtimes read weights in place, so each payload must start
//! on a 16-byte boundary. Buffers are therefore packed here with an aligned element type.

use super::{TfliteDocument, FILE_IDENTIFIER};
use crate::error::{Error, Result};
use crate::model::payload::Deferred;
use crate::tflite_gen::tflite as fb;
use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, Push, PushAlignment, WIPOffset};
use serde::Serialize;

const BUFFER_ALIGN: u64 = 16;
/// Past this size the flatbuffer's 32-bit offsets cannot reach every buffer: weights move after
/// the flatbuffer (`Buffer.offset`/`size`), as TensorFlow's converter does for models over 2 GiB.
const FLATBUFFER_LIMIT: u64 = (1 << 31) - (64 << 20);

#[derive(Debug, Clone, Default, Serialize)]
pub struct WriteSummary {
    pub model_bytes: u64,
    /// Buffers stored after the flatbuffer (offset form).
    pub offset_buffers: usize,
}

/// A byte whose vectors start 16-byte aligned.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct AlignedByte(u8);

impl Push for AlignedByte {
    type Output = u8;
    #[inline]
    unsafe fn push(&self, dst: &mut [u8], _written_len: usize) {
        dst[0] = self.0;
    }
    #[inline]
    fn alignment() -> PushAlignment {
        PushAlignment::new(BUFFER_ALIGN as usize)
    }
}

fn as_aligned(bytes: &[u8]) -> &[AlignedByte] {
    // Safety: AlignedByte is repr(transparent) over u8.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const AlignedByte, bytes.len()) }
}

/// The encoded file. The in-flatbuffer form is returned where the builder left it (no copy).
pub fn encode(doc: &TfliteDocument) -> Result<(Bytes, WriteSummary)> {
    let total: u64 = doc.buffers.iter().flatten().map(|b| b.len() as u64).sum();
    let offset_form = doc.offset_form || total > FLATBUFFER_LIMIT;
    if !offset_form {
        let mut fbb = FlatBufferBuilder::with_capacity((total as usize).saturating_add(1 << 16));
        let root = pack_model(&mut fbb, doc, None);
        fbb.finish(root, Some(std::str::from_utf8(FILE_IDENTIFIER).unwrap()));
        // The builder fills its buffer back to front; the file is the tail from `head`.
        let (buf, head) = fbb.collapse();
        let data = Bytes::from(buf).slice(head..);
        let summary = WriteSummary {
            model_bytes: data.len() as u64,
            offset_buffers: 0,
        };
        return Ok((data, summary));
    }

    // Offset form: tensor buffers go after the flatbuffer. Metadata buffers stay inside, where
    // every reader looks for them.
    let tensor_buffers = tensor_buffer_set(doc);
    let external: Vec<bool> = (0..doc.buffers.len())
        .map(|i| tensor_buffers[i] && doc.buffers[i].as_ref().is_some_and(|b| !b.is_empty()))
        .collect();
    // First pass with placeholder offsets to learn the flatbuffer's size; every offset is a
    // non-default u64, so the second pass has the same layout.
    let placeholder: Vec<u64> = external
        .iter()
        .map(|&e| if e { u64::MAX } else { 0 })
        .collect();
    let mut fbb = FlatBufferBuilder::new();
    let root = pack_model(&mut fbb, doc, Some(&placeholder));
    fbb.finish(root, Some(std::str::from_utf8(FILE_IDENTIFIER).unwrap()));
    let fb_len = fbb.finished_data().len() as u64;
    let mut cursor = fb_len.div_ceil(BUFFER_ALIGN) * BUFFER_ALIGN;
    let mut offsets = vec![0u64; doc.buffers.len()];
    for (i, &e) in external.iter().enumerate() {
        if e {
            offsets[i] = cursor;
            cursor += doc.buffers[i].as_ref().unwrap().len() as u64;
            cursor = cursor.div_ceil(BUFFER_ALIGN) * BUFFER_ALIGN;
        }
    }
    fbb.reset();
    let root = pack_model(&mut fbb, doc, Some(&offsets));
    fbb.finish(root, Some(std::str::from_utf8(FILE_IDENTIFIER).unwrap()));
    if fbb.finished_data().len() as u64 != fb_len {
        return Err(Error::Usage(
            "internal error: TFLite offset-form layout changed between passes".into(),
        ));
    }
    let mut out = Vec::with_capacity(cursor as usize);
    out.extend_from_slice(fbb.finished_data());
    let mut n = 0;
    for (i, &e) in external.iter().enumerate() {
        if e {
            out.resize(offsets[i] as usize, 0);
            let b = doc.buffers[i].as_ref().unwrap();
            match doc.deferred.get(b) {
                Some(r) => r.write_to(&mut |piece| out.extend_from_slice(piece)),
                None => out.extend_from_slice(b),
            }
            n += 1;
        }
    }
    out.resize(cursor as usize, 0);
    let summary = WriteSummary {
        model_bytes: out.len() as u64,
        offset_buffers: n,
    };
    Ok((Bytes::from(out), summary))
}

/// Which buffers hold tensor data (as opposed to metadata).
fn tensor_buffer_set(doc: &TfliteDocument) -> Vec<bool> {
    let mut set = vec![false; doc.buffers.len()];
    for sg in doc.model.subgraphs.iter().flatten() {
        for t in sg.tensors.iter().flatten() {
            if t.buffer != 0 {
                set[t.buffer as usize] = true;
            }
        }
    }
    set
}

fn pack_buffer<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    payload: Option<&Bytes>,
    offset: Option<u64>,
    deferred: &Deferred,
) -> WIPOffset<fb::Buffer<'b>> {
    match (payload, offset) {
        (Some(p), Some(off)) if off != 0 => fb::Buffer::create(
            fbb,
            &fb::BufferArgs {
                data: None,
                offset: off,
                size: p.len() as u64,
            },
        ),
        (Some(p), _) => {
            // A deferred pruned payload is computed here, copied in and dropped.
            let data = match deferred.get(p) {
                Some(r) => fbb.create_vector(as_aligned(&r.materialize(true))),
                None => fbb.create_vector(as_aligned(p)),
            };
            fb::Buffer::create(
                fbb,
                &fb::BufferArgs {
                    data: Some(data),
                    offset: 0,
                    size: 0,
                },
            )
        }
        (None, _) => fb::Buffer::create(
            fbb,
            &fb::BufferArgs {
                data: None,
                offset: 0,
                size: 0,
            },
        ),
    }
}

/// `ModelT::pack` with buffers packed by [`pack_buffer`].
fn pack_model<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    doc: &TfliteDocument,
    offsets: Option<&[u64]>,
) -> WIPOffset<fb::Model<'b>> {
    let m = &doc.model;
    // Buffers first: the builder writes back to front, so they end up at the end of the file,
    // after the graph structure, as TensorFlow's converter lays them out.
    let buffers = m.buffers.as_ref().map(|_| {
        let w: Vec<_> = (0..doc.buffers.len())
            .map(|i| {
                pack_buffer(
                    fbb,
                    doc.buffers[i].as_ref(),
                    offsets.map(|o| o[i]),
                    &doc.deferred,
                )
            })
            .collect();
        fbb.create_vector(&w)
    });
    let operator_codes = m.operator_codes.as_ref().map(|x| {
        let w: Vec<_> = x.iter().map(|t| t.pack(fbb)).collect();
        fbb.create_vector(&w)
    });
    let subgraphs = m.subgraphs.as_ref().map(|x| {
        let w: Vec<_> = x.iter().map(|t| t.pack(fbb)).collect();
        fbb.create_vector(&w)
    });
    let description = m.description.as_ref().map(|x| fbb.create_string(x));
    let metadata_buffer = m.metadata_buffer.as_ref().map(|x| fbb.create_vector(x));
    let metadata = m.metadata.as_ref().map(|x| {
        let w: Vec<_> = x.iter().map(|t| t.pack(fbb)).collect();
        fbb.create_vector(&w)
    });
    let signature_defs = m.signature_defs.as_ref().map(|x| {
        let w: Vec<_> = x.iter().map(|t| t.pack(fbb)).collect();
        fbb.create_vector(&w)
    });
    let external_buffer_groups = m.external_buffer_groups.as_ref().map(|x| {
        let w: Vec<_> = x.iter().map(|t| t.pack(fbb)).collect();
        fbb.create_vector(&w)
    });
    let external_buffers = m.external_buffers.as_ref().map(|x| {
        let w: Vec<_> = x.iter().map(|t| t.pack(fbb)).collect();
        fbb.create_vector(&w)
    });
    fb::Model::create(
        fbb,
        &fb::ModelArgs {
            version: m.version,
            operator_codes,
            subgraphs,
            description,
            buffers,
            metadata_buffer,
            metadata,
            signature_defs,
            external_buffer_groups,
            external_buffers,
        },
    )
}
