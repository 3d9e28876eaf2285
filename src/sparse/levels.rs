//! TFLite-style level encodings: densify a traversal of DENSE / SPARSE_CSR levels (checked
//! before a byte is written), encode dense data into a plan, and size the candidate plans.

use super::{checked_numel, is_zero, max_dense_bytes, strides, Layout, Level, Plan, MAX_LEVELS};

/// Per level: its (blocked) extent and how far one step moves in the dense tensor.
pub(super) struct Geometry {
    pub(super) extent: Vec<usize>,
    pub(super) step: Vec<usize>,
}

impl Geometry {
    pub(super) fn new(
        shape: &[usize],
        order: &[usize],
        blocks: &[(usize, usize)],
    ) -> Result<Self, String> {
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
pub(super) fn walk_decode(
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
pub(super) fn check_layout(shape: &[usize], layout: &Layout) -> Result<Geometry, String> {
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

pub(super) struct EncodeState {
    pub(super) values: Vec<u8>,
    pub(super) segments: Vec<u32>,
    pub(super) indices: Vec<u32>,
}

/// Stores the subtree at `level`; returns whether it holds a non-zero element. Only the CSR
/// level drops empty subtrees (values stored below it are rolled back).
pub(super) fn encode_level(
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

pub(super) fn enumerate_offsets(geo: &Geometry, level: usize, offset: usize, out: &mut Vec<usize>) {
    if level == geo.extent.len() {
        out.push(offset);
        return;
    }
    for i in 0..geo.extent[level] {
        enumerate_offsets(geo, level + 1, offset + i * geo.step[level], out);
    }
}

pub(super) fn for_each_prefix(
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
