//! The layer map in ARCHITECTURE.md holds for `src/`: every top-level module has a layer, no
//! module imports one of a higher layer, and neither the modules nor the files form a cycle.
//!
//! Imports are read as a reader follows them: every `crate::a::b` path (also in doc links) and
//! every `super::` path, with `use` groups (`crate::{a, b}`) expanded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `module → (layer number, layer name)` from the ```layers block of ARCHITECTURE.md.
fn layers(text: &str) -> BTreeMap<String, (u32, String)> {
    let block = text
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("ARCHITECTURE.md has a ```layers block");
    let mut map = BTreeMap::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let level: u32 = words.next().unwrap().parse().expect("a layer number");
        let name = words.next().expect("a layer name");
        for m in words {
            assert!(
                map.insert(m.to_string(), (level, name.to_string()))
                    .is_none(),
                "{m} is listed twice"
            );
        }
    }
    map
}

/// `module → layer number`.
fn layer_map(text: &str) -> BTreeMap<String, u32> {
    layers(text).into_iter().map(|(m, (l, _))| (m, l)).collect()
}

/// Every `.rs` file under `src/` as (module path like `prune/config`, file), skipping
/// generated code.
fn source_files() -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = root().join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|p| !p.ends_with("schema_generated.rs"))
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().with_extension("");
            let mut m = rel.to_string_lossy().replace('\\', "/");
            if let Some(parent) = m.strip_suffix("/mod") {
                m = parent.to_string();
            }
            if m == "lib" || m == "main" {
                m = String::new();
            }
            (m, p)
        })
        .collect()
}

/// The paths (as `a/b/c` module segments, from the crate root) that `text` in module `module`
/// refers to.
fn referenced_paths(module: &str, text: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|p| {
                p.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|p| !p.is_empty())
            .collect()
    };
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for (head, base) in [("crate::", None), ("super::", Some(()))] {
        let mut from = 0;
        while let Some(at) = text[from..].find(head) {
            let start = from + at;
            from = start + head.len();
            // A whole word: not `foo_crate::` or `xsuper::`.
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let mut prefix: Vec<String> = match base {
                None => vec![],
                Some(()) => {
                    // `super` of a file `a/b.rs` is `a`; of `a/b/mod.rs` (module `a/b`) also `a`.
                    let mut segs: Vec<String> = module
                        .split('/')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect();
                    segs.pop();
                    segs
                }
            };
            let mut rest = &text[from..];
            // `super::super::x`
            while let Some(r) = rest.strip_prefix("super::") {
                prefix.pop();
                rest = r;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let mut p = prefix.clone();
                    p.extend(ident(item.trim()));
                    out.push(p);
                }
            } else {
                let mut p = prefix;
                p.extend(ident(rest));
                out.push(p);
            }
        }
    }
    out
}

struct Graph {
    modules: BTreeMap<String, BTreeSet<String>>,
    files: BTreeMap<String, BTreeSet<String>>,
    /// For messages: (from module, to module) → a file that makes the edge.
    witness: BTreeMap<(String, String), String>,
}

fn import_graph() -> Graph {
    let files = source_files();
    let known: BTreeSet<&str> = files.iter().map(|(m, _)| m.as_str()).collect();
    // Items the crate root re-exports, and inline modules of lib.rs, by the module they name.
    let root_items: BTreeMap<&str, &str> = [
        ("Document", "document"),
        ("Error", "error"),
        ("Result", "error"),
        ("tflite_gen", "tflite_gen"),
    ]
    .into_iter()
    .collect();
    let mut g = Graph {
        modules: BTreeMap::new(),
        files: BTreeMap::new(),
        witness: BTreeMap::new(),
    };
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        // A file's own unit tests (`mod tests { use super::*; }`) are not part of the map.
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let top = module.split('/').next().unwrap().to_string();
        for segs in referenced_paths(module, text) {
            // The longest prefix that is a file.
            let target = (1..=segs.len())
                .rev()
                .map(|k| segs[..k].join("/"))
                .find(|m| known.contains(m.as_str()))
                .or_else(|| {
                    segs.first()
                        .and_then(|s| root_items.get(s.as_str()))
                        .map(|m| m.to_string())
                });
            let Some(target) = target else { continue };
            if target != *module && !module.is_empty() {
                g.files
                    .entry(module.clone())
                    .or_default()
                    .insert(target.clone());
            }
            let ttop = target.split('/').next().unwrap().to_string();
            if ttop != top && !top.is_empty() {
                g.witness
                    .entry((top.clone(), ttop.clone()))
                    .or_insert_with(|| {
                        path.strip_prefix(root())
                            .unwrap_or(path)
                            .display()
                            .to_string()
                    });
                g.modules.entry(top.clone()).or_default().insert(ttop);
            }
        }
    }
    g
}

