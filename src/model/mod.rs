//! The format-neutral view of a model that pruning and reporting work on.
//!
//! It is a *view*: readers build it from the decoded document (ONNX `ModelProto`, TFLite
//! `ModelT`), weight data stays in the document's buffers (`Bytes` slices, no copy), and writers
//! apply edits back to the document. Everything pare does not model stays in the document and
//! survives untouched.
//!
//! Layer: core (imports its own layer and the ones below; see ARCHITECTURE.md).

mod dtype;
pub mod payload;
pub mod stats;

pub use dtype::DType;

use bytes::Bytes;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Onnx,
    Tflite,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Onnx => "onnx",
            Format::Tflite => "tflite",
        })
    }
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(u64),
    /// A symbolic or unknown dimension (ONNX `dim_param`, TFLite `-1` in `shape_signature`).
    Dynamic(String),
}

impl Dim {
    pub fn fixed(&self) -> Option<u64> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Dynamic(_) => None,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Dynamic(s) if s.is_empty() => f.write_str("?"),
            Dim::Dynamic(s) => f.write_str(s),
        }
    }
}

pub fn shape_to_string(shape: Option<&[Dim]>) -> String {
    match shape {
        None => "?".into(),
        Some(dims) => {
            let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("[{}]", parts.join(","))
        }
    }
}

/// Affine quantization: real = scale * (q - zero_point), per tensor or along `axis`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quant {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub axis: Option<usize>,
}

pub type TensorId = usize;

#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    /// `None` when the rank is unknown.
    pub shape: Option<Vec<Dim>>,
    pub quant: Option<Quant>,
    /// Constant data, little-endian, dense. `None` for activations.
    pub data: Option<Bytes>,
    /// True when the constant is stored sparsely in the file (TFLite `sparsity`, ONNX
    /// `sparse_initializer`); `data` is then absent and `stored_bytes` is what the file holds.
    pub sparse: bool,
    /// Bytes the constant occupies in the file.
    pub stored_bytes: u64,
    /// Where the constant's data lives in the document, for edits: the ONNX TensorProto's
    /// position in `onnx::tensor::for_each_tensor` order, or the TFLite buffer index. Two views
    /// of one stored tensor (a shared buffer, an ONNX initializer seen from a nested graph)
    /// have the same handle.
    pub handle: Option<usize>,
}

impl Tensor {
    pub fn is_const(&self) -> bool {
        self.data.is_some() || self.sparse
    }

    /// Number of elements, when the shape is fully known.
    pub fn numel(&self) -> Option<u64> {
        let shape = self.shape.as_ref()?;
        shape
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(d.fixed()?))
    }

    pub fn fixed_shape(&self) -> Option<Vec<u64>> {
        self.shape.as_ref()?.iter().map(|d| d.fixed()).collect()
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    /// Op type as the format names it (`Conv`, `CONV_2D`, a custom op's name …).
    pub op: String,
    /// Inputs by tensor id; `None` for an omitted optional input.
    pub inputs: Vec<Option<TensorId>>,
    pub outputs: Vec<TensorId>,
    /// Attributes pare reasons about, parsed into one small neutral form.
    pub attrs: Attrs,
}

/// The handful of attributes the algorithms care about. Everything else stays in the document.
#[derive(Debug, Clone, Default)]
pub struct Attrs {
    pub group: Option<u64>,
    pub kernel: Option<Vec<u64>>,
    pub strides: Option<Vec<u64>>,
    pub axis: Option<i64>,
    /// Gemm `transB`, TFLite BATCH_MATMUL `adj_y`: the weight is stored [N, K].
    pub trans_b: bool,
    pub depth_multiplier: Option<u64>,
    /// Transpose `perm` (ONNX attribute; TFLite reads it from a constant input).
    pub perm: Option<Vec<i64>>,
    /// Axes of Reduce*/Squeeze/Unsqueeze when given as an attribute (ONNX before opsets 13/18,
    /// TFLite SQUEEZE `squeeze_dims`).
    pub axes: Option<Vec<i64>>,
    /// Reduce ops: keep the reduced axes as size 1 (ONNX `keepdims`, TFLite `keep_dims`).
    pub keepdims: Option<bool>,
    /// ONNX Pad `pads` before opset 11 (later opsets take them as an input).
    pub pads: Option<Vec<i64>>,
    /// BatchNormalization / normalization `epsilon`.
    pub epsilon: Option<f32>,
    /// TFLite RESHAPE `new_shape` option.
    pub new_shape: Option<Vec<i64>>,
    /// Gemm `transA`.
    pub trans_a: bool,
    /// A fused activation (TFLite `fused_activation_function`): RELU, RELU6, RELU_N1_TO_1, TANH.
    pub fused_activation: Option<String>,
    /// The weight is stored in a packed layout, not a plain matrix (TFLite FULLY_CONNECTED
    /// `SHUFFLED4x16INT8`).
    pub packed_weights: bool,
    /// LeakyRelu `alpha`.
    pub alpha: Option<f32>,
    /// Convolution `dilations` (TFLite `dilation_h_factor`, `dilation_w_factor`).
    pub dilations: Option<Vec<u64>>,
    /// Convolution `auto_pad` (ONNX: NOTSET, SAME_UPPER, SAME_LOWER, VALID; TFLite padding
    /// SAME reads as SAME_UPPER, VALID as VALID).
    pub auto_pad: Option<String>,
}

