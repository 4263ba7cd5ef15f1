//! A demo store for the README's first command: three builds (a base and
//! two layers) of a small but real VM template. The rootfs is a real ext4
//! image (`mkfs.ext4 -d` from a generated tree; the layers change files with
//! `debugfs`, so every layer still passes `e2fsck -fn`), and the memory
//! image looks like a guest's: free (zero) regions, kernel-like code, page
//! cache text, heap structures and pages repeated across memory.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use uuid::Uuid;

use super::{PackError, PackInputs, PackOptions, ScratchDir, pack_build};
use crate::format::{Compression, PAGE_SIZE};
use crate::store::LocalStore;

/// Size of the demo memory image.
pub const DEMO_MEMFILE_SIZE: u64 = 256 << 20;
/// Size of the demo rootfs image.
pub const DEMO_ROOTFS_SIZE: u64 = 64 << 20;
const HUGEPAGE: u64 = 2 << 20;
const PAGE: usize = PAGE_SIZE as usize;

/// The builds of a demo store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoStore {
    /// Base, first layer, second layer: each layer is on top of the one before.
    pub builds: [Uuid; 3],
}

/// Make a demo store in `dir` (created if missing): a base build and two
/// layers, packed with `compress` and header version `header_version`.
pub fn make_demo_store(
    dir: &Path,
    compress: Compression,
    header_version: u16,
    progress: bool,
) -> Result<DemoStore, PackError> {
    let store = Arc::new(LocalStore::create(dir)?);
    let scratch = ScratchDir::new(None)?;
    let work = scratch.path();
    let mut rng = Rng(0x7d75_2026_0001);

    let memfile = work.join("memfile");
    write_memory(&memfile, &mut rng)?;
    let tree = work.join("tree");
    write_tree(&tree, &mut rng)?;
    let rootfs = work.join("rootfs.ext4");
    make_ext4(&rootfs, &tree)?;

    let mut builds = [Uuid::nil(); 3];
    let mut base = None;
    for (layer, slot) in builds.iter_mut().enumerate() {
        if layer > 0 {
            change_memory(&memfile, layer, &mut rng)?;
            change_rootfs(&rootfs, work, layer, &mut rng)?;
        }
        let build_id = Uuid::new_v4();
        let snapfile = work.join(format!("snapfile-{layer}"));
        write_file(&snapfile, &snapfile_bytes(layer, &mut rng))?;
        let metadata = work.join(format!("metadata-{layer}.json"));
        write_file(&metadata, &metadata_json(build_id, base))?;
        let opts = PackOptions {
            base,
            build_id: Some(build_id),
            compression: compress,
            header_version: Some(header_version),
            memfile_block_size: Some(HUGEPAGE),
            progress,
            work_dir: Some(work.to_path_buf()),
            ..PackOptions::default()
        };
        let inputs = PackInputs {
            memfile: memfile.clone(),
            rootfs: rootfs.clone(),
            snapfile: Some(snapfile),
            metadata: Some(metadata),
            prefetch_memfile: None,
            prefetch_rootfs: None,
        };
        pack_build(store.clone(), &opts, &inputs)?;
        *slot = build_id;
        base = Some(build_id);
    }
    Ok(DemoStore { builds })
}

/// splitmix64: a small, fast, deterministic generator for demo bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "the", "template", "sandbox", "kernel", "memory", "page", "block", "file", "system", "read",
    "write", "build", "layer", "cache", "fetch", "frame", "mount", "process", "thread", "socket",
    "request", "response", "error", "config", "value", "user", "session", "python", "import",
    "return", "function", "data", "buffer", "offset", "length", "header", "node", "server",
    "client", "timeout", "retry", "log", "info", "debug", "started", "finished", "ok", "of", "and",
    "to", "in", "a", "is", "for", "with", "on",
];

/// Text that reads like logs, source and documentation.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let words = 4 + rng.below(10);
        for w in 0..words {
            if w > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        }
        out.extend_from_slice(if rng.below(4) == 0 { b".\n" } else { b", " });
    }
    out.truncate(len);
    out
}

/// Pages that occur many times in a guest (zeroed-then-initialized
/// structures, identical library pages).
fn repeated_page(kind: u64) -> Vec<u8> {
    (0..PAGE)
        .map(|i| match kind % 4 {
            0 => (i % 64) as u8,
            1 => {
                if i % 16 < 8 {
                    0xff
                } else {
                    0
                }
            }
            2 => b"tdfs-demo-shared-page "[i % 22],
            _ => (i / 256) as u8 ^ 0x5a,
        })
        .collect()
}

