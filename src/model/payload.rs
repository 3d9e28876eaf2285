//! Payload identities and pending payload edits: the part of an edited document that its
//! format writers apply while they write. Owns [`payload_key`], [`Recipe`] and [`Deferred`];
//! imports nothing of pare's (the methods implement recipes, the formats apply them).

use bytes::Bytes;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

/// A stored payload's identity: its address and length. Edits made later (deferred pruning,
/// payloads that replaced external data) find the bytes they stand for by it.
pub fn payload_key(b: &[u8]) -> (usize, usize) {
    (b.as_ptr() as usize, b.len())
}

/// A payload produced while the model is written, from stored bytes it replaces (see
/// `magnitude::recipe` for the one pare makes: float32 weights zeroed by a magnitude cut).
/// Every recipe must be used: a write that leaves one unused fails instead of silently writing
/// the unedited bytes.
pub trait Recipe: Debug + Send + Sync {
    /// The tensor's name (for messages).
    fn name(&self) -> &str;
    /// The stored bytes it replaces.
    fn source(&self) -> &Bytes;
    /// Non-zero elements of the produced payload, counted as the storage pass counts.
    fn nonzero(&self) -> usize;
    /// Hands the produced bytes to `sink` in order, a piece at a time, and marks it used.
    fn write_to(&self, sink: &mut dyn FnMut(&[u8]));
    /// The produced bytes as one buffer; marks the recipe used when `use_it` (the caller
    /// writes them in the recipe's place).
    fn materialize(&self, use_it: bool) -> Bytes;
    /// Marks it used by a writer that stored its materialized bytes in another form (sparse).
    fn mark_used(&self);
    /// Whether a writer used it.
    fn used(&self) -> bool;
}

/// The recipes of a document, by the address and length of the source bytes they replace.
#[derive(Debug, Default, Clone)]
pub struct Deferred {
    by_source: Arc<HashMap<(usize, usize), Arc<dyn Recipe>>>,
}

impl Deferred {
    pub fn new<R: Recipe + 'static>(recipes: Vec<R>) -> Self {
        Deferred {
            by_source: Arc::new(
                recipes
                    .into_iter()
                    .filter(|r| !r.source().is_empty())
                    .map(|r| (payload_key(r.source()), Arc::new(r) as Arc<dyn Recipe>))
                    .collect(),
            ),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty()
    }

    /// The recipe that replaces exactly these stored bytes, if any.
    pub fn get(&self, stored: &[u8]) -> Option<&dyn Recipe> {
        if self.by_source.is_empty() || stored.is_empty() {
            return None;
        }
        self.by_source.get(&payload_key(stored)).map(Arc::as_ref)
    }

    /// `stored` as it is to be written: the produced bytes when a recipe replaces them
    /// (materialized, not marked used), else `stored` itself.
    pub fn resolve(&self, stored: &Bytes) -> Bytes {
        match self.get(stored) {
            Some(r) => r.materialize(false),
            None => stored.clone(),
        }
    }

    /// Names of the recipes no writer used (must be none after a write).
    pub fn unused(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_source
            .values()
            .filter(|r| !r.used())
            .map(|r| r.name().to_string())
            .collect();
        v.sort();
        v
    }
}
