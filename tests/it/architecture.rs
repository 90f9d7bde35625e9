//! The shape of src/: no two top-level modules import each other (directly or round a loop),
//! and docs/architecture.md's module table names exactly the modules that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Top-level module → the top-level modules its files name as `crate::…` (tests excluded:
/// a test may reach anywhere).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = src();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&root) {
        let rel = file.strip_prefix(&root).expect("under src");
        let first = rel.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if matches!(module.as_str(), "lib" | "main") || rel.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        // Code before an inline `#[cfg(test)] mod tests { … }` only (a `mod tests;` line
        // declares a file, skipped above), without comments (doc links name
        // modules they do not import).
        let code: String = text
            .split("#[cfg(test)]\nmod tests {")
            .next()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let edges = graph.entry(module.clone()).or_default();
        let word = |from: &str| -> String {
            from.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let mut names = Vec::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + 7..];
            match rest.strip_prefix('{') {
                // `use crate::{a, b::c, d::{e, f}}`: the first word of each top-level item.
                Some(group) => {
                    let mut depth = 0;
                    let mut item_start = true;
                    for (i, c) in group.char_indices() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => break,
                            '}' => depth -= 1,
                            ',' if depth == 0 => item_start = true,
                            c if item_start && !c.is_whitespace() => {
                                names.push(word(&group[i..]));
                                item_start = false;
                            }
                            _ => {}
                        }
                    }
                }
                None => names.push(word(rest)),
            }
        }
        for name in names {
            let exists = root.join(format!("{name}.rs")).exists()
                || root.join(&name).join("mod.rs").exists();
            if exists && name != module {
                edges.insert(name);
            }
        }
    }
    graph
}

/// Whether `to` can be reached from `from`.
fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(m) = stack.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn no_two_modules_of_src_import_each_other() {
    let graph = imports();
    assert!(graph.len() >= 20, "found only {graph:?}");
    let cycles: Vec<String> = graph
        .iter()
        .flat_map(|(m, edges)| edges.iter().map(move |e| (m, e)))
        .filter(|(m, e)| reaches(&graph, e, m))
        .map(|(m, e)| format!("{m} -> {e} -> … -> {m}"))
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles between modules of src/: {cycles:#?}"
    );
}

#[test]
fn architecture_md_names_the_modules_that_exist() {
    let doc = std::fs::read_to_string(src().join("../docs/architecture.md")).expect("doc");
    let table: BTreeSet<String> = doc
        .lines()
        .skip_while(|l| !l.starts_with("## Modules"))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(|m| m.trim_end_matches('/').trim_end_matches(".rs").to_string())
        .collect();
    let real: BTreeSet<String> = imports().into_keys().chain(["main".to_string()]).collect();
    let missing: Vec<_> = real.difference(&table).collect();
    let stale: Vec<_> = table.difference(&real).collect();
    assert!(
        missing.is_empty(),
        "modules without a row in docs/architecture.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "rows of docs/architecture.md without a module: {stale:?}"
    );
}
