//! `pare inspect`: what a model file contains.
//!
//! Layer: checks (imports its own layer and the ones below; see ARCHITECTURE.md).

use crate::document::Document;
use crate::error::Result;
use crate::model::stats::{self, LayerStats, Totals};
use crate::model::{shape_to_string, Dim, FormatInfo, Graph, Quant};
use crate::text::ellipsize;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;

#[derive(Debug, Clone, Serialize)]
pub struct IoInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Option<Vec<Dim>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    /// Bytes of the model file plus its external data files.
    pub file_bytes: u64,
    /// The same bytes compressed with gzip at level 9 (`gzip -9`; in 8 MiB members, see
    /// [`compressed_sizes`]); absent when not measured (`--no-compressed-sizes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gzip_bytes: Option<u64>,
    /// The same bytes compressed with zstd at level [`ZSTD_LEVEL`] (`zstd -9`; in 8 MiB
    /// frames); absent when not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zstd_bytes: Option<u64>,
}

/// zstd level of [`Sizes::zstd_bytes`]. On model files (float weights, index arrays) level 19
/// compresses 0–4% better than 9 but runs 30–150 times slower (measured on a MobileNetV2
/// export, dense and 87.5% sparse: 9 s instead of 0.06 s for 8.8 MB), which would dominate
/// every command on large models.
pub const ZSTD_LEVEL: i32 = 9;

/// A written model's sizes against its input's: how many times smaller it is, raw and
/// compressed (greater than 1 when smaller).
#[derive(Debug, Clone, Serialize)]
pub struct SizeComparison {
    pub original: Sizes,
    pub written: Sizes,
    pub file_ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gzip_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zstd_ratio: Option<f64>,
}

impl SizeComparison {
    pub fn new(original: Sizes, written: Sizes) -> Self {
        let r = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let ro = |a: Option<u64>, b: Option<u64>| Some(r(a?, b?));
        SizeComparison {
            file_ratio: r(original.file_bytes, written.file_bytes),
            gzip_ratio: ro(original.gzip_bytes, written.gzip_bytes),
            zstd_ratio: ro(original.zstd_bytes, written.zstd_bytes),
            original,
            written,
        }
    }

