//! The write side: diff raw images against a base build's view, compress
//! frames, encode headers and upload a build atomically.