/// A heap page: pointer-like words and small integers.
fn struct_page(rng: &mut Rng) -> Vec<u8> {
    let mut page = Vec::with_capacity(PAGE);
    let base = 0xffff_8880_0000_0000u64 | (rng.below(1 << 20) << 12);
    while page.len() < PAGE {
        let word = match rng.below(4) {
            0 => base + rng.below(1 << 16) * 8,
            1 => rng.below(1024),
            2 => 0,
            _ => rng.next(),
        };
        page.extend_from_slice(&word.to_le_bytes());
    }
    page
}

/// One 4 KiB page of a "used" region.
fn used_page(rng: &mut Rng) -> Vec<u8> {
    match rng.below(100) {
        0..=24 => vec![0; PAGE],
        25..=49 => text(rng, PAGE),
        50..=64 => {
            let mut p = vec![0; PAGE];
            rng.fill(&mut p);
            p
        }
        65..=79 => repeated_page(rng.below(4)),
        _ => struct_page(rng),
    }
}

/// A 2 MiB region as a guest leaves it: most are free (zeros); the low
/// ones hold the kernel; the rest are mixed.
fn region(rng: &mut Rng, index: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HUGEPAGE as usize);
    let free = index >= 4 && rng.below(100) < 55;
    for _ in 0..HUGEPAGE as usize / PAGE {
        if free {
            out.extend_from_slice(&[0; PAGE]);
        } else if index < 4 {
            // Kernel text and data: dense, barely compressible.
            let mut p = vec![0; PAGE];
            rng.fill(&mut p[..PAGE * 3 / 4]);
            out.extend_from_slice(&p);
        } else {
            out.extend_from_slice(&used_page(rng));
        }
    }
    out
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PackError> {
    fs::write(path, bytes).map_err(io_err(path))
}

fn write_memory(path: &Path, rng: &mut Rng) -> Result<(), PackError> {
    let file = File::create(path).map_err(io_err(path))?;
    let mut out = BufWriter::with_capacity(HUGEPAGE as usize, file);
    for index in 0..DEMO_MEMFILE_SIZE / HUGEPAGE {
        out.write_all(&region(rng, index)).map_err(io_err(path))?;
    }
    out.flush().map_err(io_err(path))
}

/// What a guest does between snapshots: touches pages in used regions,
/// allocates some free regions and frees a few used ones.
fn change_memory(path: &Path, layer: usize, rng: &mut Rng) -> Result<(), PackError> {
    let file = File::options()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let regions = DEMO_MEMFILE_SIZE / HUGEPAGE;
    for _ in 0..10 + layer * 2 {
        let region = 4 + rng.below(regions - 4);
        for _ in 0..1 + rng.below(48) {
            let page = rng.below(HUGEPAGE / PAGE_SIZE);
            let off = region * HUGEPAGE + page * PAGE_SIZE;
            file.write_all_at(&used_page(rng), off)
                .map_err(io_err(path))?;
        }
    }
    for _ in 0..3 {
        let index = 4 + rng.below(regions - 4);
        let mut fresh = region(rng, 4);
        if fresh.iter().all(|&b| b == 0) {
            fresh = text(rng, HUGEPAGE as usize);
        }
        file.write_all_at(&fresh, index * HUGEPAGE)
            .map_err(io_err(path))?;
    }
    let index = 4 + rng.below(regions - 4);
    file.write_all_at(&vec![0; HUGEPAGE as usize], index * HUGEPAGE)
        .map_err(io_err(path))?;
    Ok(())
}

