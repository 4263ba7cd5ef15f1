//! `tdfs working-set`: a thin layer that stores a build's working set
//! first, for a build already in a store (packed by E2B, in template
//! order), without touching any of its objects.

use std::path::PathBuf;

use uuid::Uuid;

use super::pack::{EncodingArgs, print_report};
use super::parse::parse_build;
use super::{CliError, open_store_arg};
use crate::pack::{LayerTraces, working_set_layer};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store holding the build (the layer is written beside it).
    #[arg(long)]
    pub store: String,
    /// The build to lay over; none of its objects is rewritten.
    #[arg(value_parser = parse_build)]
    pub base: Uuid,
    /// Id of the new layer (default: a random UUID).
    #[arg(long, value_parser = parse_build)]
    pub build_id: Option<Uuid>,
    /// The memfile's trace (a recording of `tdfs mount --record-prefetch`,
    /// or a metadata.json listing one); default: the base's
    /// metadata.json's prefetch.memory, as E2B writes it.
    #[arg(long, value_name = "FILE")]
    pub prefetch_memfile: Option<PathBuf>,
    /// The rootfs's trace; default: the base's prefetch.rootfs, if any.
    #[arg(long, value_name = "FILE")]
    pub prefetch_rootfs: Option<PathBuf>,
    #[command(flatten)]
    pub encoding: EncodingArgs,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let store = open_store_arg(&args.store, false)?;
    let opts = args.encoding.options(Some(args.base), args.build_id);
    let traces = LayerTraces {
        memfile: args.prefetch_memfile,
        rootfs: args.prefetch_rootfs,
    };
    print_report(&working_set_layer(store, &opts, &traces)?);
    Ok(())
}
