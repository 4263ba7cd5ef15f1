//! What one serving process of a mount leaves the next, so the next can
//! take over the kernel connection without the kernel noticing (issue 25):
//! the /dev/fuse descriptor is kept by something that outlives the process
//! (tdfs's supervisor, or systemd's fd store), and beside it, in a state
//! directory, this module's `connection` file (what INIT negotiated, which
//! the kernel never sends again, and the takeover generation) and the inode
//! table (`fs::inode`'s file).
//!
//! Why a takeover loses nothing: a request a worker has read but not
//! answered sits in the kernel's processing list of the open file it was
//! read from. Every worker reads the one open file the keeper also holds
//! (no `clone_fd`: a cloned file dies with the process, and the kernel ends
//! its requests with ECONNABORTED), so when a process dies its requests stay
//! there, and the next one's `FUSE_NOTIFY_RESEND` queues them again.
//! Inode numbers mean the same builds (the saved table); file handles are
//! numbered per generation and opened again on first use (`adopt`).

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fuser::{InitFlags, Negotiated, Version};

use super::inode::InodeTable;

/// The file of negotiated parameters in a state directory.
const CONNECTION_FILE: &str = "connection";
/// The inode table in a state directory.
const INODES_FILE: &str = "inodes";
/// First line of the connection file, so a file of another format (or
/// version) is refused rather than misread.
const MAGIC: &str = "tdfs-connection 1";
/// Handles of one generation are numbered from `generation << HANDLE_SHIFT`:
/// 2^40 opens per serving process before numbers could meet.
const HANDLE_SHIFT: u32 = 40;
/// Longest connection file read (it is a few short lines; untrusted).
const MAX_CONNECTION_FILE: u64 = 4096;

/// A kernel connection handed to this process by the one before it.
#[derive(Debug)]
pub struct Handover {
    /// The /dev/fuse descriptor, initialised.
    pub device: OwnedFd,
    /// What its INIT settled.
    pub negotiated: Negotiated,
}

/// The state directory of one mount's connection: where the parameters and
/// the inode table are kept for the next serving process.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

/// What a serving process starts from: a fresh connection (generation 0)
/// or the n-th takeover of one.
#[derive(Debug)]
pub struct Continuity {
    /// The mount's inode table, kept in the state directory.
    pub inodes: InodeTable,
    /// The first file handle number this process gives out.
    pub first_handle: u64,
    /// 0 for the process that mounted, n for the n-th takeover.
    pub generation: u64,
}

impl StateDir {
    /// The state directory `path`, made (mode 0700) if missing.
    ///
    /// # Errors
    /// It cannot be made.
    pub fn open(path: &Path) -> io::Result<StateDir> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tables of a process that mounted a new connection: the inode
    /// table starts over, the generation is 0.
    ///
    /// # Errors
    /// The inode table file cannot be written.
    pub fn start(&self) -> io::Result<Continuity> {
        // A connection file left by an earlier connection must not be
        // taken for this one's before `save` writes it.
        match fs::remove_file(self.path.join(CONNECTION_FILE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(Continuity {
            inodes: InodeTable::persistent(&self.path.join(INODES_FILE), true)?,
            first_handle: 1,
            generation: 0,
        })
    }

    /// Note what INIT negotiated for `generation`, for the next process.
    /// Written to a new file and renamed, so a reader sees the old or the
    /// new file, never a part.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self, negotiated: &Negotiated, generation: u64) -> io::Result<()> {
        let text = format!(
            "{MAGIC}\nversion {}.{}\nflags {:#x}\nkernel_flags {:#x}\nmax_write {}\n\
             max_readahead {}\ngeneration {generation}\n",
            negotiated.version.0,
            negotiated.version.1,
            negotiated.flags.bits(),
            negotiated.kernel_flags.bits(),
            negotiated.max_write,
            negotiated.max_readahead,
        );
        let path = self.path.join(CONNECTION_FILE);
        let new = self.path.join(format!("{CONNECTION_FILE}.new"));
        // 0600 like every file of the cache directory: INIT's parameters
        // are nobody else's business.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&new)?;
        io::Write::write_all(&mut file, text.as_bytes())?;
        fs::rename(&new, &path)
    }

    /// Take over: the negotiated parameters the last process saved, and the
    /// tables of the next generation (saved as this one's at once, so a
    /// process that dies before serving still moves the generation on and
    /// never reuses a handle number the kernel may hold).
    ///
    /// # Errors
    /// The connection file is missing or not one tdfs wrote (the error says
    /// which line), or the inode table cannot be read.
    pub fn resume(&self) -> io::Result<(Negotiated, Continuity)> {
        let path = self.path.join(CONNECTION_FILE);
        let size = fs::metadata(&path)?.len();
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {why} (not a connection file tdfs wrote)",
                    path.display()
                ),
            )
        };
        if size > MAX_CONNECTION_FILE {
            return Err(bad("too long"));
        }
        let text = fs::read_to_string(&path)?;
        let (negotiated, generation) = parse(&text).map_err(|why| bad(&why))?;
        let generation = generation.checked_add(1).ok_or_else(|| bad("generation"))?;
        let first_handle = generation
            .checked_shl(HANDLE_SHIFT)
            .filter(|f| f >> HANDLE_SHIFT == generation)
            .ok_or_else(|| bad("generation too high"))?;
        self.save(&negotiated, generation)?;
        let inodes = InodeTable::persistent(&self.path.join(INODES_FILE), false)?;
        Ok((
            negotiated,
            Continuity {
                inodes,
                first_handle,
                generation,
            },
        ))
    }

    /// Remove what the directory holds, and the directory: the connection
    /// has ended. Errors are logged only (a leftover directory is harmless:
    /// the next mount starts it over).
    pub fn remove(&self) {
        for name in [CONNECTION_FILE, INODES_FILE] {
            let _ = fs::remove_file(self.path.join(name));
        }
        if let Err(e) = fs::remove_dir(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::debug!("removing {}: {e}", self.path.display());
        }
    }
}

