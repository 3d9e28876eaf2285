//! ONNX-style coordinate encodings: ascending linear indices of the non-zero values, their
//! counting, and densifying them back with every index checked.

use super::{is_zero, max_dense_bytes};

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
    pub(super) fn count<const W: usize>(data: &[u8]) -> usize {
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
