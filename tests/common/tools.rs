//! The outside tools a test needs, and the one switch per tool that lets a
//! machine without it skip the tests that need it (see `mod.rs`'s list).
//! A switch skips only when its tool is missing: a machine that has the
//! tool always runs the tests.

/// Whether a test can use its tool: true when `present`. When it is not,
/// false (the test returns early, saying why on stderr) if the environment
/// sets `switch=1`, else a panic naming `what` is missing, `install` (how
/// to get it) and `switch`.
pub fn tool_available(present: bool, switch: &str, what: &str, install: &str) -> bool {
    if present {
        return true;
    }
    if std::env::var(switch).as_deref() == Ok("1") {
        eprintln!("skipped: {what} is missing and {switch}=1");
        return false;
    }
    panic!("{what} is missing: {install} (or set {switch}=1 to skip what needs it)");
}
