//! Maps a memory snapshot the way Firecracker's file memory backend does
//! (file opened read-only, `mmap(MAP_PRIVATE | MAP_NORESERVE,
//! PROT_READ | PROT_WRITE)`), faults every page in random order from several
//! threads as vCPUs would, writes to some pages, and checks the bytes against
//! a flattened reference: copy-on-write must keep the writes private, so the
//! file and a second mapping of it still read as the reference.
//!
//! Usage: `vm_memfile_check MAPPED REFERENCE [--threads N] [--seed S]`
//! (`cargo run --release --example vm_memfile_check -- ...`); exit 0 when
//! every check holds, 1 with the first difference otherwise.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::Instant;

/// Every this many pages, in touch order, a thread writes to the page.
const WRITE_EVERY: usize = 8;

fn main() -> ExitCode {
    match parse_args().and_then(|args| check(&args)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vm_memfile_check: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    mapped: String,
    reference: String,
    threads: usize,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: vm_memfile_check MAPPED REFERENCE [--threads N] [--seed S]";
    let mut positional = Vec::new();
    let mut threads = 4;
    let mut seed = 0x7df5_u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            let value = args
                .next()
                .ok_or(format!("{name} needs a value; {usage}"))?;
            value
                .parse()
                .map_err(|_| format!("{name} {value}: not a number; {usage}"))
        };
        match arg.as_str() {
            "--threads" => threads = number("--threads")?.clamp(1, 256) as usize,
            "--seed" => seed = number("--seed")?,
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}; {usage}")),
            _ => positional.push(arg),
        }
    }
    let [mapped, reference] = <[String; 2]>::try_from(positional).map_err(|_| usage.to_string())?;
    Ok(Args {
        mapped,
        reference,
        threads,
        seed,
    })
}

/// A private, writable mapping of a whole file opened read-only, unmapped
/// on drop.
struct PrivateMapping {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; threads touch disjoint pages.
unsafe impl Sync for PrivateMapping {}

impl PrivateMapping {
    fn new(path: &str) -> Result<PrivateMapping, String> {
        let file = File::open(path).map_err(|e| format!("{path}: {e}"))?;
        let len = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
        let len = usize::try_from(len).map_err(|_| format!("{path}: too large to map"))?;
        if len == 0 {
            return Err(format!("{path} is empty"));
        }
        // SAFETY: a fresh mapping of a file we hold open; the kernel picks
        // the address. The descriptor may close afterwards: the mapping keeps
        // the file.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!("mmap {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(PrivateMapping {
            base: base.cast(),
            len,
        })
    }

    /// Page `index` of `page_size` bytes (the last one may be short).
    ///
    /// # Safety
    /// No other thread may hold a mutable view of the same page.
    #[allow(clippy::mut_from_ref)]
    unsafe fn page(&self, index: usize, page_size: usize) -> &mut [u8] {
        let start = index * page_size;
        let len = page_size.min(self.len - start);
        // SAFETY: start + len is within the mapping; exclusivity is the
        // caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(start), len) }
    }
}

impl Drop for PrivateMapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range mmap returned.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

/// What a thread writes over page `index`: a pattern no snapshot page holds
/// by chance, different per page.
fn scribble(index: usize, page: &mut [u8]) {
    for (i, byte) in page.iter_mut().enumerate() {
        *byte = (index as u8) ^ (i as u8).wrapping_mul(31) ^ 0xa5;
    }
}

fn expect_scribbled(index: usize, page: &[u8]) -> bool {
    page.iter()
        .enumerate()
        .all(|(i, &byte)| byte == (index as u8) ^ (i as u8).wrapping_mul(31) ^ 0xa5)
}

fn first_difference(got: &[u8], want: &[u8]) -> usize {
    got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0)
}

/// Page indices `0..pages` in an order fixed by `seed` (xorshift64 driving
/// a Fisher-Yates shuffle).
fn shuffled(pages: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..pages).collect();
    let mut state = seed | 1;
    for i in (1..pages).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

