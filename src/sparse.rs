//! Sparse tensor encodings, format-neutral: TFLite's `SparsityParameters` (a traversal order
//! over the dimensions and optional dense blocks, each level stored DENSE or SPARSE_CSR) and
//! ONNX's `SparseTensorProto` (ascending linear indices of the non-zero values).
//!
//! "Zero" is the all-zero byte pattern of an element (`0.0`, `0`; `-0.0` is kept as a value),
//! which is what densifying fills in, so encode → decode is exact bit for bit.
//!
//! Decoders check everything a damaged file can get wrong (index ranges, ordering, segment
//! arrays, value counts, sizes) before writing a byte, and never allocate more than
//! [`max_dense_bytes`] allows.

use serde::Serialize;

/// How constants are stored in a written model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// As they were read: sparse constants stay sparse, dense ones dense.
    Keep,
    /// Each eligible weight in the smaller of its dense and sparse encodings.
    Auto,
    /// Every eligible weight sparse, smaller or not.
    Sparse,
    /// Every constant dense (a sparse model densified back).
    Dense,
}

impl std::str::FromStr for Storage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep" => Ok(Storage::Keep),
            "auto" => Ok(Storage::Auto),
            "sparse" => Ok(Storage::Sparse),
            "dense" => Ok(Storage::Dense),
            _ => Err(format!("{s:?}: expected keep, auto, sparse or dense")),
        }
    }
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Storage::Keep => "keep",
            Storage::Auto => "auto",
            Storage::Sparse => "sparse",
            Storage::Dense => "dense",
        })
    }
}

/// What the storage pass of a write does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoragePolicy {
    pub storage: Storage,
    /// Also try TFLite block layouts of (rows, cols) on the first and last dimensions (the
    /// blocks of `--pattern block:RxC`).
    pub block: Option<(usize, usize)>,
}

impl StoragePolicy {
    pub fn new(storage: Storage) -> Self {
        StoragePolicy {
            storage,
            block: None,
        }
    }
}

/// One constant stored sparse in a written model.
#[derive(Debug, Clone, Serialize)]
pub struct SparseTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Fraction of non-zero elements.
    pub density: f64,
    pub dense_bytes: u64,
    /// Values plus index arrays.
    pub stored_bytes: u64,
    /// The encoding: TFLite levels (`d0,d1:csr`, blocks) or ONNX `coo int64`.
    pub layout: String,
}

/// What the storage pass did.
#[derive(Debug, Clone, Serialize)]
pub struct StorageReport {
    pub storage: Storage,
    /// Dense constants this write stored sparse.
    pub made_sparse: usize,
    /// Sparse constants this write stored dense.
    pub densified: usize,
    /// Every sparse constant of the written model.
    pub sparse_tensors: Vec<SparseTensor>,
    /// Their bytes dense, and as stored.
    pub sparse_dense_bytes: u64,
    pub sparse_stored_bytes: u64,
}

impl StorageReport {
    pub fn new(storage: Storage) -> Self {
        StorageReport {
            storage,
            made_sparse: 0,
            densified: 0,
            sparse_tensors: vec![],
            sparse_dense_bytes: 0,
            sparse_stored_bytes: 0,
        }
    }

    /// Fills the totals from `sparse_tensors`.
    pub fn total(&mut self) {
        self.sparse_dense_bytes = self.sparse_tensors.iter().map(|t| t.dense_bytes).sum();
        self.sparse_stored_bytes = self.sparse_tensors.iter().map(|t| t.stored_bytes).sum();
    }
}

/// One level of a TFLite sparse layout, in traversal order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// Every index of the (blocked) dimension is present.
    Dense { size: usize },
    /// Compressed: entry `p` of the parent level owns `indices[segments[p]..segments[p + 1]]`.
    Csr {
        segments: Vec<u32>,
        indices: Vec<u32>,
    },
}

/// TFLite `SparsityParameters` in neutral form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// A permutation of the tensor's dimensions, then the block dimensions `n, n+1, …`.
    pub traversal_order: Vec<usize>,
    /// The original dimension each block dimension subdivides, ascending.
    pub block_map: Vec<usize>,
    /// One per entry of `traversal_order`.
    pub levels: Vec<Level>,
}

