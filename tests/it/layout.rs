//! The house rules of `src/` that ARCHITECTURE.md states, checked on the source itself: every
//! top-level module sits in a layer and names only its own layer or lower ones, the modules form
//! no import circle, `cli.rs` is clap types only, `fs/` and `image/` never reach up into
//! components, commands or the command line, and directories below a tree root are opened for a
//! walk in one place, `src/fs/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, low to high. A module may name modules of its own layer or lower ones (the circle
/// check below keeps a layer's own modules in one direction). `cli` is data that only the
/// program's entry (`lib.rs`) and `commands` read; it names nothing of the crate.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "primitives",
        &[
            "cli",
            "exit_codes",
            "logging",
            "config",
            "plan",
            "state",
            "tsv",
            "fs",
            "progress",
        ],
    ),
    (
        "capabilities",
        &[
            "accounts", "policy", "image", "sync", "kube", "render", "facts", "metrics", "hold",
            "puppetdb", "fleet", "routing", "release", "motd",
        ],
    ),
    ("components", &["components"]),
    ("commands", &["commands"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/sync/engine/mod.rs` -> `sync`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without its unit tests and comments.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level crate modules a file names (`crate::X`, and `use crate::{X, Y}`).
fn named(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    // Items of lib.rs itself (`crate::VERSION`) are not modules.
    out.retain(|n| n.chars().next().is_some_and(|c| c.is_lowercase()));
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let m = module_of(&f);
        if m == "main" || m == "lib" {
            continue;
        }
        let deps = g.entry(m.clone()).or_default();
        for n in named(&code(&f)) {
            if n != m {
                deps.insert(n);
            }
        }
    }
    g
}

#[test]
fn every_module_sits_in_a_layer_and_names_only_its_own_or_lower_ones() {
    let mut wrong = Vec::new();
    for (m, deps) in graph() {
        let Some(lm) = layer_of(&m) else {
            wrong.push(format!(
                "src/{m}: not in any layer; add it to ARCHITECTURE.md and tests/it/layout.rs"
            ));
            continue;
        };
        for d in deps {
            match layer_of(&d) {
                Some(ld) if ld <= lm => {}
                Some(ld) => wrong.push(format!(
                    "src/{m} ({}) names crate::{d} ({}), a higher layer",
                    LAYERS[lm].0, LAYERS[ld].0
                )),
                None => wrong.push(format!("src/{m} names crate::{d}, which is in no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn modules_form_no_import_circle() {
    let g = graph();
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(1) => {
                let i = path.iter().position(|p| p == m).unwrap();
                let mut c = path[i..].to_vec();
                c.push(m.to_string());
                return Some(c);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if let Some(c) = visit(m, &g, &mut state, &mut Vec::new()) {
            panic!("import circle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn cli_is_clap_types_only() {
    let code = code(&src().join("cli.rs"));
    assert!(
        !code.contains("crate::") && !code.contains("super::"),
        "src/cli.rs names something of the crate"
    );
    for line in code.lines().filter(|l| l.trim_start().starts_with("use ")) {
        let path = line.trim_start().trim_start_matches("use ");
        assert!(
            path.starts_with("clap") || path.starts_with("std"),
            "src/cli.rs imports {path:?}: only clap (and std) types belong there"
        );
    }
}

#[test]
fn fs_and_image_never_reach_up() {
    for dir in ["fs", "image"] {
        let mut files = Vec::new();
        rust_files(&src().join(dir), &mut files);
        for f in files {
            let named = named(&code(&f));
            for up in ["components", "commands", "cli"] {
                assert!(
                    !named.contains(up),
                    "{} names crate::{up}",
                    f.strip_prefix(src()).unwrap().display()
                );
            }
        }
    }
}

/// A file over 500 lines says why in its `//!` paragraph.
#[test]
fn long_files_say_why() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut silent = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let head: String = text
            .lines()
            .take_while(|l| l.starts_with("//!") || l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if text.lines().count() > 500 && !head.contains("500 lines") {
            silent.push(f.strip_prefix(src()).unwrap().display().to_string());
        }
    }
    assert!(
        silent.is_empty(),
        "over 500 lines with no reason in the //! paragraph: {silent:?}"
    );
}

/// The walk's directory opens: `O_DIRECTORY` (and the flag set that carries it) appears in
/// exactly one file outside tests, `src/fs/at.rs`, and every directory below a root is opened
/// by `open_dir_at` there.
#[test]
fn directories_below_a_root_are_opened_in_one_place() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut holders = Vec::new();
    for f in &files {
        let c = code(f);
        if c.contains("OFlags::DIRECTORY") || c.contains("DIR_FLAGS") {
            holders.push(f.strip_prefix(src()).unwrap().display().to_string());
        }
    }
    assert_eq!(holders, ["fs/at.rs"]);
    let at = code(&src().join("fs/at.rs"));
    let opens: Vec<&str> = at
        .lines()
        .filter(|l| l.contains("DIR_FLAGS") && !l.contains("const DIR_FLAGS"))
        .collect();
    assert_eq!(
        opens.len(),
        2,
        "DIR_FLAGS used by exactly open_dir_at and open_dir_path: {opens:?}"
    );
    let walk = code(&src().join("fs/walk.rs"));
    assert!(walk.contains("open_dir_at(parent, name)"));
}
