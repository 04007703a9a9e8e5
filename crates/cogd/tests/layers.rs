//! Checks the map's "must not know" column against the code.
//!
//! `docs/architecture.md` lists, for each module of the server crate, the
//! modules it must not know, in backticks in the table's last column (e.g.
//! `` `service`, `supervisor` ``). This test reads every `crate::` path in the
//! module's sources (in `use` lines and in code alike, comments skipped) and
//! fails naming the file and the path when one reaches a module it must not
//! know, so the map and the code cannot drift apart.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One row of the map: the sources it covers and the modules they must not use.
struct Rule {
    path: String,
    forbidden: BTreeSet<String>,
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The rows of the "Crates and packages" table that name a part of `crates/cogd/src`.
fn rules() -> Vec<Rule> {
    let doc = manifest_dir().join("../../docs/architecture.md");
    let text = std::fs::read_to_string(&doc).expect("docs/architecture.md");
    let mut rules = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("| `crates/cogd/src/") else {
            continue;
        };
        let Some((path, _)) = rest.split_once('`') else {
            continue;
        };
        let last = line
            .trim_end()
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .unwrap_or("");
        let forbidden = last
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        rules.push(Rule {
            path: path.trim_end_matches('/').to_owned(),
            forbidden,
        });
    }
    rules
}

/// Every `.rs` file under `path` (a file or a directory), with its sibling
/// directory for a `name.rs` module file that has one.
fn sources(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            out.extend(sources(&entry.unwrap().path()));
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
    out
}

/// The top-level module of each `crate::` path in `source`, comments skipped.
fn crate_modules(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find("};").unwrap_or(group.len());
            let mut depth = 0;
            let mut item_start = true;
            let mut word = String::new();
            for c in group[..end].chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if item_start && !word.is_empty() {
                            found.insert(std::mem::take(&mut word));
                        }
                        item_start = true;
                    }
                    c if item_start && (c.is_alphanumeric() || c == '_') => word.push(c),
                    _ if item_start && !word.is_empty() => {
                        found.insert(std::mem::take(&mut word));
                        item_start = false;
                    }
                    _ => {}
                }
            }
            if !word.is_empty() {
                found.insert(word);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn no_module_uses_one_the_map_says_it_must_not_know() {
    let src = manifest_dir().join("src");
    let rules = rules();
    assert!(
        rules.len() >= 10,
        "the map's table was not found ({} rows)",
        rules.len()
    );
    let mut problems = Vec::new();
    for rule in &rules {
        let mut files = sources(&src.join(&rule.path));
        if files.is_empty() {
            files = sources(&src.join(format!("{}.rs", rule.path)));
        }
        assert!(
            !files.is_empty(),
            "the map names `{}`, which has no sources",
            rule.path
        );
        for file in files {
            let used = crate_modules(&std::fs::read_to_string(&file).unwrap());
            for module in used.intersection(&rule.forbidden) {
                problems.push(format!("{} uses crate::{module}", file.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "against the map:\n{}",
        problems.join("\n")
    );
}

#[test]
fn crate_paths_are_found_in_plain_and_grouped_uses() {
    let found = crate_modules(
        "use crate::a::B;\nuse crate::{c::D, e, f::{G, H}};\n// crate::z\nlet x = crate::k::f();",
    );
    let names: Vec<_> = found.iter().map(String::as_str).collect();
    assert_eq!(names, ["a", "c", "e", "f", "k"]);
}