/// How to encode: the shape of a [`Layout`] before the data decides its index arrays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Permutation of the tensor's dimensions (block dimensions follow implicitly).
    pub order: Vec<usize>,
    /// (dimension, block size), dimensions ascending; stored as dense blocks.
    pub blocks: Vec<(usize, usize)>,
    /// Position in `order` of the one SPARSE_CSR level; every other level is DENSE.
    pub csr: usize,
}

/// Deepest layout accepted (rank plus block dimensions).
pub const MAX_LEVELS: usize = 16;

/// The largest dense tensor a sparse one may expand to: 64 MiB, or 1024 times the bytes it is
/// stored in, whichever is larger. Real pruned weights are a few times larger dense than
/// sparse; a damaged shape must not become a huge allocation.
pub fn max_dense_bytes(stored: usize) -> usize {
    (stored.saturating_mul(1024)).max(64 << 20)
}

fn is_zero(e: &[u8]) -> bool {
    e.iter().all(|&b| b == 0)
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1];
    }
    s
}

fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Per level: its (blocked) extent and how far one step moves in the dense tensor.
struct Geometry {
    extent: Vec<usize>,
    step: Vec<usize>,
}

impl Geometry {
    fn new(shape: &[usize], order: &[usize], blocks: &[(usize, usize)]) -> Result<Self, String> {
        let n = shape.len();
        let st = strides(shape);
        let mut extent = Vec::with_capacity(order.len() + blocks.len());
        let mut step = Vec::with_capacity(order.len() + blocks.len());
        for &d in order {
            let b = blocks.iter().find(|b| b.0 == d).map_or(1, |b| b.1);
            extent.push(shape[d] / b);
            step.push(st[d] * b);
        }
        for &(d, b) in blocks {
            if d >= n {
                return Err(format!("block dimension {d} is outside rank {n}"));
            }
            extent.push(b);
            step.push(st[d]);
        }
        Ok(Geometry { extent, step })
    }
}

/// Expands TFLite sparse `values` (elements of `elem` bytes) into the dense tensor of `shape`.
pub fn densify(
    shape: &[usize],
    elem: usize,
    values: &[u8],
    layout: &Layout,
) -> Result<Vec<u8>, String> {
    let geo = check_layout(shape, layout)?;
    if elem == 0 || values.len() % elem != 0 {
        return Err(format!(
            "the value buffer ({} bytes) is not a whole number of {elem}-byte elements",
            values.len()
        ));
    }
    let nvalues = values.len() / elem;
    // A dense level may hold more entries than there are values only when a CSR level below
    // thins them out again, and then that level's segment array (in the file) has one offset
    // per entry: so no count exceeds this bound.
    let bound = layout
        .levels
        .iter()
        .map(|l| match l {
            Level::Csr { segments, .. } => segments.len(),
            Level::Dense { .. } => 0,
        })
        .max()
        .unwrap_or(0)
        .max(nvalues);
    // Walk the levels once to count the entries each holds, checking the index arrays.
    let mut entries = 1usize;
    for (i, level) in layout.levels.iter().enumerate() {
        match level {
            Level::Dense { size } => {
                entries = entries
                    .checked_mul(*size)
                    .filter(|&e| e <= bound)
                    .ok_or_else(|| {
                        format!("level {i}: more dense entries than the {nvalues} stored values")
                    })?;
            }
            Level::Csr { segments, indices } => {
                if segments.len() != entries + 1 {
                    return Err(format!(
                        "level {i}: {} segment offsets where the parent level has {entries} entries (expected {})",
                        segments.len(),
                        entries + 1
                    ));
                }
                if segments[0] != 0 || *segments.last().unwrap() as usize != indices.len() {
                    return Err(format!(
                        "level {i}: segments must run from 0 to the index count {}",
                        indices.len()
                    ));
                }
                let extent = geo.extent[i];
                for (p, w) in segments.windows(2).enumerate() {
                    if w[0] > w[1] || w[1] as usize > indices.len() {
                        return Err(format!(
                            "level {i}: segment offsets decrease or pass the index count at {p}"
                        ));
                    }
                    let seg = &indices[w[0] as usize..w[1] as usize];
                    if let Some(&bad) = seg.iter().find(|&&x| x as usize >= extent) {
                        return Err(format!(
                            "level {i}: index {bad} is out of range for a dimension of {extent}"
                        ));
                    }
                    if seg.windows(2).any(|x| x[0] >= x[1]) {
                        return Err(format!(
                            "level {i}: indices in segment {p} are not strictly ascending"
                        ));
                    }
                }
                entries = indices.len();
            }
        }
    }
    if entries != nvalues {
        return Err(format!(
            "the layout addresses {entries} values but the buffer holds {nvalues}"
        ));
    }
    let numel = checked_numel(shape).ok_or("the shape overflows")?;
    let bytes = numel
        .checked_mul(elem)
        .filter(|&b| b <= max_dense_bytes(values.len()))
        .ok_or_else(|| {
            format!(
                "the dense tensor would be unreasonably large for {} stored bytes",
                values.len()
            )
        })?;
    let mut out = Vec::new();
    out.try_reserve_exact(bytes)
        .map_err(|_| format!("cannot allocate {bytes} bytes for the dense tensor"))?;
    out.resize(bytes, 0);
    let mut next = 0usize;
    walk_decode(layout, &geo, 0, 0, 0, &mut |offset| {
        let src = &values[next * elem..(next + 1) * elem];
        out[offset * elem..(offset + 1) * elem].copy_from_slice(src);
        next += 1;
    });
    Ok(out)
}

