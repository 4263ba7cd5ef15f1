//! `tdfs demo MOUNTPOINT`: make a demo store (a base build and two layers,
//! with a real ext4 rootfs and a realistic memory image) unless one is there
//! already, then mount it: the one-line way to see tdfs work.

use std::io::IsTerminal;
use std::path::PathBuf;

use super::{CliError, mount};
use crate::format::Compression;
use crate::pack::demo::make_demo_store;
use crate::store::{LocalStore, Store};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to mount the demo store (created if missing).
    pub mountpoint: PathBuf,

    /// The demo store's directory; made when it holds no builds.
    #[arg(long, value_name = "DIR", default_value = "demo-store")]
    pub store: PathBuf,

    /// Compression of the demo builds when they are made.
    #[arg(long, default_value = "zstd", value_parser = super::parse::parse_compression)]
    pub compress: Compression,

    /// Stay in the foreground (Ctrl-C unmounts) instead of running as a daemon.
    #[arg(short = 'f', long)]
    pub foreground: bool,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let existing = LocalStore::open(&args.store)
        .and_then(|s| s.list_builds())
        .unwrap_or_default();
    let builds = if existing.is_empty() {
        eprintln!("tdfs: making a demo store in {}", args.store.display());
        let header_version = if args.compress == Compression::None {
            3
        } else {
            4
        };
        let progress = std::io::stderr().is_terminal();
        make_demo_store(&args.store, args.compress, header_version, progress)?
            .builds
            .to_vec()
    } else {
        eprintln!("tdfs: using the demo store in {}", args.store.display());
        existing
    };
    std::fs::create_dir_all(&args.mountpoint).map_err(|source| CliError::Io {
        path: args.mountpoint.clone(),
        source,
    })?;
    // The mount's own defaults (`MountArgs::new`), so the demo mounts as
    // a plain `tdfs mount` would.
    let mut mount_args = mount::MountArgs::new(
        args.store.to_string_lossy().into_owned(),
        args.mountpoint.clone(),
    );
    mount_args.foreground = args.foreground;
    // What starts the mount's serving processes: the same mount as a
    // `tdfs mount` command line (the demo's own would make a demo again).
    let mut argv: Vec<std::ffi::OsString> = vec![
        "mount".into(),
        args.store.clone().into(),
        args.mountpoint.clone().into(),
    ];
    if args.foreground {
        argv.push("--foreground".into());
    }
    if !args.foreground {
        mount::run_as(mount_args, argv)?;
        print_tour(&args.mountpoint, &builds);
        return Ok(());
    }
    print_tour(&args.mountpoint, &builds);
    Ok(mount::run_as(mount_args, argv)?)
}

fn print_tour(mnt: &std::path::Path, builds: &[uuid::Uuid]) {
    let m = mnt.display();
    let last = builds.last().map(|b| b.to_string()).unwrap_or_default();
    eprintln!("tdfs: {} builds mounted at {m}. Try:", builds.len());
    eprintln!("  ls -l {m}/{last}");
    eprintln!("  getfattr -d {m}/{last}/memfile");
    eprintln!("  e2fsck -fn {m}/{last}/rootfs.ext4");
    eprintln!("  cat {m}/.stats");
    eprintln!("  umount {m}        # when done");
}