/// One graph: the main graph, a TFLite subgraph, or an ONNX If/Loop/Scan body.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: String,
    pub tensors: Vec<Tensor>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
}

impl Graph {
    pub fn tensor(&self, id: TensorId) -> &Tensor {
        &self.tensors[id]
    }
}

/// A part of the main graph to run on its own (sequential calibration runs a model stage by
/// stage, each fed with the activations the previous one left): its nodes, the tensors it is
/// fed, the tensors it must give.
#[derive(Debug, Clone, Default)]
pub struct Segment {
    /// Main-graph node indices, in topological order.
    pub nodes: Vec<usize>,
    /// Tensors fed from outside, with their type and shape.
    pub inputs: Vec<(TensorId, DType, Vec<usize>)>,
    /// Tensors fixed to one value (small integer tensors such as computed shapes, which a
    /// runtime needs as constants): type, shape and little-endian bytes.
    pub constants: Vec<(TensorId, DType, Vec<usize>, Bytes)>,
    pub outputs: Vec<TensorId>,
}

/// Format metadata shown by `inspect`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum FormatInfo {
    Onnx {
        ir_version: i64,
        opsets: Vec<(String, i64)>,
        producer_name: String,
        producer_version: String,
        domain: String,
        model_version: i64,
        metadata: Vec<(String, String)>,
        external_data_files: Vec<String>,
    },
    Tflite {
        schema_version: u32,
        description: String,
        subgraphs: usize,
        operator_codes: usize,
        buffers: usize,
        min_runtime_version: Option<String>,
        metadata: Vec<String>,
        signatures: Vec<String>,
        /// Buffers stored after the flatbuffer (the form used by files over 2 GiB).
        offset_buffers: usize,
    },
}

/// The view of a whole model: graph 0 is the main graph.
#[derive(Debug, Clone)]
pub struct Model {
    pub format: Format,
    pub info: FormatInfo,
    pub graphs: Vec<Graph>,
}

impl Model {
    pub fn main(&self) -> &Graph {
        &self.graphs[0]
    }
}

/// Structural edits to a document, built by channel pruning and applied by each format's
/// writer: new payloads and dimensions for constants, new channel counts for activations,
/// and the attributes that follow them. Everything not named here stays as it was.
#[derive(Debug, Default, Clone)]
pub struct StructureEdits {
    /// Constants with new dimensions and payload, by storage handle.
    pub constants: std::collections::HashMap<usize, ConstantEdit>,
    /// Declared shapes of main-graph values whose channel count changed.
    pub dims: Vec<DimEdit>,
    /// ONNX `group` attributes of main-graph nodes (depthwise convolutions).
    pub groups: Vec<(usize, u64)>,
    /// TFLite RESHAPE `new_shape` options: (node, position, value).
    pub new_shapes: Vec<(usize, usize, i64)>,
    /// Constants that one reader needs sliced and others need whole: that reader (main-graph
    /// node, input slot) gets its own copy of `tensor`, with this shape and payload.
    pub copies: Vec<CopyEdit>,
}

#[derive(Debug, Clone)]
pub struct CopyEdit {
    pub node: usize,
    pub slot: usize,
    pub tensor: TensorId,
    pub name: String,
    pub edit: ConstantEdit,
}

#[derive(Debug, Clone)]
pub struct ConstantEdit {
    pub dims: Vec<u64>,
    pub data: Bytes,
    /// The slices applied: (axis, kept positions). Per-channel quantization stored on the
    /// tensor (TFLite) along one of these axes is sliced the same way.
    pub keeps: Vec<(usize, Vec<usize>)>,
}

#[derive(Debug, Clone)]
pub struct DimEdit {
    pub tensor: TensorId,
    pub name: String,
    pub axis: usize,
    pub len: u64,
}
