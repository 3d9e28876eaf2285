//! `--config pare.toml`: pruning settings and per-layer rules in a file.
//!
//! ```toml
//! sparsity = 0.75            # any top-level key may be overridden by a command-line flag
//! scope = "global"           # layer | global | lamp
//! pattern = "unstructured"   # unstructured | N:M | block:RxC
//! min_params = 128
//! max_layer_sparsity = 0.98
//! include = ["conv"]         # regexes searched in tensor and node names
//! exclude = ["^classifier"]
//!
//! [[layer]]                  # the first rule whose regex matches a weight decides for it
//! match = "stem"
//! sparsity = 0.3
//!
//! [[layer]]
//! match = "fc2"
//! pattern = "2:4"
//!
//! [[layer]]
//! match = "probs"
//! skip = true
//!
//! [[layer]]                  # structural pruning: this layer loses 50% of its channels
//! match = "conv2"
//! channels = 0.5
//! ```

use super::{LayerRule, Pattern, PruneOptions};
use crate::error::{Error, Result};
use regex::Regex;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    sparsity: Option<f64>,
    scope: Option<String>,
    pattern: Option<String>,
    min_params: Option<u64>,
    max_layer_sparsity: Option<f64>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default, rename = "layer")]
    layers: Vec<Layer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layer {
    #[serde(rename = "match")]
    pattern: String,
    sparsity: Option<f64>,
    #[serde(rename = "pattern")]
    weight_pattern: Option<String>,
    /// Channel ratio for structural pruning of the matching layers.
    channels: Option<f64>,
    #[serde(default)]
    skip: bool,
}

pub fn regex(what: &str, s: &str) -> Result<Regex> {
    Regex::new(s).map_err(|e| Error::Usage(format!("{what}: invalid regex {s:?}: {e}")))
}

/// Reads `path` into `opts` (whose values are the defaults; the caller applies command-line
/// flags afterwards, so they win).
pub fn load(path: &Path, opts: &mut PruneOptions) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let f: File = toml::from_str(&text)
        .map_err(|e| Error::Usage(format!("{}: {}", path.display(), e.message())))?;
    let at = |what: &str| format!("{}: {what}", path.display());
    if let Some(s) = f.sparsity {
        opts.sparsity = Some(s);
    }
    if let Some(s) = &f.scope {
        opts.scope = s.parse().map_err(|e: String| Error::Usage(at(&e)))?;
    }
    if let Some(p) = &f.pattern {
        opts.pattern = p.parse().map_err(|e: String| Error::Usage(at(&e)))?;
    }
    if let Some(m) = f.min_params {
        opts.min_params = m;
    }
    if let Some(c) = f.max_layer_sparsity {
        opts.max_layer_sparsity = c;
    }
    for s in &f.include {
        opts.include.push(regex(&at("include"), s)?);
    }
    for s in &f.exclude {
        opts.exclude.push(regex(&at("exclude"), s)?);
    }
    for (i, l) in f.layers.iter().enumerate() {
        let what = at(&format!("[[layer]] #{} (match = {:?})", i + 1, l.pattern));
        let pattern: Option<Pattern> = match &l.weight_pattern {
            Some(p) => Some(
                p.parse()
                    .map_err(|e| Error::Usage(format!("{what}: {e}")))?,
            ),
            None => None,
        };
        if l.skip && (l.sparsity.is_some() || pattern.is_some()) {
            return Err(Error::Usage(format!(
                "{what}: `skip = true` cannot be combined with sparsity or pattern"
            )));
        }
        if !l.skip && l.sparsity.is_none() && pattern.is_none() && l.channels.is_none() {
            return Err(Error::Usage(format!(
                "{what}: give `sparsity`, `pattern`, `channels` or `skip = true`"
            )));
        }
        if let Some(c) = l.channels {
            if !(0.0..1.0).contains(&c) {
                return Err(Error::Usage(format!(
                    "{what}: channels {c} is outside [0, 1)"
                )));
            }
            // Channel rules alone mean structural pruning (ratio 0 elsewhere, unless a flag
            // sets one).
            let channels = opts.channels.get_or_insert_with(Default::default);
            channels.rules.push(crate::structural::ChannelRule {
                source: what.clone(),
                regex: regex(&what, &l.pattern)?,
                ratio: c,
            });
            if l.sparsity.is_none() && pattern.is_none() && !l.skip {
                continue;
            }
        }
        if let Some(s) = l.sparsity {
            super::check_sparsity(s).map_err(|e| Error::Usage(format!("{what}: {e}")))?;
        }
        opts.rules.push(LayerRule {
            source: what.clone(),
            regex: regex(&what, &l.pattern)?,
            sparsity: l.sparsity,
            pattern,
            skip: l.skip,
        });
    }
    Ok(())
}