/// The fields of a connection file, each on its line in order.
fn parse(text: &str) -> Result<(Negotiated, u64), String> {
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("first line is not {MAGIC:?}"));
    }
    let mut field = |name: &str| -> Result<String, String> {
        let line = lines.next().ok_or(format!("no {name} line"))?;
        line.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .map(str::to_string)
            .ok_or(format!("expected {name}, found {line:?}"))
    };
    let number = |name: &str, value: String| -> Result<u64, String> {
        match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => value.parse(),
        }
        .map_err(|_| format!("{name} {value:?} is not a number"))
    };
    let version = field("version")?;
    let (major, minor) = version
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or(format!("version {version:?} is not MAJOR.MINOR"))?;
    let flags = number("flags", field("flags")?)?;
    let kernel_flags = number("kernel_flags", field("kernel_flags")?)?;
    let u32_field = |name: &str, value: String| -> Result<u32, String> {
        u32::try_from(number(name, value)?).map_err(|_| format!("{name} is out of range"))
    };
    let max_write = u32_field("max_write", field("max_write")?)?;
    let max_readahead = u32_field("max_readahead", field("max_readahead")?)?;
    let generation = number("generation", field("generation")?)?;
    Ok((
        Negotiated {
            version: Version(major, minor),
            flags: InitFlags::from_bits_retain(flags),
            kernel_flags: InitFlags::from_bits_retain(kernel_flags),
            max_write,
            max_readahead,
        },
        generation,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiated() -> Negotiated {
        Negotiated {
            version: Version(7, 45),
            flags: InitFlags::FUSE_ASYNC_READ | InitFlags::FUSE_PARALLEL_DIROPS,
            kernel_flags: InitFlags::FUSE_ASYNC_READ | InitFlags::FUSE_HAS_RESEND,
            max_write: 16 << 20,
            max_readahead: 1 << 20,
        }
    }

    #[test]
    fn each_takeover_gets_the_parameters_and_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let first = state.start().unwrap();
        assert_eq!((first.generation, first.first_handle), (0, 1));
        assert!(state.resume().is_err(), "nothing saved yet");
        state.save(&negotiated(), 0).unwrap();
        let (got, next) = state.resume().unwrap();
        assert_eq!(got, negotiated());
        assert_eq!((next.generation, next.first_handle), (1, 1 << 40));
        // A process that died before serving still used up its generation.
        let (_, after) = state.resume().unwrap();
        assert_eq!(after.generation, 2);
        state.remove();
        assert!(!dir.path().join("state").exists());
    }

    #[test]
    fn a_damaged_connection_file_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.save(&negotiated(), 3).unwrap();
        let path = dir.path().join(CONNECTION_FILE);
        let good = fs::read_to_string(&path).unwrap();
        for (from, to, says) in [
            ("tdfs-connection 1", "tdfs-connection 9", "first line"),
            ("version 7.45", "version 7", "MAJOR.MINOR"),
            (
                "max_write 16777216",
                "max_write 99999999999",
                "out of range",
            ),
            ("flags 0x", "flags zz", "is not a number"),
            ("generation 3", "generation x", "not a number"),
        ] {
            fs::write(&path, good.replace(from, to)).unwrap();
            let err = state.resume().unwrap_err().to_string();
            assert!(err.contains(says), "{from} -> {to}: {err}");
        }
        fs::write(&path, good.lines().take(3).collect::<Vec<_>>().join("\n")).unwrap();
        let err = state.resume().unwrap_err().to_string();
        assert!(err.contains("no kernel_flags line"), "{err}");
        fs::write(&path, "x".repeat(5000)).unwrap();
        let err = state.resume().unwrap_err().to_string();
        assert!(err.contains("too long"), "{err}");
    }
}
