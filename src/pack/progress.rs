//! Progress bars for the long-running commands: drawn on stderr only when it
//! is a terminal, hidden (and free) otherwise, so scripts and logs stay quiet.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-counting bar of `len` bytes labelled `what`; hidden unless
/// `enabled` and stderr is a terminal.
pub fn byte_bar(enabled: bool, len: u64, what: &str) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .expect("the template is valid")
    .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_prefix(what.to_string())
}