/// The rootfs tree of the base: a few MB of text and binaries.
fn write_tree(root: &Path, rng: &mut Rng) -> Result<(), PackError> {
    let files: Vec<(String, Vec<u8>)> = {
        let mut f = vec![
            ("etc/hostname".to_string(), b"tdfs-demo\n".to_vec()),
            (
                "etc/os-release".to_string(),
                b"NAME=\"tdfs demo\"\nID=tdfs-demo\nVERSION_ID=1\n".to_vec(),
            ),
            (
                "etc/passwd".to_string(),
                b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n".to_vec(),
            ),
            (
                "etc/motd".to_string(),
                b"Welcome to a template served by tdfs.\n".to_vec(),
            ),
            (
                "usr/share/doc/tdfs-demo/README".to_string(),
                text(rng, 256 << 10),
            ),
            ("var/log/boot.log".to_string(), text(rng, 64 << 10)),
            (
                "opt/README".to_string(),
                b"Applications installed by later layers.\n".to_vec(),
            ),
        ];
        for i in 0..8 {
            let mut bin = vec![0u8; (96 + 32 * i) << 10];
            rng.fill(&mut bin[..]);
            bin[..4].copy_from_slice(b"\x7fELF");
            f.push((format!("usr/bin/tool{i}"), bin));
        }
        for i in 0..6 {
            let mut lib = text(rng, 128 << 10);
            rng.fill(&mut lib[..64 << 10]);
            f.push((format!("usr/lib/demo/libdemo{i}.so"), lib));
        }
        for i in 0..12 {
            f.push((
                format!("home/user/notes/note{i:02}.txt"),
                text(rng, 8 << 10),
            ));
        }
        f
    };
    for (name, bytes) in files {
        let path = root.join(name);
        let dir = path.parent().expect("tree files are in directories");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_file(&path, &bytes)?;
    }
    Ok(())
}

/// Run a tool; it fails on a non-zero exit, or (debugfs reports failed
/// commands only on stderr) on stderr output other than its version banner.
fn run_tool(cmd: &mut Command) -> Result<(), PackError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| {
        PackError::Tool(format!(
            "{shown}: {e} (the demo needs e2fsprogs: mkfs.ext4 and debugfs)"
        ))
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints = stderr
        .lines()
        .any(|l| !l.trim().is_empty() && !l.starts_with("debugfs "));
    if !out.status.success() || complaints {
        return Err(PackError::Tool(format!(
            "{shown} failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    Ok(())
}

fn make_ext4(image: &Path, tree: &Path) -> Result<(), PackError> {
    let file = File::create(image).map_err(io_err(image))?;
    file.set_len(DEMO_ROOTFS_SIZE).map_err(io_err(image))?;
    drop(file);
    run_tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-L", "tdfs-demo", "-d"])
            .arg(tree)
            .arg(image),
    )
}

/// Change files in place with debugfs, as a guest would between builds.
fn change_rootfs(image: &Path, work: &Path, layer: usize, rng: &mut Rng) -> Result<(), PackError> {
    let staged = |name: &str, bytes: &[u8]| -> Result<PathBuf, PackError> {
        let path = work.join(format!("layer{layer}-{name}"));
        write_file(&path, bytes)?;
        Ok(path)
    };
    let app = staged("app.py", &text(rng, 24 << 10))?;
    let log = staged("boot.log", &text(rng, (64 + 32 * layer) << 10))?;
    let mut bin = vec![0u8; 160 << 10];
    rng.fill(&mut bin);
    let bin = staged("app.bin", &bin)?;
    let script = format!(
        "mkdir /opt/app{layer}\n\
         write {app} /opt/app{layer}/app.py\n\
         write {bin} /opt/app{layer}/app.bin\n\
         rm /var/log/boot.log\n\
         write {log} /var/log/boot.log\n\
         rm /usr/bin/tool{layer}\n\
         rm /home/user/notes/note{layer:02}.txt\n",
        app = app.display(),
        bin = bin.display(),
        log = log.display(),
    );
    let script_path = staged("debugfs.cmd", script.as_bytes())?;
    run_tool(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(image),
    )
}

fn snapfile_bytes(layer: usize, rng: &mut Rng) -> Vec<u8> {
    let mut bytes = format!("tdfs demo snapfile, layer {layer}\n").into_bytes();
    let mut state = vec![0u8; 24 << 10];
    rng.fill(&mut state);
    bytes.extend_from_slice(&state);
    bytes
}

fn metadata_json(build_id: Uuid, base: Option<Uuid>) -> Vec<u8> {
    let value = serde_json::json!({
        "version": 2,
        "template": {
            "build_id": build_id.to_string(),
            "kernel_version": "vmlinux-6.1.102",
            "firecracker_version": "v1.12.1",
        },
        "context": { "user": "user" },
        "from_template": base.map(|b| serde_json::json!({ "build_id": b.to_string() })),
    });
    serde_json::to_vec_pretty(&value).expect("a JSON value serializes")
}