/// Visits the dense offset of every stored value, in storage order.
fn walk_decode(
    layout: &Layout,
    geo: &Geometry,
    level: usize,
    parent: usize,
    offset: usize,
    f: &mut dyn FnMut(usize),
) {
    if level == layout.levels.len() {
        f(offset);
        return;
    }
    match &layout.levels[level] {
        Level::Dense { size } => {
            for i in 0..*size {
                walk_decode(
                    layout,
                    geo,
                    level + 1,
                    parent * size + i,
                    offset + i * geo.step[level],
                    f,
                );
            }
        }
        Level::Csr { segments, indices } => {
            let (start, end) = (segments[parent] as usize, segments[parent + 1] as usize);
            for (p, &i) in indices[start..end].iter().enumerate() {
                let i = i as usize;
                walk_decode(
                    layout,
                    geo,
                    level + 1,
                    start + p,
                    offset + i * geo.step[level],
                    f,
                );
            }
        }
    }
}

/// Checks a layout's structure against the dense shape: returns its geometry.
fn check_layout(shape: &[usize], layout: &Layout) -> Result<Geometry, String> {
    let n = shape.len();
    let k = layout.block_map.len();
    let total = layout.traversal_order.len();
    if n == 0 {
        return Err("a sparse tensor needs a rank of at least 1".into());
    }
    if total != n + k || layout.levels.len() != total {
        return Err(format!(
            "traversal order has {total} entries and there are {} dimension metadata for a rank-{n} tensor with {k} block dimensions (expected {} of each)",
            layout.levels.len(),
            n + k
        ));
    }
    if total > MAX_LEVELS {
        return Err(format!(
            "{total} levels (at most {MAX_LEVELS} are supported)"
        ));
    }
    let mut seen = vec![false; n];
    for &d in &layout.traversal_order[..n] {
        if d >= n || std::mem::replace(&mut seen[d], true) {
            return Err(format!(
                "traversal order {:?} does not start with a permutation of 0..{n}",
                layout.traversal_order
            ));
        }
    }
    if layout.traversal_order[n..]
        .iter()
        .enumerate()
        .any(|(b, &d)| d != n + b)
    {
        return Err(format!(
            "traversal order {:?}: block dimensions must follow in order",
            layout.traversal_order
        ));
    }
    if layout.block_map.windows(2).any(|w| w[0] >= w[1]) || layout.block_map.iter().any(|&d| d >= n)
    {
        return Err(format!(
            "block map {:?} must name distinct dimensions below {n}, ascending",
            layout.block_map
        ));
    }
    let mut blocks = Vec::with_capacity(k);
    for (b, &d) in layout.block_map.iter().enumerate() {
        let Level::Dense { size } = layout.levels[n + b] else {
            return Err(format!("block level {} must be dense", n + b));
        };
        if size == 0 || shape[d] % size != 0 {
            return Err(format!(
                "block size {size} does not divide dimension {d} ({})",
                shape[d]
            ));
        }
        blocks.push((d, size));
    }
    let geo = Geometry::new(shape, &layout.traversal_order[..n], &blocks)?;
    for (i, level) in layout.levels.iter().enumerate().take(n) {
        if let Level::Dense { size } = level {
            if *size != geo.extent[i] {
                return Err(format!(
                    "level {i} is dense with size {size}, but dimension {} has {} (blocked)",
                    layout.traversal_order[i], geo.extent[i]
                ));
            }
        }
    }
    Ok(geo)
}

