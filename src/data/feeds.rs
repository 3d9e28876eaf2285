//! Binding each kind of data to a model's inputs: seeded random inputs, NumPy arrays, and the
//! ONNX model zoo's `test_data_set_*` folders of `input_K.pb` tensors.

use super::npy::{
    check_dtype, decode, is_zip, npy_array, npz_arrays, read_labels, values_tensor, Elem,
};
use super::{
    batch_of, names, usage, DataInput, DataOptions, DataSummary, Dataset, Feed, InputDecl,
    DEFAULT_RANDOM_SAMPLES,
};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

/// The three feeds: seeded random inputs, NumPy arrays, ONNX test data sets.
impl Dataset {
    pub(super) fn random(opts: &DataOptions, decls: &[InputDecl], resizable: bool) -> Result<Self> {
        let mut shapes = Vec::new();
        for d in decls {
            let shape = match opts.input_shapes.iter().find(|(n, _)| n == &d.name) {
                Some((_, s)) => {
                    if let Some(dims) = &d.dims {
                        if dims.len() != s.len() {
                            return Err(usage(format!(
                                "--input-shape {}: rank {} but the input has rank {}",
                                d.name,
                                s.len(),
                                dims.len()
                            )));
                        }
                        for (ax, (dim, &v)) in dims.iter().zip(s).enumerate() {
                            if let Some(f) = dim.fixed() {
                                if f != v as u64 && (resizable || ax > 0) {
                                    return Err(usage(format!(
                                        "--input-shape {}: axis {ax} is fixed at {f} in the model, not {v}",
                                        d.name
                                    )));
                                }
                            }
                        }
                    }
                    s.clone()
                }
                None => {
                    let dims = d.dims.as_ref().ok_or_else(|| {
                        usage(format!(
                            "input {:?} has no declared shape; give one with --input-shape {}=…",
                            d.name, d.name
                        ))
                    })?;
                    dims.iter()
                        .enumerate()
                        .map(|(ax, dim)| match dim.fixed() {
                            Some(f) => f as usize,
                            None if ax == 0 && resizable => opts.batch_size,
                            None => 1,
                        })
                        .collect()
                }
            };
            shapes.push(shape);
        }
        let batch = batch_of(&shapes);
        let samples = opts.samples.unwrap_or(DEFAULT_RANDOM_SAMPLES);
        let summary = DataSummary {
            kind: "random",
            path: None,
            seed: Some(opts.seed),
            samples,
            batch_size: batch,
            inputs: decls
                .iter()
                .zip(&shapes)
                .map(|(d, s)| DataInput {
                    name: d.name.clone(),
                    shape: s.clone(),
                    data_dtype: "random".into(),
                    quantized: false,
                })
                .collect(),
            labels: None,
        };
        Ok(Dataset {
            feed: Feed::Random { seed: opts.seed },
            shapes,
            samples,
            batch,
            labels: None,
            summary,
            input_names: decls.iter().map(|d| d.name.clone()).collect(),
        })
    }

    pub(super) fn arrays(
        path: &Path,
        opts: &DataOptions,
        decls: &[InputDecl],
        resizable: bool,
    ) -> Result<Self> {
        let is_npz = is_zip(path)?;
        let (arrays, labels, kind) = if is_npz {
            let mut all = npz_arrays(path)?;
            let labels = all
                .iter()
                .position(|(n, _)| n == "labels")
                .map(|i| all.remove(i).1);
            let mut picked = Vec::new();
            for d in decls {
                match all.iter().position(|(n, _)| n == &d.name) {
                    Some(i) => picked.push(all[i].1.clone()),
                    None if decls.len() == 1 && all.len() == 1 => picked.push(all[0].1.clone()),
                    None => {
                        return Err(usage(format!(
                            "{}: no array named {:?} for the model's input (arrays: {}; the model's inputs: {})",
                            path.display(),
                            d.name,
                            all.iter().map(|(n, _)| format!("{n:?}")).collect::<Vec<_>>().join(", "),
                            names(decls)
                        )))
                    }
                }
            }
            (picked, labels, "npz")
        } else {
            if decls.len() != 1 {
                return Err(usage(format!(
                    "{}: a .npy file feeds a single-input model; this one has {} inputs ({}): use a .npz with one array per input name",
                    path.display(),
                    decls.len(),
                    names(decls)
                )));
            }
            (vec![npy_array(path)?], None, "npy")
        };

        let n = arrays[0].shape.first().copied().unwrap_or(0);
        let mut shapes = Vec::new();
        let mut batch_fixed: Option<usize> = None;
        for (d, a) in decls.iter().zip(&arrays) {
            if a.shape.is_empty() {
                return Err(usage(format!(
                    "{}: a 0-d array cannot hold samples for input {:?}",
                    a.origin, d.name
                )));
            }
            if a.shape[0] != n {
                return Err(usage(format!(
                    "{}: {} samples, but {} has {n}",
                    a.origin, a.shape[0], arrays[0].origin
                )));
            }
            if let Some(dims) = &d.dims {
                if dims.len() != a.shape.len() {
                    return Err(usage(format!(
                        "{}: shape {:?} does not fit input {:?} of shape [{}] (rank {} vs {}; axis 0 of the data is the sample axis)",
                        a.origin,
                        a.shape,
                        d.name,
                        dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
                        a.shape.len(),
                        dims.len()
                    )));
                }
                for (ax, (dim, &v)) in dims.iter().zip(&a.shape).enumerate().skip(1) {
                    if let Some(f) = dim.fixed() {
                        if f != v {
                            return Err(usage(format!(
                                "{}: shape {:?} does not fit input {:?}: axis {ax} is {v}, the model expects {f}",
                                a.origin, a.shape, d.name
                            )));
                        }
                    }
                }
                if let Some(f) = dims[0].fixed() {
                    batch_fixed = Some(f as usize);
                }
            }
            check_dtype(a, d)?;
            let mut s: Vec<usize> = a.shape.iter().map(|&v| v as usize).collect();
            s[0] = 0; // set below
            shapes.push(s);
        }
        if n == 0 {
            return Err(usage(format!("{}: no samples", arrays[0].origin)));
        }
        let available = n as usize;
        let samples = opts.samples.map_or(available, |s| s.min(available));
        let batch = match batch_fixed {
            Some(b) => b.max(1),
            None if resizable => opts.batch_size.min(samples),
            None => 1,
        };
        for s in &mut shapes {
            s[0] = batch;
        }
        let summary = DataSummary {
            kind,
            path: Some(path.display().to_string()),
            seed: None,
            samples,
            batch_size: batch,
            inputs: decls
                .iter()
                .zip(&arrays)
                .zip(&shapes)
                .map(|((d, a), s)| DataInput {
                    name: d.name.clone(),
                    shape: s.clone(),
                    data_dtype: a.elem.name().into(),
                    quantized: false,
                })
                .collect(),
            labels: None,
        };
        let mut ds = Dataset {
            feed: Feed::Arrays(arrays),
            shapes,
            samples,
            batch,
            labels: None,
            summary,
            input_names: decls.iter().map(|d| d.name.clone()).collect(),
        };
        if let Some(l) = labels {
            let v = read_labels(&l)?;
            ds.set_labels(v, l.origin.clone())?;
        }
        Ok(ds)
    }

