//! Unit-test support for the layers above: a `Builds` over a fixture store,
//! and store failures as the errors a reader gets, so tests of `fs` need not
//! reach past `template`.

use std::path::Path;
use std::sync::Arc;

use super::{Builds, TemplateConfig, TemplateError};
use crate::store::{LocalStore, StoreError};

/// A `Builds` over the fixture store `tests/fixtures/e2b/NAME`.
pub(crate) fn fixture_builds(name: &str, config: TemplateConfig) -> Arc<Builds> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/e2b")
        .join(name);
    Builds::new(Arc::new(LocalStore::open(root).unwrap()), config)
}

/// A store I/O failure on `key`, with `detail` as its cause.
pub(crate) fn store_io_error(key: &str, detail: &str) -> TemplateError {
    TemplateError::Store(StoreError::Io {
        key: key.into(),
        source: std::io::Error::other(detail.to_string()),
    })
}

/// A short read of `key`.
pub(crate) fn short_read(key: &str) -> TemplateError {
    TemplateError::Store(StoreError::ShortRead {
        key: key.into(),
        expected: 2,
        got: 1,
    })
}

/// An empty flat file in `dir`, for tests of what is done with one.
pub(crate) fn flat_file(dir: &std::path::Path) -> std::sync::Arc<super::FlatFile> {
    std::sync::Arc::new(super::FlatFile::for_test(&dir.join("flat")))
}
