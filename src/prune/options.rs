//! What a prune is asked to do: scope, pattern, per-layer rules and the calibration and
//! channel settings, with the checks that refuse a contradictory request before any work.

use crate::error::{Error, Result};
use crate::structural;
use regex::Regex;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// Tensors with fewer elements are left alone unless `--min-params` says otherwise.
pub const DEFAULT_MIN_PARAMS: u64 = 128;

/// Default cap for `--scope global` and `lamp`: no tensor loses more than this fraction.
pub const DEFAULT_MAX_LAYER_SPARSITY: f64 = 0.98;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every eligible tensor reaches the sparsity on its own.
    Layer,
    /// One magnitude threshold over all eligible tensors (capped per tensor).
    Global,
    /// One threshold over layer-adaptive magnitude scores (Lee et al., ICLR 2021).
    Lamp,
    /// Per-tensor sparsities from a `pare sensitivity` profile: insensitive layers get more
    /// (see [`crate::allocate::allocate`]).
    Sensitivity,
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "layer" => Ok(Scope::Layer),
            "global" => Ok(Scope::Global),
            "lamp" => Ok(Scope::Lamp),
            "sensitivity" => Ok(Scope::Sensitivity),
            _ => Err(format!(
                "unknown scope {s:?}: expected layer, global, lamp or sensitivity"
            )),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Layer => "layer",
            Scope::Global => "global",
            Scope::Lamp => "lamp",
            Scope::Sensitivity => "sensitivity",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Unstructured,
    /// Keep the `n` largest of every `m` consecutive weights along the input-channel axis.
    NOfM {
        n: usize,
        m: usize,
    },
    /// Whole `rows` × `cols` blocks (rows along output channels, columns along input
    /// channels), scored by their L2 norm.
    Block {
        rows: usize,
        cols: usize,
    },
}

impl FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!("invalid pattern {s:?}: expected unstructured, N:M (e.g. 2:4) or block:RxC (e.g. block:4x1)")
        };
        if s == "unstructured" {
            return Ok(Pattern::Unstructured);
        }
        if let Some(b) = s.strip_prefix("block:") {
            let (r, c) = b.split_once(['x', 'X']).ok_or_else(bad)?;
            let rows: usize = r.parse().map_err(|_| bad())?;
            let cols: usize = c.parse().map_err(|_| bad())?;
            if rows == 0 || cols == 0 || rows * cols < 2 || rows > 256 || cols > 256 {
                return Err(format!(
                    "invalid pattern {s:?}: a block needs at least 2 elements and sides of at most 256"
                ));
            }
            return Ok(Pattern::Block { rows, cols });
        }
        if let Some((n, m)) = s.split_once(':') {
            let n: usize = n.parse().map_err(|_| bad())?;
            let m: usize = m.parse().map_err(|_| bad())?;
            if n == 0 || n >= m || m > 64 {
                return Err(format!(
                    "invalid pattern {s:?}: N:M needs 0 < N < M ≤ 64 (2:4 keeps 2 of every 4)"
                ));
            }
            return Ok(Pattern::NOfM { n, m });
        }
        Err(bad())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Unstructured => f.write_str("unstructured"),
            Pattern::NOfM { n, m } => write!(f, "{n}:{m}"),
            Pattern::Block { rows, cols } => write!(f, "block:{rows}x{cols}"),
        }
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A per-layer rule from the config file.
#[derive(Debug, Clone)]
pub struct LayerRule {
    /// Where it was defined, for messages.
    pub source: String,
    pub regex: Regex,
    pub sparsity: Option<f64>,
    pub pattern: Option<Pattern>,
    pub skip: bool,
}

#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Fraction of each tensor's (or, with a global scope, all eligible tensors') weights to
    /// zero, in [0, 1). Not needed with an N:M pattern, whose sparsity is 1 − N/M.
    pub sparsity: Option<f64>,
    pub scope: Scope,
    pub pattern: Pattern,
    pub min_params: u64,
    pub max_layer_sparsity: f64,
    /// When not empty, only weights whose tensor or node name matches one of these.
    pub include: Vec<Regex>,
    pub exclude: Vec<Regex>,
    pub rules: Vec<LayerRule>,
    /// The profile `--scope sensitivity` allocates from.
    pub sensitivity: Option<std::sync::Arc<crate::allocate::Profile>>,
    /// Structural pruning, applied before magnitude pruning.
    pub channels: Option<structural::ChannelOptions>,
    /// How unstructured pruning chooses weights (Wanda and SparseGPT need `calib`).
    pub criterion: crate::calib::Criterion,
    /// Calibration data: drives `criterion`, and refits layers after channel pruning.
    pub calib: Option<crate::calib::CalibOptions>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            sparsity: None,
            scope: Scope::Layer,
            pattern: Pattern::Unstructured,
            min_params: DEFAULT_MIN_PARAMS,
            max_layer_sparsity: DEFAULT_MAX_LAYER_SPARSITY,
            include: Vec::new(),
            exclude: Vec::new(),
            rules: Vec::new(),
            sensitivity: None,
            channels: None,
            criterion: crate::calib::Criterion::Magnitude,
            calib: None,
        }
    }
}

