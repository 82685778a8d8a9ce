//! The top-level modules of the shardcar crate form a layered graph: no
//! module imports one that imports it back, directly or through others.
//! Read from the source (every `crate::name` and top-level `super::name`),
//! so a cycle fails the build's tests the moment it is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The names that follow `prefix` in `code`: `crate::a`, `crate::{a, b::c}`.
fn names_after(code: &str, prefix: &str, out: &mut BTreeSet<String>) {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of a braced group.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(rest));
        }
    }
}

/// Top-level module → the top-level modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
        let first = parts.next().expect("a path");
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" || module == "bin" {
            continue;
        }
        // In `m.rs` and `m/mod.rs`, `super::` is the crate root.
        let top_file = rel.components().count() == 1 || rel.ends_with(format!("{module}/mod.rs"));
        let text = std::fs::read_to_string(&file).expect("read source");
        let code: String =
            text.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| format!("{l}\n")).collect();
        let mut used = BTreeSet::new();
        names_after(&code, "crate::", &mut used);
        if top_file {
            names_after(&code, "super::", &mut used);
        }
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(used.into_iter().filter(|u| !u.is_empty() && *u != module && *u != "self"));
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    graph
}

/// A path from `from` back to `to`, if there is one.
fn path_back(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        if node == to {
            return Some(path);
        }
        if !seen.insert(node.clone()) {
            continue;
        }
        for next in graph.get(&node).into_iter().flatten() {
            let mut p = path.clone();
            p.push(next.clone());
            stack.push((next.clone(), p));
        }
    }
    None
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let graph = graph();
    assert!(graph.len() > 10, "found the crate's modules: {graph:?}");
    let mut cycles = BTreeSet::new();
    for (module, deps) in &graph {
        for dep in deps {
            if let Some(back) = path_back(&graph, dep, module) {
                let mut cycle = vec![module.clone()];
                cycle.extend(back);
                cycles.insert(cycle.join(" -> "));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between top-level modules:\n{}",
        cycles.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_reader_finds_grouped_and_plain_imports() {
    let mut out = BTreeSet::new();
    names_after("use crate::{a::B, c, d::{e, f}};\nlet x = crate::g::h();\nmy_crate::no", "crate::", &mut out);
    assert_eq!(out.into_iter().collect::<Vec<_>>(), ["a", "c", "d", "g"]);
}