    /// One line per measure: `file  70200 -> 12011 bytes  (5.84x smaller)`.
    pub fn render(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let o = &self.original;
        let n = &self.written;
        writeln!(
            w,
            "  {:<9} {:>12} -> {:>12} bytes  ({:.2}x smaller)",
            "file", o.file_bytes, n.file_bytes, self.file_ratio
        )?;
        for (what, a, b, r) in [
            ("gzip -9", o.gzip_bytes, n.gzip_bytes, self.gzip_ratio),
            ("zstd -9", o.zstd_bytes, n.zstd_bytes, self.zstd_ratio),
        ] {
            if let (Some(a), Some(b), Some(r)) = (a, b, r) {
                writeln!(w, "  {what:<9} {a:>12} -> {b:>12} bytes  ({r:.2}x smaller)")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub schema: &'static str,
    pub path: String,
    pub info: FormatInfo,
    pub graphs: usize,
    pub nodes: usize,
    pub inputs: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
    pub op_histogram: BTreeMap<String, usize>,
    pub layers: Vec<LayerStats>,
    pub totals: Totals,
    pub sizes: Sizes,
}

fn io_info(g: &Graph, ids: &[usize]) -> Vec<IoInfo> {
    ids.iter()
        .map(|&id| {
            let t = g.tensor(id);
            IoInfo {
                name: t.name.clone(),
                dtype: t.dtype.to_string(),
                shape: t.shape.clone(),
                quantization: t.quant.clone(),
            }
        })
        .collect()
}

/// Bytes compressed per gzip member / zstd frame: sizes are measured on blocks of this size
/// in parallel. Both formats allow concatenated members/frames (`gunzip` and `zstd -d` read
/// them as one file, as `pigz -i` writes), so each size is the exact size of a valid file; a
/// block starts without the previous block's history, which costs well under 0.1% on model
/// files (and nothing on files smaller than one block, which are one stream).
const COMPRESS_BLOCK: usize = 8 << 20;

/// A writer that only counts.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// gzip level 9 size of one block.
fn gzip_block(b: &[u8]) -> u64 {
    let mut enc = flate2::write::GzEncoder::new(Counter(0), flate2::Compression::best());
    enc.write_all(b).expect("writing to a counter cannot fail");
    enc.finish().expect("writing to a counter cannot fail").0
}

/// zstd size (level [`ZSTD_LEVEL`]) of one block. The size is pledged, as the `zstd` command
/// does for a file: zstd then sizes its tables for the input. Without it a 70 KB model got
/// level 9's full tables, about 45 MB a block, and two files measured in parallel beside a
/// validation took its peak from 14 MB to 150 MB.
fn zstd_block(b: &[u8]) -> u64 {
    let mut enc =
        zstd::stream::write::Encoder::new(Counter(0), ZSTD_LEVEL).expect("a valid zstd level");
    enc.set_pledged_src_size(Some(b.len() as u64))
        .expect("a size before any data");
    enc.write_all(b).expect("writing to a counter cannot fail");
    enc.finish().expect("writing to a counter cannot fail").0
}

/// gzip -9 and zstd sizes of the given byte slices taken as one file, measured on
/// [`COMPRESS_BLOCK`]-sized blocks on all cores.
pub fn compressed_sizes(parts: &[&[u8]]) -> (u64, u64) {
    use rayon::prelude::*;
    let blocks: Vec<&[u8]> = parts
        .iter()
        .flat_map(|p| p.chunks(COMPRESS_BLOCK))
        .collect();
    if blocks.is_empty() {
        return (gzip_block(&[]), zstd_block(&[]));
    }
    blocks
        .par_iter()
        .map(|b| (gzip_block(b), zstd_block(b)))
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Sizes of the files at `paths` taken as one file; compressed sizes only with `compressed`.
pub fn sizes_of(paths: &[std::path::PathBuf], compressed: bool) -> Result<Sizes> {
    let parts = paths
        .iter()
        .map(|p| crate::io::map_file(p))
        .collect::<Result<Vec<_>>>()?;
    let file_bytes = parts.iter().map(|p| p.len() as u64).sum();
    if !compressed {
        return Ok(Sizes {
            file_bytes,
            gzip_bytes: None,
            zstd_bytes: None,
        });
    }
    let slices: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
    let (gzip_bytes, zstd_bytes) = compressed_sizes(&slices);
    Ok(Sizes {
        file_bytes,
        gzip_bytes: Some(gzip_bytes),
        zstd_bytes: Some(zstd_bytes),
    })
}

/// The files a model consists of: the model file, then its external data files.
pub fn model_files(doc: &Document) -> Result<Vec<std::path::PathBuf>> {
    let mut files = vec![doc.path().to_path_buf()];
    if let Document::Onnx(d) = doc {
        files.extend(d.external_paths()?);
    }
    Ok(files)
}

/// Sizes of the model's files as stored (model file plus external data), compressed sizes
/// included when `compressed`.
pub fn file_sizes(doc: &Document, compressed: bool) -> Result<Sizes> {
    sizes_of(&model_files(doc)?, compressed)
}

pub fn inspect(doc: &Document) -> Result<InspectReport> {
    let model = doc.to_model()?;
    // Shapes come from tract, which needs sparse initializers densified.
    let inferred = match doc {
        Document::Onnx(d) if d.dense.is_empty() => crate::verify::onnx_value_shapes(d),
        Document::Onnx(_) => match doc.densified()? {
            Document::Onnx(d) => crate::verify::onnx_value_shapes(&d),
            Document::Tflite(_) => unreachable!("densifying keeps the format"),
        },
        Document::Tflite(_) => Default::default(),
    };
    let (layers, totals) = stats::collect(&model.graphs, &inferred);
    let mut op_histogram = BTreeMap::new();
    for g in &model.graphs {
        for n in &g.nodes {
            *op_histogram.entry(n.op.clone()).or_insert(0) += 1;
        }
    }
    let main = model.main();
    Ok(InspectReport {
        schema: "pare.inspect/1",
        path: doc.path().display().to_string(),
        info: model.info.clone(),
        graphs: model.graphs.len(),
        nodes: model.graphs.iter().map(|g| g.nodes.len()).sum(),
        inputs: io_info(main, &main.inputs),
        outputs: io_info(main, &main.outputs),
        op_histogram,
        layers,
        totals,
        sizes: file_sizes(doc, true)?,
    })
}

fn human_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=9_999_999 => format!("{:.1}K", n as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}G", n as f64 / 1e9),
    }
}

fn io_line(io: &IoInfo) -> String {
    let mut s = format!(
        "  {}  {}  {}",
        io.name,
        io.dtype,
        shape_to_string(io.shape.as_deref())
    );
    if let Some(q) = &io.quantization {
        if q.scale.len() == 1 {
            s += &format!(
                "  scale={} zero_point={}",
                q.scale[0],
                q.zero_point.first().copied().unwrap_or(0)
            );
        } else {
            s += &format!(
                "  per-axis quantization ({} scales, axis {:?})",
                q.scale.len(),
                q.axis
            );
        }
    }
    s
}

/// Renders the report as the human-readable text `pare inspect` prints.
pub fn render(r: &InspectReport, w: &mut dyn Write) -> std::io::Result<()> {
    writeln!(w, "{}", r.path)?;
    match &r.info {
        FormatInfo::Onnx {
            ir_version,
            opsets,
            producer_name,
            producer_version,
            metadata,
            external_data_files,
            ..
        } => {
            let ops: Vec<String> = opsets
                .iter()
                .map(|(d, v)| format!("{}={v}", if d.is_empty() { "ai.onnx" } else { d }))
                .collect();
            writeln!(
                w,
                "format     ONNX, IR version {ir_version}, opsets {}",
                ops.join(" ")
            )?;
            writeln!(w, "producer   {producer_name} {producer_version}")?;
            if !metadata.is_empty() {
                writeln!(w, "metadata   {} entries", metadata.len())?;
            }
            if !external_data_files.is_empty() {
                writeln!(w, "external   {}", external_data_files.join(", "))?;
            }
        }
        FormatInfo::Tflite {
            schema_version,
            description,
            subgraphs,
            min_runtime_version,
            signatures,
            metadata,
            offset_buffers,
            ..
        } => {
            writeln!(
                w,
                "format     TFLite, schema version {schema_version}, {subgraphs} subgraph(s)"
            )?;
            if !description.is_empty() {
                writeln!(w, "producer   {description}")?;
            }
            if let Some(v) = min_runtime_version {
                writeln!(w, "runtime    min_runtime_version {v}")?;
            }
            if !signatures.is_empty() {
                writeln!(w, "signatures {}", signatures.join(", "))?;
            }
            if !metadata.is_empty() {
                writeln!(w, "metadata   {}", metadata.join(", "))?;
            }
            if *offset_buffers > 0 {
                writeln!(
                    w,
                    "buffers    {offset_buffers} stored after the flatbuffer (large-model form)"
                )?;
            }
        }
    }
    writeln!(w, "graphs     {} ({} nodes)", r.graphs, r.nodes)?;
    writeln!(w, "inputs")?;
    for io in &r.inputs {
        writeln!(w, "{}", io_line(io))?;
    }
    writeln!(w, "outputs")?;
    for io in &r.outputs {
        writeln!(w, "{}", io_line(io))?;
    }
    let hist: Vec<String> = r
        .op_histogram
        .iter()
        .map(|(op, n)| format!("{op}×{n}"))
        .collect();
    writeln!(w, "ops        {}", hist.join("  "))?;
    if !r.layers.is_empty() {
        writeln!(w)?;
        let name_w = r
            .layers
            .iter()
            .map(|l| l.node.len())
            .max()
            .unwrap_or(4)
            .clamp(4, 48);
        let op_w = r
            .layers
            .iter()
            .map(|l| l.op.len())
            .max()
            .unwrap_or(2)
            .max(2);
        writeln!(
            w,
            "{:<name_w$}  {:<op_w$}  {:<18}  {:>5}  {:>9}  {:>9}  {:>8}  {:>9}",
            "layer", "op", "weight shape", "dtype", "params", "nonzeros", "sparsity", "MACs"
        )?;
        for l in &r.layers {
            let shape: Vec<String> = l.shape.iter().map(|d| d.to_string()).collect();
            let name = ellipsize(&l.node, name_w);
            writeln!(
                w,
                "{:<name_w$}  {:<op_w$}  {:<18}  {:>5}  {:>9}  {:>9}  {:>8}  {:>9}",
                name,
                l.op,
                shape.join("x"),
                if l.stored_sparse {
                    format!("{}*", l.dtype)
                } else {
                    l.dtype.to_string()
                },
                human_count(l.params),
                l.nonzeros.map(human_count).unwrap_or_else(|| "?".into()),
                l.sparsity
                    .map(|s| format!("{:.1}%", s * 100.0))
                    .unwrap_or_else(|| "?".into()),
                l.macs.map(human_count).unwrap_or_else(|| "?".into()),
            )?;
        }
    }
    writeln!(w)?;
    let t = &r.totals;
    writeln!(
        w,
        "params     {} ({} nonzero, {:.1}% sparse)",
        human_count(t.params),
        human_count(t.nonzero_params),
        t.sparsity * 100.0
    )?;
    if t.sparse_tensors > 0 {
        writeln!(
            w,
            "sparse     {} constants stored sparse (* above): {} bytes stored, {} dense",
            t.sparse_tensors, t.sparse_stored_bytes, t.sparse_dense_bytes
        )?;
    }
    let note = if t.layers_without_macs > 0 {
        format!(" ({} layer(s) without a MAC count)", t.layers_without_macs)
    } else {
        String::new()
    };
    writeln!(
        w,
        "MACs       {} at the declared input shape, dynamic dims as 1{note}",
        human_count(t.macs)
    )?;
    writeln!(
        w,
        "size       {} bytes, {} with gzip -9, {} with zstd -9",
        r.sizes.file_bytes,
        r.sizes.gzip_bytes.unwrap_or_default(),
        r.sizes.zstd_bytes.unwrap_or_default()
    )?;
    Ok(())
}