fn check(args: &Args) -> Result<String, String> {
    let started = Instant::now();
    let reference =
        std::fs::read(&args.reference).map_err(|e| format!("{}: {e}", args.reference))?;
    let mapping = PrivateMapping::new(&args.mapped)?;
    if mapping.len != reference.len() {
        return Err(format!(
            "{} is {} bytes but the reference {} is {}",
            args.mapped,
            mapping.len,
            args.reference,
            reference.len()
        ));
    }
    // SAFETY: sysconf has no preconditions.
    let page_size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .map_err(|_| "sysconf(_SC_PAGESIZE) failed".to_string())?;
    let pages = mapping.len.div_ceil(page_size);
    let order = shuffled(pages, args.seed);
    let reference_page = |index: usize| {
        let start = index * page_size;
        &reference[start..(start + page_size).min(reference.len())]
    };

    // Each thread takes every `threads`-th page of the shuffled order, so the
    // threads fault all over the file at once and never share a page.
    let written: Vec<Vec<usize>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..args.threads)
            .map(|thread| {
                let (order, mapping, reference_page) = (&order, &mapping, &reference_page);
                scope.spawn(move || -> Result<Vec<usize>, String> {
                    let mut written = Vec::new();
                    for (n, &index) in order.iter().enumerate().skip(thread).step_by(args.threads) {
                        // SAFETY: this thread alone touches page `index`.
                        let page = unsafe { mapping.page(index, page_size) };
                        let want = reference_page(index);
                        if page != want {
                            let at = index * page_size + first_difference(page, want);
                            return Err(format!(
                                "mapped byte {at} differs from the reference (page {index}, thread {thread})"
                            ));
                        }
                        if n % WRITE_EVERY == 0 {
                            scribble(index, page);
                            written.push(index);
                        }
                    }
                    Ok(written)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect::<Result<_, _>>()
    })?;
    let mut is_written = vec![false; pages];
    for &index in written.iter().flatten() {
        is_written[index] = true;
    }
    let written_pages = written.iter().map(Vec::len).sum::<usize>();

    // The writes stayed in their own pages of this mapping...
    for (index, &written) in is_written.iter().enumerate() {
        // SAFETY: the worker threads have ended.
        let page = unsafe { mapping.page(index, page_size) };
        let ok = if written {
            expect_scribbled(index, page)
        } else {
            page == reference_page(index)
        };
        if !ok {
            return Err(format!(
                "page {index} (written: {written}) changed after the writes to other pages"
            ));
        }
    }
    // ...and reached neither another private mapping nor the file.
    let second = PrivateMapping::new(&args.mapped)?;
    for index in 0..pages {
        // SAFETY: only this thread uses the second mapping.
        let page = unsafe { second.page(index, page_size) };
        if page != reference_page(index) {
            return Err(format!(
                "page {index} of a second mapping differs from the reference (a private write leaked?)"
            ));
        }
    }
    let file = File::open(&args.mapped).map_err(|e| format!("{}: {e}", args.mapped))?;
    let mut buf = vec![0; page_size];
    for index in (0..pages).filter(|&index| is_written[index]) {
        let want = reference_page(index);
        file.read_exact_at(&mut buf[..want.len()], (index * page_size) as u64)
            .map_err(|e| format!("reading {} at page {index}: {e}", args.mapped))?;
        if buf[..want.len()] != *want {
            return Err(format!(
                "page {index} of {} reads differently after a private write to it",
                args.mapped
            ));
        }
    }
    Ok(format!(
        "memfile check: {pages} pages ({} MiB) faulted in random order from {} threads match the reference; \
         {written_pages} pages written copy-on-write; the file and a second mapping are unchanged ({:.2} s)",
        mapping.len >> 20,
        args.threads,
        started.elapsed().as_secs_f64()
    ))
}
