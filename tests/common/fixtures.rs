//! The independent E2B-format fixture stores in tests/fixtures/e2b, written
//! by another implementation, and their manifest.json (what each build's
//! files must contain; tests/fixtures/e2b/README.md describes it).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The folder holding the fixture stores.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e2b")
}

/// The fixture store `name` (e.g. "v4-zstd").
pub fn fixture_store(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// All four fixture stores (the directories holding manifest.json), sorted.
pub fn fixture_stores() -> Vec<PathBuf> {
    let root = fixtures();
    let mut stores: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("fixture stores missing at {}: {e}", root.display()))
        .map(|e| e.expect("fixture dir entry").path())
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    stores.sort();
    assert_eq!(stores.len(), 4, "expected the four fixture stores");
    stores
}

/// The manifest of the fixture store at `store`.
pub fn manifest(store: &Path) -> Value {
    let path = store.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The manifest entry of build `id` of the fixture store at `store`.
pub fn manifest_build(store: &Path, id: &str) -> Value {
    manifest(store)["builds"]
        .as_array()
        .expect("builds")
        .iter()
        .find(|b| b["build_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not in the manifest"))
}
