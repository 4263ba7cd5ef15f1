//! ARCHITECTURE.md is the map of `src/`: every file there is named under its
//! layer. This fails when a file is added, moved or renamed without the map.

use std::path::{Path, PathBuf};

/// Files of `src/`, relative to it, sorted.
fn source_files(dir: &Path, root: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("src/ entry").path();
        if path.is_dir() {
            source_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).expect("under src/");
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// The text ARCHITECTURE.md gives layer `layer` (a folder of `src/`, as
/// `chunker`): the lines of its layers block from the one that starts with
/// `chunker/` or `chunker.rs` to the next line that starts a layer.
fn layer_text(map: &str, layer: &str) -> String {
    let starts_layer = |line: &str| {
        let first = line.split_whitespace().next().unwrap_or("");
        !line.starts_with(' ') && (first.ends_with('/') || first.ends_with(".rs"))
    };
    let mut text = String::new();
    let mut inside = false;
    for line in map.lines() {
        if starts_layer(line) {
            let first = line.split_whitespace().next().unwrap_or("");
            inside = first == format!("{layer}/") || first == format!("{layer}.rs");
        }
        if inside {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// True when `name` (`cache.rs`, `object/reads.rs`) stands in `text` as a
/// whole name, not inside a longer one (`cache.rs` in `cache_dir.rs`... is
/// not `cache.rs`; `block.rs` in `myblock.rs` is not either).
fn names(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn architecture_names_every_source_file() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(crate_dir.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let src = crate_dir.join("src");
    let mut files = Vec::new();
    source_files(&src, &src, &mut files);
    files.sort();
    let missing: Vec<&String> = files
        .iter()
        .filter(|rel| {
            if names(&map, rel) {
                return false;
            }
            // Under its layer's paragraph a file may be named without the
            // layer's folder: `chunker/cache.rs` as `cache.rs`.
            match rel.split_once('/') {
                Some((layer, rest)) => !names(&layer_text(&map, layer), rest),
                None => true,
            }
        })
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not name these files of src/ (add each under its layer, with its one job): {missing:?}"
    );
}

/// The layers of ARCHITECTURE.md's order, top first: a layer may use only
/// layers of a later rank (layers of one rank use none of each other).
const RANKS: &[&[&str]] = &[
    &["cli"],
    &["fs", "peer", "pack"],
    &["template"],
    &["chunker"],
    &["store"],
    &["metrics"],
    &["codec"],
    &["format", "sync"],
];

fn rank(layer: &str) -> Option<usize> {
    RANKS.iter().position(|r| r.contains(&layer))
}

/// The layer a file of `src/` belongs to (`chunker/cache.rs` and
/// `chunker.rs` to `chunker`); `None` for the crate's root files.
fn layer_of(rel: &str) -> Option<&str> {
    let top = rel.split('/').next()?;
    let layer = top.strip_suffix(".rs").unwrap_or(top);
    rank(layer).map(|_| layer)
}

#[test]
fn layers_use_only_the_layers_below_them() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &src, &mut files);
    let mut broken = Vec::new();
    for rel in &files {
        let Some(layer) = layer_of(rel) else {
            assert!(
                ["lib.rs", "main.rs"].contains(&rel.as_str()),
                "src/{rel} is in no layer of ARCHITECTURE.md's order: add it to RANKS and the map"
            );
            continue;
        };
        let own = rank(layer).expect("layer has a rank");
        let text = std::fs::read_to_string(src.join(rel)).expect("source file");
        // Doc comments may name another layer; code may not use it.
        let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
        for line in code {
            for (i, _) in line.match_indices("crate::") {
                let used: String = line[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                match rank(&used) {
                    Some(r) if used != layer && r <= own => {
                        broken.push(format!("src/{rel} ({layer}) uses crate::{used}"))
                    }
                    _ => {}
                }
            }
        }
    }
    broken.dedup();
    assert!(
        broken.is_empty(),
        "layer rules of ARCHITECTURE.md broken (a layer uses only the layers below it): {broken:#?}"
    );
}