/// Encodes a dense tensor with `plan`: the layout and the stored values (whole blocks, in
/// traversal order). Inverse of [`densify`].
pub fn encode(shape: &[usize], elem: usize, data: &[u8], plan: &Plan) -> (Layout, Vec<u8>) {
    let n = shape.len();
    let geo = Geometry::new(shape, &plan.order, &plan.blocks).expect("a plan made for this shape");
    let levels = n + plan.blocks.len();
    let mut traversal_order = plan.order.clone();
    traversal_order.extend(n..levels);
    let mut st = EncodeState {
        values: Vec::new(),
        segments: vec![0],
        indices: Vec::new(),
    };
    let csr = plan.csr;
    encode_level(data, elem, &geo, csr, 0, 0, &mut st);
    let levels = (0..levels)
        .map(|i| {
            if i == csr {
                Level::Csr {
                    segments: std::mem::take(&mut st.segments),
                    indices: std::mem::take(&mut st.indices),
                }
            } else {
                Level::Dense {
                    size: geo.extent[i],
                }
            }
        })
        .collect();
    let layout = Layout {
        traversal_order,
        block_map: plan.blocks.iter().map(|b| b.0).collect(),
        levels,
    };
    (layout, st.values)
}

struct EncodeState {
    values: Vec<u8>,
    segments: Vec<u32>,
    indices: Vec<u32>,
}

/// Stores the subtree at `level`; returns whether it holds a non-zero element. Only the CSR
/// level drops empty subtrees (values stored below it are rolled back).
fn encode_level(
    data: &[u8],
    elem: usize,
    geo: &Geometry,
    csr: usize,
    level: usize,
    offset: usize,
    st: &mut EncodeState,
) -> bool {
    if level == geo.extent.len() {
        let e = &data[offset * elem..(offset + 1) * elem];
        st.values.extend_from_slice(e);
        return !is_zero(e);
    }
    let mut any = false;
    for i in 0..geo.extent[level] {
        let mark = st.values.len();
        let nonzero = encode_level(
            data,
            elem,
            geo,
            csr,
            level + 1,
            offset + i * geo.step[level],
            st,
        );
        if level == csr {
            if nonzero {
                st.indices.push(i as u32);
            } else {
                st.values.truncate(mark);
            }
        }
        any |= nonzero;
    }
    if level == csr {
        st.segments.push(st.indices.len() as u32);
    }
    any
}

/// Bytes of the narrowest TFLite index vector (uint8, uint16, int32) holding values up to `max`.
pub fn index_width(max: u32) -> usize {
    match max {
        0..=0xff => 1,
        0x100..=0xffff => 2,
        _ => 4,
    }
}

/// Bytes a layout and its values occupy in a TFLite file (payloads only; the flatbuffer
/// tables around them add a few dozen bytes).
pub fn stored_bytes(layout: &Layout, values: usize) -> usize {
    values
        + layout
            .levels
            .iter()
            .map(|l| match l {
                Level::Dense { .. } => 0,
                Level::Csr { segments, indices } => {
                    let w = |v: &[u32]| v.len() * index_width(v.iter().copied().max().unwrap_or(0));
                    w(segments) + w(indices)
                }
            })
            .sum::<usize>()
}