    pub(super) fn test_sets(dir: &Path, opts: &DataOptions, decls: &[InputDecl]) -> Result<Self> {
        let mut set_dirs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("test_data_set_"))
            })
            .collect();
        set_dirs.sort_by_key(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            (n.len(), n.to_string())
        });
        if set_dirs.is_empty() {
            if dir.join("input_0.pb").is_file() {
                set_dirs.push(dir.to_path_buf());
            } else {
                return Err(usage(format!(
                    "{}: a data folder must hold ONNX test_data_set_*/input_K.pb sets (or input_K.pb files)",
                    dir.display()
                )));
            }
        }
        if let Some(s) = opts.samples {
            set_dirs.truncate(s);
        }
        let mut sets = Vec::new();
        for d in &set_dirs {
            let files: Vec<PathBuf> = (0..decls.len())
                .map(|k| d.join(format!("input_{k}.pb")))
                .collect();
            if let Some(missing) = files.iter().find(|f| !f.is_file()) {
                return Err(usage(format!(
                    "{}: missing for the model's {} input(s) ({})",
                    missing.display(),
                    decls.len(),
                    names(decls)
                )));
            }
            sets.push(files);
        }
        // The first set fixes the shapes; every set must agree.
        let mut shapes = Vec::new();
        let mut dtypes = Vec::new();
        for (k, f) in sets[0].iter().enumerate() {
            let (t, dt) = read_pb_tensor(f)?;
            check_pb(f, &t, dt, &decls[k])?;
            shapes.push(t.shape().to_vec());
            dtypes.push(dt);
        }
        let batch = batch_of(&shapes);
        let summary = DataSummary {
            kind: "onnx-test-data",
            path: Some(dir.display().to_string()),
            seed: None,
            samples: sets.len() * batch,
            batch_size: batch,
            inputs: decls
                .iter()
                .zip(&shapes)
                .zip(&dtypes)
                .map(|((d, s), dt)| DataInput {
                    name: d.name.clone(),
                    shape: s.clone(),
                    data_dtype: dt.name().into(),
                    quantized: false,
                })
                .collect(),
            labels: None,
        };
        Ok(Dataset {
            samples: sets.len() * batch,
            feed: Feed::TestSets(sets),
            shapes,
            batch,
            labels: None,
            summary,
            input_names: decls.iter().map(|d| d.name.clone()).collect(),
        })
    }
}

/// Reads an ONNX TensorProto file (test data) as a tract tensor.
pub(super) fn read_pb_tensor(path: &Path) -> Result<(Tensor, Elem)> {
    use prost::Message;
    let bytes = crate::io::map_file(path)?;
    let t = crate::onnx_pb::TensorProto::decode(bytes)
        .map_err(|e| Error::malformed(path, format!("not an ONNX TensorProto: {e}")))?;
    let dtype = crate::onnx::dtype_from_onnx(t.data_type());
    let elem = Elem::from_dtype(dtype).ok_or_else(|| {
        Error::malformed(
            path,
            format!("tensor of type {dtype}: not a model input pare can feed"),
        )
    })?;
    let payload = crate::onnx::payload_of_standalone(&t, path)?;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let tensor = values_tensor(decode(elem, false, &payload), elem, &shape)
        .map_err(|e| Error::malformed(path, e.to_string()))?;
    Ok((tensor, elem))
}

pub(super) fn check_pb(path: &Path, t: &Tensor, elem: Elem, d: &InputDecl) -> Result<()> {
    if let Some(dims) = &d.dims {
        let fits = dims.len() == t.rank()
            && dims
                .iter()
                .zip(t.shape())
                .all(|(dim, &v)| dim.fixed().is_none_or(|f| f == v as u64));
        if !fits {
            return Err(usage(format!(
                "{}: shape {:?} does not fit input {:?} [{}]",
                path.display(),
                t.shape(),
                d.name,
                dims.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    if Elem::from_dtype(d.dtype) != Some(elem) {
        return Err(usage(format!(
            "{}: {} data for input {:?}, which takes {}",
            path.display(),
            elem.name(),
            d.name,
            d.dtype
        )));
    }
    Ok(())
}
