//! A build's files as the user sees them: a header plus the diffs it
//! references. `Builds` loads headers lazily and shares one Chunker per
//! (build, file) across every template that references it;
//! `TemplateFile::read_at` walks a range block by block.