/// The stored size of `plan` on `data` without building it: values, segments and indices.
pub fn plan_bytes(shape: &[usize], elem: usize, data: &[u8], plan: &Plan) -> usize {
    // Counting is a cheaper pass than encoding: units (blocks) with a non-zero element, and
    // how many CSR entries each parent gets.
    let n = shape.len();
    let geo = match Geometry::new(shape, &plan.order, &plan.blocks) {
        Ok(g) => g,
        Err(_) => return usize::MAX,
    };
    let levels = n + plan.blocks.len();
    // Units are the leaves of the CSR level's subtrees: one per (path to csr, csr index).
    let parents: usize = geo.extent[..plan.csr].iter().product();
    let below: usize = geo.extent[plan.csr + 1..levels].iter().product();
    let mut kept = 0usize;
    let mut offsets = Vec::new();
    // Dense offsets of the first element of every subtree below the CSR level are enumerated
    // by the levels after it; precompute them once.
    enumerate_offsets(&geo, plan.csr + 1, 0, &mut offsets);
    let mut max_index = 0u32;
    for_each_prefix(&geo, 0, plan.csr, 0, &mut |base| {
        for i in 0..geo.extent[plan.csr] {
            let start = base + i * geo.step[plan.csr];
            if offsets
                .iter()
                .any(|&o| !is_zero(&data[(start + o) * elem..(start + o + 1) * elem]))
            {
                kept += 1;
                max_index = max_index.max(i as u32);
            }
        }
    });
    kept * below * elem + (parents + 1) * index_width(kept as u32) + kept * index_width(max_index)
}

fn enumerate_offsets(geo: &Geometry, level: usize, offset: usize, out: &mut Vec<usize>) {
    if level == geo.extent.len() {
        out.push(offset);
        return;
    }
    for i in 0..geo.extent[level] {
        enumerate_offsets(geo, level + 1, offset + i * geo.step[level], out);
    }
}

fn for_each_prefix(
    geo: &Geometry,
    level: usize,
    end: usize,
    offset: usize,
    f: &mut dyn FnMut(usize),
) {
    if level == end {
        f(offset);
        return;
    }
    for i in 0..geo.extent[level] {
        for_each_prefix(geo, level + 1, end, offset + i * geo.step[level], f);
    }
}

/// The plans worth trying for a tensor: the CSR level on its last dimension, or on its
/// largest one (the other dimensions dense, in order), each with and without `block`
/// ((rows, cols) on the first and last dimensions, e.g. from `--pattern block:RxC`).
pub fn candidate_plans(shape: &[usize], block: Option<(usize, usize)>) -> Vec<Plan> {
    let n = shape.len();
    // Weights have rank 1 to 5; the encoder recurses once per level.
    if n == 0 || n > MAX_LEVELS / 2 || shape.contains(&0) {
        return vec![];
    }
    let last = n - 1;
    let largest = (0..n).max_by_key(|&d| (shape[d], d)).unwrap_or(last);
    let mut plans = Vec::new();
    let mut blockings = vec![vec![]];
    if let Some((r, c)) = block.filter(|_| n >= 2) {
        let mut b = Vec::new();
        if r > 1 && shape[0] % r == 0 {
            b.push((0, r));
        }
        if c > 1 && shape[last] % c == 0 {
            b.push((last, c));
        }
        if !b.is_empty() && b.len() == (r > 1) as usize + (c > 1) as usize {
            blockings.push(b);
        }
    }
    for blocks in blockings {
        for sparse_dim in [last, largest] {
            let mut order: Vec<usize> = (0..n).filter(|&d| d != sparse_dim).collect();
            order.push(sparse_dim);
            let plan = Plan {
                order,
                blocks: blocks.clone(),
                csr: n - 1,
            };
            if !plans.contains(&plan) {
                plans.push(plan);
            }
        }
    }
    plans
}