pub fn check_sparsity(s: f64) -> std::result::Result<(), String> {
    if (0.0..1.0).contains(&s) {
        Ok(())
    } else {
        Err(format!("sparsity {s} is outside [0, 1)"))
    }
}

impl PruneOptions {
    /// The settings as the report shows them (regexes as their source text).
    pub fn settings(&self) -> Settings {
        Settings {
            sparsity: match self.pattern {
                Pattern::NOfM { n, m } => Some(1.0 - n as f64 / m as f64),
                _ => self.sparsity,
            },
            scope: self.scope,
            pattern: self.pattern,
            min_params: self.min_params,
            max_layer_sparsity: self.max_layer_sparsity,
            include: self
                .include
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            exclude: self
                .exclude
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            rules: self.rules.iter().map(|r| r.source.clone()).collect(),
        }
    }

    /// Is magnitude pruning asked for (a sparsity, an N:M pattern or a rule that sets one)?
    /// Without it, a structural prune (`channels`) runs alone.
    pub fn magnitude_requested(&self) -> bool {
        self.channels.is_none()
            || self.sparsity.is_some()
            || matches!(self.pattern, Pattern::NOfM { .. })
            || self
                .rules
                .iter()
                .any(|r| r.sparsity.is_some() || r.pattern.is_some())
    }

    /// Checks the combination of settings; every failure is a usage error.
    pub fn validate(&self) -> Result<()> {
        let usage = |m: String| Err(Error::Usage(m));
        use crate::calib::Criterion;
        if let Some(c) = &self.calib {
            c.validate()?;
            if self.criterion == Criterion::Magnitude && self.channels.is_none() {
                return usage(
                    "--calib has nothing to do with --criterion magnitude: give --criterion wanda or sparsegpt, or channel pruning (--channels, --target-macs, --target-params) to refit"
                        .into(),
                );
            }
        }
        if self.criterion != Criterion::Magnitude {
            if self.calib.is_none() {
                return usage(format!(
                    "--criterion {} needs calibration data: --calib FILE (.npy or .npz, a few hundred representative inputs)",
                    self.criterion
                ));
            }
            if !self.magnitude_requested() {
                return usage(format!(
                    "--criterion {} chooses weights for unstructured pruning: give --sparsity or an N:M --pattern too",
                    self.criterion
                ));
            }
            if matches!(self.pattern, Pattern::Block { .. })
                || self
                    .rules
                    .iter()
                    .any(|r| matches!(r.pattern, Some(Pattern::Block { .. })))
            {
                return usage(format!(
                    "--criterion {} prunes unstructured or N:M patterns, not blocks",
                    self.criterion
                ));
            }
        }
        if let Some(c) = &self.channels {
            if c.importance == structural::Importance::Activation && self.calib.is_none() {
                return usage(
                    "--importance activation ranks channels by calibration data: give --calib DATA"
                        .into(),
                );
            }
            c.validate()?;
            if !self.magnitude_requested() {
                return Ok(());
            }
        }
        if let Some(s) = self.sparsity {
            check_sparsity(s).or_else(|e| usage(format!("--sparsity: {e}")))?;
        }
        if self.scope == Scope::Sensitivity && self.sensitivity.is_none() {
            return usage(
                "--scope sensitivity needs --sensitivity FILE (a profile from pare sensitivity)"
                    .into(),
            );
        }
        if !(self.max_layer_sparsity > 0.0 && self.max_layer_sparsity < 1.0) {
            return usage(format!(
                "--max-layer-sparsity {} is outside (0, 1)",
                self.max_layer_sparsity
            ));
        }
        match self.pattern {
            Pattern::NOfM { n, m } => {
                if self.scope != Scope::Layer {
                    return usage(format!(
                        "--pattern {n}:{m} fixes every group's sparsity at {:.4}; --scope {} does not apply to it",
                        1.0 - n as f64 / m as f64,
                        self.scope
                    ));
                }
                if let Some(s) = self.sparsity {
                    let implied = 1.0 - n as f64 / m as f64;
                    if (s - implied).abs() > 1e-9 {
                        return usage(format!(
                            "--pattern {n}:{m} prunes exactly {implied} of the weights; drop --sparsity {s} (or set it to {implied})"
                        ));
                    }
                }
            }
            _ => {
                if self.sparsity.is_none() {
                    let covered = !self.rules.is_empty()
                        && self.rules.iter().all(|r| {
                            r.skip
                                || r.sparsity.is_some()
                                || matches!(r.pattern, Some(Pattern::NOfM { .. }))
                        });
                    if !covered {
                        return usage(
                            "give --sparsity S (or `sparsity` in the config file), or an N:M pattern".into(),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub sparsity: Option<f64>,
    pub scope: Scope,
    pub pattern: Pattern,
    pub min_params: u64,
    pub max_layer_sparsity: f64,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub rules: Vec<String>,
}
