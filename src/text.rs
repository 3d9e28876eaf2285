//! Plain-text layout shared by the reports: name columns and the ellipsis that keeps the
//! distinctive end of a long name. Imports nothing from the crate.
//!
//! Layer: core (imports its own layer and the ones below; see ARCHITECTURE.md).

/// Width of a table's name column: the longest name, between 5 and `max` characters (longer
/// names are shown with [`ellipsize`]).
pub fn name_width<'a>(names: impl Iterator<Item = &'a str>, max: usize) -> usize {
    names
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, max)
}

/// Keeps the end of a long name (the distinctive part of exporter-generated names).
pub fn ellipsize(name: &str, width: usize) -> String {
    let n = name.chars().count();
    if n <= width {
        return name.to_string();
    }
    let tail: String = name.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}