/// ONNX `SparseTensorProto` indices: ascending linear positions of the non-zero elements.
pub fn coo_encode(data: &[u8], elem: usize) -> (Vec<i64>, Vec<u8>) {
    let mut idx = Vec::new();
    let mut values = Vec::new();
    for (i, e) in data.chunks_exact(elem).enumerate() {
        if !is_zero(e) {
            idx.push(i as i64);
            values.extend_from_slice(e);
        }
    }
    (idx, values)
}

/// Non-zero element count (bytewise), for size decisions.
pub fn count_nonzero(data: &[u8], elem: usize) -> usize {
    // Element widths as integers: the compiler vectorizes these loops, the byte-wise
    // fallback it does not.
    fn count<const W: usize>(data: &[u8]) -> usize {
        data.chunks_exact(W)
            .filter(|e| e.iter().fold(0u8, |acc, &b| acc | b) != 0)
            .count()
    }
    match elem {
        1 => data.iter().filter(|&&b| b != 0).count(),
        2 => count::<2>(data),
        4 => data
            .chunks_exact(4)
            .filter(|e| u32::from_ne_bytes([e[0], e[1], e[2], e[3]]) != 0)
            .count(),
        8 => count::<8>(data),
        _ => data.chunks_exact(elem).filter(|e| !is_zero(e)).count(),
    }
}

/// [`count_nonzero`] that stops once the count passes `limit` (and then returns `limit + 1`):
/// deciding that a dense tensor stays dense reads only part of it.
pub fn count_nonzero_upto(data: &[u8], elem: usize, limit: usize) -> usize {
    // Counted in blocks of 16 Ki elements: fast loops, and an early stop within a block.
    const BLOCK: usize = 16 << 10;
    let mut n = 0usize;
    for block in data.chunks(BLOCK * elem.max(1)) {
        n += count_nonzero(block, elem);
        if n > limit {
            return limit.saturating_add(1);
        }
    }
    n
}

