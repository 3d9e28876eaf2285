//! Writing documents: stage beside the destination, read back, verify with tract, commit.
//! `pare convert` is this pipeline with no edits; pruning commands reuse it.
//!
//! Layer: pipeline (imports its own layer and the ones below; see ARCHITECTURE.md).

use crate::document::Document;
use crate::error::{Error, Result};
use crate::inspect::SizeComparison;
use crate::onnx::ExternalDataMode;
use crate::output::{check_destination, Staging};
use crate::progress::{Progress, Silent};
use crate::sparse::{Storage, StoragePolicy, StorageReport};
use crate::verify::{self, Verdict, Verification};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What to do about checking a written model with tract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyPolicy {
    /// Do not load the written model in tract.
    Skip,
    /// Check; when tract cannot run a model, or the outputs diverge, say so and still write.
    Check,
    /// Check; refuse to write a model tract could not verify (exit 3) or whose outputs diverge
    /// from the original's (exit 5).
    Require,
}

#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub external_data: ExternalDataMode,
    /// Dense or sparse constants (`--storage`); [`Storage::Keep`] by default.
    pub storage: StoragePolicy,
    /// Measure gzip -9 / zstd -9 sizes of the input and output (off by default: on a 100 MB
    /// model they cost 30 times a magnitude prune).
    pub compressed_sizes: bool,
    pub verify: VerifyPolicy,
    /// Verify on the first samples of this data (the user's `--validate` or `--calib` data)
    /// instead of seeded random inputs.
    pub verify_data: Option<crate::data::DataOptions>,
    pub force: bool,
    pub seed: u64,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            external_data: ExternalDataMode::Keep,
            storage: StoragePolicy::new(Storage::Keep),
            compressed_sizes: false,
            verify: VerifyPolicy::Check,
            verify_data: None,
            force: false,
            seed: verify::DEFAULT_SEED,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteReport {
    pub input: String,
    pub output: String,
    pub format: crate::model::Format,
    /// Every file written, model last.
    pub files: Vec<String>,
    pub input_bytes: u64,
    pub output_bytes: u64,
    /// The written files' sizes, raw, gzip -9 and zstd -9, against the input's.
    pub sizes: SizeComparison,
    /// Sparse and dense storage of the written constants (absent when neither the policy nor
    /// the model involves sparse storage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

/// Files an output must never replace: the input and its external data files.
fn protected_inputs(doc: &Document) -> Vec<PathBuf> {
    let mut v = vec![doc.path().to_path_buf()];
    if let Document::Onnx(d) = doc {
        v.extend(d.external_paths().unwrap_or_default());
    }
    v
}

/// A written and verified model waiting in its staging directory beside the destination:
/// [`Staged::commit`] renames it into place, dropping it leaves no trace.
pub struct Staged {
    staging: Staging,
    /// The staged files read back (its path is inside the staging directory).
    pub doc: Document,
    report: WriteReport,
}

impl Staged {
    /// What will be (or was) written.
    pub fn report(&self) -> &WriteReport {
        &self.report
    }

    /// Renames the staged files into place.
    pub fn commit(self) -> Result<WriteReport> {
        self.staging.commit()?;
        Ok(self.report)
    }
}

/// Writes `edited` (a document derived from `original`) to `output`, then checks it.
/// `expect_identical` makes any output difference an error (for conversions, which must not
/// change what the model computes).
pub fn write_checked_with_progress(
    original: &Document,
    edited: &Document,
    output: &Path,
    opts: &WriteOptions,
    expect_identical: bool,
    progress: &dyn Progress,
) -> Result<WriteReport> {
    stage_checked(original, edited, output, opts, expect_identical, progress)?.commit()
}

/// The first half of [`write_checked_with_progress`]: write to the staging directory, read
/// back, verify; the caller decides whether to [`Staged::commit`].
pub fn stage_checked(
    original: &Document,
    edited: &Document,
    output: &Path,
    opts: &WriteOptions,
    expect_identical: bool,
    progress: &dyn Progress,
) -> Result<Staged> {
    let protected = protected_inputs(original);
    let protected_refs: Vec<&Path> = protected.iter().map(PathBuf::as_path).collect();
    check_destination(output, &protected_refs, opts.force)?;
    if output.file_name().is_none() {
        return Err(Error::Usage(format!(
            "{}: not a file path",
            output.display()
        )));
    }

    progress.stage("encoding");
    let (encoded, storage) = edited.with_storage_for_write(&opts.storage)?;
    let storage = (opts.storage.storage != Storage::Keep || !storage.sparse_tensors.is_empty())
        .then_some(storage);
    progress.stage("writing");
    let mut staging = Staging::beside(output)?;
    match &encoded {
        Document::Onnx(d) => {
            let data_file = match &opts.external_data {
                ExternalDataMode::Into(n) => Some(n.clone()),
                ExternalDataMode::Keep if !d.external_locations().is_empty() => {
                    Some(crate::onnx::write::default_data_file(output))
                }
                _ => None,
            };
            if let Some(name) = data_file {
                check_destination(&output.with_file_name(&name), &protected_refs, opts.force)?;
            }
            crate::onnx::write::write(d, &d.model, output, &opts.external_data, &mut staging)?;
        }
        Document::Tflite(d) => {
            if opts.external_data != ExternalDataMode::Keep {
                return Err(Error::Usage(
                    "--external-data and --inline-data apply to ONNX models only".into(),
                ));
            }
            let (bytes, _) = d.encode()?;
            staging.write_with(output, |w| w.write_all(&bytes))?;
        }
    }

    // Every deferred pruned payload must have been written (never the unpruned bytes).
    let unused = encoded.deferred().unused();
    if !unused.is_empty() {
        return Err(Error::Verification(format!(
            "{}: not written: the pruned data of {} was not written ({}); this is a bug in pare, please report it",
            output.display(),
            unused.len(),
            unused.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        )));
    }

    // What was encoded is on disk now: free it before reading the file back.
    drop(encoded);

    // Read the staged files back exactly as a user would: this proves they parse, and the
    // check below runs on what is on disk, not on what we meant to write.
    progress.stage("reading back");
    let staged = Document::open(&staging.staged_path(output))?;
    // Sizes are measured while tract verifies (compression runs on the other cores).
    let staged_files: Vec<PathBuf> = staging
        .destinations()
        .map(|d| staging.staged_path(d))
        .collect();
    progress.stage(match opts.verify {
        VerifyPolicy::Skip => "measuring sizes",
        _ => "verifying in tract",
    });
    let (verification, sizes) = rayon::join(
        || match opts.verify {
            VerifyPolicy::Skip => Ok(None),
            VerifyPolicy::Check | VerifyPolicy::Require => match &opts.verify_data {
                Some(data) => crate::validate::verify_on_data(original, &staged, data).map(Some),
                None => verify::compare(original, &staged, opts.seed).map(Some),
            },
        },
        || -> Result<SizeComparison> {
            let (a, b) = rayon::join(
                || crate::inspect::file_sizes(original, opts.compressed_sizes),
                || crate::inspect::sizes_of(&staged_files, opts.compressed_sizes),
            );
            Ok(SizeComparison::new(a?, b?))
        },
    );
    let verification = verification?;
    let sizes = sizes?;
    if let Some(v) = &verification {
        if v.regressed {
            return Err(Error::Verification(format!(
                "{}: not written: tract runs the original but not the written model ({}); this is a bug in pare, please report it",
                output.display(),
                v.reason.as_deref().unwrap_or("unknown reason")
            )));
        }
        if v.verdict == Verdict::NotVerified && opts.verify == VerifyPolicy::Require {
            return Err(Error::Verification(format!(
                "{}: not written: tract could not verify it ({}) and --require-verified is set",
                output.display(),
                v.reason.as_deref().unwrap_or("unknown reason")
            )));
        }
        if v.checked && expect_identical && !v.identical() {
            let worst = v.outputs.iter().map(|o| o.max_abs_diff).fold(0.0, f64::max);
            return Err(Error::Verification(format!(
                "{}: not written: its outputs differ from the original's (max abs diff {worst:e}); this is a bug in pare, please report it",
                output.display()
            )));
        }
        if v.verdict == Verdict::Diverges && opts.verify == VerifyPolicy::Require {
            return Err(Error::Diverged(format!(
                "{}: not written: {} and --require-verified is set; a lower --sparsity, \
                 --calib DATA or --scope lamp keeps more of the model",
                output.display(),
                v.reason.as_deref().unwrap_or("the outputs diverge")
            )));
        }
    }

    let files: Vec<String> = staging
        .destinations()
        .map(|p| p.display().to_string())
        .collect();
    let output_bytes = staging
        .destinations()
        .map(|d| {
            std::fs::metadata(staging.staged_path(d))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let input_bytes = sizes.original.file_bytes;
    Ok(Staged {
        staging,
        doc: staged,
        report: WriteReport {
            input: original.path().display().to_string(),
            output: output.display().to_string(),
            format: original.format(),
            files,
            input_bytes,
            output_bytes,
            sizes,
            storage,
            verification,
        },
    })
}

/// [`write_checked_with_progress`] without progress reporting.
pub fn write_checked(
    original: &Document,
    edited: &Document,
    output: &Path,
    opts: &WriteOptions,
    expect_identical: bool,
) -> Result<WriteReport> {
    write_checked_with_progress(original, edited, output, opts, expect_identical, &Silent)
}

/// `pare convert`: re-serialize without changing the model's meaning.
pub fn convert(input: &Path, output: &Path, opts: &WriteOptions) -> Result<WriteReport> {
    convert_with_progress(input, output, opts, &Silent)
}

/// [`convert`], reporting its stages to `progress`.
pub fn convert_with_progress(
    input: &Path,
    output: &Path,
    opts: &WriteOptions,
    progress: &dyn Progress,
) -> Result<WriteReport> {
    progress.stage("reading");
    let doc = Document::open(input)?;
    write_checked_with_progress(&doc, &doc, output, opts, true, progress)
}
