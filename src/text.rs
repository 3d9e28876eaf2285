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

/// A byte count for people: `512 B`, `3.2 kB`, `101.6 MB`, `2.3 GB` (powers of 1000).
pub fn bytes(n: u64) -> String {
    let f = n as f64;
    match n {
        0..=999 => format!("{n} B"),
        1_000..=999_999 => format!("{:.1} kB", f / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} MB", f / 1e6),
        _ => format!("{:.1} GB", f / 1e9),
    }
}