/// Strongly connected components with more than one member (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        if let Some(ws) = s.edges.get(v) {
            for w in ws {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if s.on.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    let nodes: BTreeSet<&str> = edges
        .iter()
        .flat_map(|(a, bs)| std::iter::once(a.as_str()).chain(bs.iter().map(String::as_str)))
        .collect();
    for v in nodes {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn imports_point_down_the_layers_of_architecture_md_and_never_round_a_cycle() {
    let map = layer_map(&std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap());
    let g = import_graph();
    let mut problems = Vec::new();
    let tops: BTreeSet<String> = source_files()
        .into_iter()
        .map(|(m, _)| m.split('/').next().unwrap().to_string())
        .filter(|m| !m.is_empty())
        .chain(["onnx_pb".to_string(), "tflite_gen".to_string()])
        .collect();
    for m in &tops {
        if !map.contains_key(m) {
            problems.push(format!(
                "module {m} has no layer: add it to the layers block of ARCHITECTURE.md"
            ));
        }
    }
    for m in map.keys() {
        if !tops.contains(m) {
            problems.push(format!(
                "ARCHITECTURE.md lists {m}, which src/ does not have"
            ));
        }
    }
    for (from, tos) in &g.modules {
        for to in tos {
            if let (Some(a), Some(b)) = (map.get(from), map.get(to)) {
                if b > a {
                    problems.push(format!(
                        "{from} (layer {a}) imports {to} (layer {b}), a higher layer, in {}",
                        g.witness[&(from.clone(), to.clone())]
                    ));
                }
            }
        }
    }
    for c in cycles(&g.modules) {
        problems.push(format!("import cycle between modules: {}", c.join(", ")));
    }
    for c in cycles(&g.files) {
        problems.push(format!("import cycle between files: {}", c.join(", ")));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    // The check sees the imports at all (a parser that finds nothing would pass vacuously).
    assert!(g.modules["cli"].contains("prune"), "{:?}", g.modules);
    assert!(g.modules["prune"].contains("magnitude"), "{:?}", g.modules);
    assert!(
        g.files["prune/config"].contains("structural"),
        "{:?}",
        g.files
    );
}

#[test]
fn the_checker_sees_an_upward_import_and_a_cycle() {
    let map = layer_map("```layers\n2 top a\n1 low b\n```\n");
    assert_eq!(map["a"], 2);
    assert_eq!(map["b"], 1);
    let paths = referenced_paths(
        "b/x",
        "use crate::a::f; use super::{y, z::w}; /// [`crate::Document`]",
    );
    assert!(paths.contains(&vec!["a".to_string(), "f".to_string()]));
    assert!(paths.contains(&vec!["b".to_string(), "y".to_string()]));
    assert!(paths.contains(&vec!["b".to_string(), "z".to_string(), "w".to_string()]));
    assert!(paths.contains(&vec!["Document".to_string()]));
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    edges.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycles(&edges), vec![vec!["a", "b", "c"]]);
}

#[test]
fn every_module_names_its_layer_in_its_opening_comment() {
    let map = layers(&std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap());
    let mut missing = Vec::new();
    for (m, (_, layer)) in &map {
        let file = [format!("src/{m}.rs"), format!("src/{m}/mod.rs")]
            .into_iter()
            .map(|p| root().join(p))
            .find(|p| p.exists());
        // tflite_gen (generated, `#[path]`-mounted) is described in lib.rs.
        let Some(file) = file else { continue };
        let text = std::fs::read_to_string(&file).unwrap();
        let doc: String = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        if !doc.contains(&format!("Layer: {layer} ")) {
            missing.push(format!(
                "{}: no \"//! Layer: {layer} ...\" line",
                file.display()
            ));
        }
    }
    assert!(missing.is_empty(), "\n{}", missing.join("\n"));
}