/// Expands ONNX sparse values at linear `indices` into a dense tensor of `numel` elements.
pub fn coo_densify(
    numel: usize,
    elem: usize,
    values: &[u8],
    indices: &[u64],
) -> Result<Vec<u8>, String> {
    if values.len() != indices.len() * elem {
        return Err(format!(
            "{} indices for {} values",
            indices.len(),
            values.len() / elem.max(1)
        ));
    }
    if let Some(w) = indices.windows(2).position(|w| w[0] >= w[1]) {
        return Err(format!(
            "indices are not strictly ascending at position {}",
            w + 1
        ));
    }
    if let Some(&last) = indices.last() {
        if last >= numel as u64 {
            return Err(format!("index {last} is out of range for {numel} elements"));
        }
    }
    let bytes = numel
        .checked_mul(elem)
        .filter(|&b| b <= max_dense_bytes(values.len() + indices.len() * 8))
        .ok_or("the dense tensor would be unreasonably large for its stored values")?;
    let mut out = Vec::new();
    out.try_reserve_exact(bytes)
        .map_err(|_| format!("cannot allocate {bytes} bytes for the dense tensor"))?;
    out.resize(bytes, 0);
    for (k, &i) in indices.iter().enumerate() {
        let i = i as usize;
        out[i * elem..(i + 1) * elem].copy_from_slice(&values[k * elem..(k + 1) * elem]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn csr_of_a_matrix_matches_tflite() {
        // The example of TFLite's sparsity documentation: a 4x4 matrix stored [DENSE, CSR].
        let m = f32s(&[
            1., 0., 2., 3., //
            0., 4., 0., 0., //
            0., 0., 5., 0., //
            0., 0., 0., 6.,
        ]);
        let plan = Plan {
            order: vec![0, 1],
            blocks: vec![],
            csr: 1,
        };
        let (layout, values) = encode(&[4, 4], 4, &m, &plan);
        assert_eq!(values, f32s(&[1., 2., 3., 4., 5., 6.]));
        assert_eq!(
            layout.levels[1],
            Level::Csr {
                segments: vec![0, 3, 4, 5, 6],
                indices: vec![0, 2, 3, 1, 2, 3]
            }
        );
        assert_eq!(densify(&[4, 4], 4, &values, &layout).unwrap(), m);
    }

    #[test]
    fn blocks_are_stored_whole() {
        // 2x4 matrix, 1x2 blocks along columns: the block (0, 1) holding [0, 7] is kept whole.
        let m = f32s(&[0., 0., 0., 7., 0., 0., 0., 0.]);
        let plan = Plan {
            order: vec![0, 1],
            blocks: vec![(1, 2)],
            csr: 1,
        };
        let (layout, values) = encode(&[2, 4], 4, &m, &plan);
        assert_eq!(values, f32s(&[0., 7.]));
        assert_eq!(layout.traversal_order, vec![0, 1, 2]);
        assert_eq!(layout.block_map, vec![1]);
        assert_eq!(densify(&[2, 4], 4, &values, &layout).unwrap(), m);
    }

    #[test]
    fn damaged_layouts_are_refused() {
        let m = f32s(&[1., 0., 0., 2.]);
        let plan = Plan {
            order: vec![0, 1],
            blocks: vec![],
            csr: 1,
        };
        let (layout, values) = encode(&[2, 2], 4, &m, &plan);
        let mut bad = layout.clone();
        bad.levels[1] = Level::Csr {
            segments: vec![0, 1, 2],
            indices: vec![0, 2],
        };
        assert!(densify(&[2, 2], 4, &values, &bad)
            .unwrap_err()
            .contains("out of range"));
        bad.levels[1] = Level::Csr {
            segments: vec![0, 2, 1],
            indices: vec![0, 1],
        };
        assert!(densify(&[2, 2], 4, &values, &bad).is_err());
        // A middle offset past the index count (found by the in-process fuzzer: it sliced out
        // of bounds before the decrease after it was seen).
        bad.levels[1] = Level::Csr {
            segments: vec![0, 100, 2],
            indices: vec![0, 1],
        };
        assert!(densify(&[2, 2], 4, &values, &bad)
            .unwrap_err()
            .contains("segment"));
        bad.levels[1] = Level::Csr {
            segments: vec![0, 1],
            indices: vec![0],
        };
        assert!(densify(&[2, 2], 4, &values, &bad)
            .unwrap_err()
            .contains("segment"));
        assert!(densify(&[2, 2], 4, &values[..4], &layout).is_err());
        bad = layout.clone();
        bad.traversal_order = vec![0, 0];
        assert!(densify(&[2, 2], 4, &values, &bad).is_err());
        // A huge declared shape is refused before any allocation.
        let mut huge = layout;
        huge.levels[0] = Level::Dense { size: 1 << 30 };
        assert!(densify(&[1 << 30, 2], 4, &values, &huge).is_err());
        assert!(coo_densify(4, 4, &values, &[3, 1]).is_err());
        assert!(coo_densify(4, 4, &values, &[1, 4]).is_err());
        assert!(coo_densify(1 << 40, 4, &values, &[1, 4]).is_err());
    }

    proptest! {
        #[test]
        fn every_plan_round_trips_and_its_size_is_predicted(
            dims in proptest::collection::vec(1usize..6, 1..5),
            density in 0.0f64..1.0,
            seed in any::<u64>(),
            block in proptest::option::of((1usize..4, 1usize..4)),
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let numel: usize = dims.iter().product();
            let data: Vec<u8> = (0..numel)
                .flat_map(|_| {
                    let v: f32 = if rng.gen_bool(density) { rng.gen_range(-1.0..1.0) } else { 0.0 };
                    v.to_le_bytes()
                })
                .collect();
            for plan in candidate_plans(&dims, block) {
                let (layout, values) = encode(&dims, 4, &data, &plan);
                prop_assert_eq!(densify(&dims, 4, &values, &layout).unwrap(), data.clone());
                prop_assert_eq!(plan_bytes(&dims, 4, &data, &plan), stored_bytes(&layout, values.len()));
            }
            let (idx, values) = coo_encode(&data, 4);
            let idx: Vec<u64> = idx.iter().map(|&i| i as u64).collect();
            prop_assert_eq!(coo_densify(numel, 4, &values, &idx).unwrap(), data);
        }
    }
}
