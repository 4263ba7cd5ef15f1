//! Maps a memory snapshot the way Firecracker's file memory backend does
//! (file opened read-only, `mmap(MAP_PRIVATE | MAP_NORESERVE,
//! PROT_READ | PROT_WRITE)`) and faults its pages from several threads as
//! vCPUs would. Two jobs:
//!
//! - **check** (`MAPPED REFERENCE`): fault every page in random order,
//!   write to some, and check the bytes against a flattened reference:
//!   copy-on-write must keep the writes private, so the file and a second
//!   mapping of it still read as the reference;
//! - **restore** (`MAPPED --replay TRACE` or `MAPPED --model SPEC`): touch
//!   only the pages a resumed VM touches, in first-touch order, and report
//!   the wall time and the CPU seconds it took. The threads take
//!   consecutive slices of the list, as Firecracker's vCPUs fault disjoint
//!   parts of guest memory. `--replay` reads a prefetch trace (E2B's
//!   `{"indices", "access_types", "block_size"}` object, as `tdfs mount
//!   --record-prefetch` writes it in `<build>/memfile.prefetch.json`): each
//!   block's pages are read, and written when its access type is `w`.
//!   `--model` makes the list from the access model documented in
//!   `access_model.rs` (a kernel run, four hot heaps, scattered pages;
//!   5–15% of the file, seeded), mapped with `MADV_RANDOM` so the mount
//!   sees only the faulted pages, not the kernel's read-around of each
//!   (as E2B records faults through userfaultfd); run on a mount with
//!   `--record-prefetch`, it is how the restore benchmark records its
//!   trace. `--replay` maps without advice, as Firecracker does. With a REFERENCE,
//!   every touched page is also compared with it.
//!
//! Usage: `vm_memfile_check MAPPED REFERENCE [--threads N] [--seed S]`,
//! `vm_memfile_check MAPPED (--replay TRACE | --model seed=N,percent=P)
//! [REFERENCE] [--threads N]` (`cargo run --release --example
//! vm_memfile_check -- ...`); exit 0 when every check holds, 1 with the
//! first difference otherwise.

mod access_model;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use access_model::Model;

/// Every this many pages, in touch order, a thread writes to the page.
const WRITE_EVERY: usize = 8;

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| match &args.restore {
        None => check(&args),
        Some(order) => restore(&args, order),
    });
    match result {
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
    /// Required to check; optional to restore.
    reference: Option<String>,
    threads: usize,
    seed: u64,
    /// Restore instead of check: the pages to touch come from here.
    restore: Option<Order>,
}

/// Where a restore's page list comes from.
enum Order {
    Replay(String),
    Model(Model),
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: vm_memfile_check MAPPED REFERENCE [--threads N] [--seed S], or \
                 vm_memfile_check MAPPED (--replay TRACE | --model seed=N,percent=P) [REFERENCE] [--threads N]";
    let mut positional = Vec::new();
    let mut threads = 4;
    let mut seed = 0x7df5_u64;
    let mut restore = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value; {usage}"));
        let number = |name: &str, value: String| -> Result<u64, String> {
            value
                .parse()
                .map_err(|_| format!("{name} {value}: not a number; {usage}"))
        };
        match arg.as_str() {
            "--threads" => threads = number(&arg, value(&arg)?)?.clamp(1, 256) as usize,
            "--seed" => seed = number(&arg, value(&arg)?)?,
            "--replay" => restore = Some(Order::Replay(value(&arg)?)),
            "--model" => restore = Some(Order::Model(Model::parse(&value(&arg)?)?)),
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}; {usage}")),
            _ => positional.push(arg),
        }
    }
    let mut positional = positional.into_iter();
    let mapped = positional.next().ok_or(usage)?;
    let reference = positional.next();
    if positional.next().is_some() || (restore.is_none() && reference.is_none()) {
        return Err(usage.to_string());
    }
    Ok(Args {
        mapped,
        reference,
        threads,
        seed,
        restore,
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

    /// No read-around on faults (`MADV_RANDOM`): the file sees a read of
    /// each faulted page alone, as a recording through userfaultfd (E2B's)
    /// sees the faults alone.
    fn advise_random(&self) -> Result<(), String> {
        // SAFETY: advice on exactly the range mmap returned; it changes no
        // contents.
        if unsafe { libc::madvise(self.base.cast(), self.len, libc::MADV_RANDOM) } != 0 {
            return Err(format!("madvise: {}", std::io::Error::last_os_error()));
        }
        Ok(())
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
    let reference_path = args.reference.as_deref().unwrap_or_default();
    let reference = std::fs::read(reference_path).map_err(|e| format!("{reference_path}: {e}"))?;
    let mapping = PrivateMapping::new(&args.mapped)?;
    if mapping.len != reference.len() {
        return Err(format!(
            "{} is {} bytes but the reference {} is {}",
            args.mapped,
            mapping.len,
            reference_path,
            reference.len()
        ));
    }
    let page_size = page_size()?;
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

/// Bytes per page of this machine.
fn page_size() -> Result<usize, String> {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .map_err(|_| "sysconf(_SC_PAGESIZE) failed".to_string())
}

/// User and system CPU seconds of this process so far, all threads.
fn cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// A page to touch, and whether the guest writes it.
#[derive(Clone, Copy)]
struct Touch {
    page: usize,
    write: bool,
}

/// The pages of a `pages`-page file to touch, in order, from a trace file
/// or the access model; each page once.
fn touches(order: &Order, pages: usize, page_size: usize) -> Result<Vec<Touch>, String> {
    let mut seen = vec![false; pages];
    let mut list = Vec::new();
    let mut push = |page: usize, write: bool| {
        if page < pages && !std::mem::replace(&mut seen[page], true) {
            list.push(Touch { page, write });
        }
    };
    match order {
        Order::Model(model) => {
            for (n, page) in model.pages(pages).into_iter().enumerate() {
                push(page, n % WRITE_EVERY == 0);
            }
        }
        Order::Replay(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
            let parsed = tdfs::format::trace::parse_trace_file(&bytes)
                .map_err(|e| format!("{path}: {e}"))?;
            let trace = parsed.trace;
            let types = trace.to_json()["access_types"].clone();
            let per_block = (trace.block_size as usize / page_size).max(1);
            for (n, &index) in trace.indices.iter().enumerate() {
                let write = types[n].as_str() == Some("w");
                let first = usize::try_from(index)
                    .ok()
                    .and_then(|i| i.checked_mul(per_block))
                    .unwrap_or(usize::MAX);
                for page in first..first.saturating_add(per_block) {
                    push(page, write);
                }
            }
        }
    }
    Ok(list)
}

/// Touch the pages a restore touches (see the module docs) and report how
/// long it took.
fn restore(args: &Args, order: &Order) -> Result<String, String> {
    let mapping = PrivateMapping::new(&args.mapped)?;
    if let Order::Model(_) = order {
        mapping.advise_random()?;
    }
    let page_size = page_size()?;
    let pages = mapping.len.div_ceil(page_size);
    let list = touches(order, pages, page_size)?;
    if list.is_empty() {
        return Err(format!(
            "no page of {} is listed: nothing to touch",
            args.mapped
        ));
    }
    let reference = match &args.reference {
        Some(path) => Some(File::open(path).map_err(|e| format!("{path}: {e}"))?),
        None => None,
    };
    let (user0, system0) = cpu_seconds();
    let started = Instant::now();
    let slice = list.len().div_ceil(args.threads);
    let compared: Duration = std::thread::scope(|scope| {
        let workers: Vec<_> = list
            .chunks(slice)
            .enumerate()
            .map(|(thread, touches)| {
                let (mapping, reference) = (&mapping, reference.as_ref());
                scope.spawn(move || -> Result<Duration, String> {
                    let mut want = vec![0; page_size];
                    let mut comparing = Duration::ZERO;
                    for touch in touches {
                        // SAFETY: each page is listed once, so this thread
                        // alone touches it.
                        let page = unsafe { mapping.page(touch.page, page_size) };
                        // The fault: one read of the page, which the compiler
                        // may not drop.
                        // SAFETY: the page is mapped and at least a byte long.
                        unsafe { std::ptr::read_volatile(page.as_ptr()) };
                        if let Some(reference) = reference {
                            let t = Instant::now();
                            let want = &mut want[..page.len()];
                            reference
                                .read_exact_at(want, (touch.page * page_size) as u64)
                                .map_err(|e| format!("reading the reference at page {}: {e}", touch.page))?;
                            if page != want {
                                let at = touch.page * page_size + first_difference(page, want);
                                return Err(format!(
                                    "mapped byte {at} differs from the reference (page {}, thread {thread})",
                                    touch.page
                                ));
                            }
                            comparing += t.elapsed();
                        }
                        if touch.write {
                            // SAFETY: as the read above.
                            unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0xa5) };
                        }
                    }
                    Ok(comparing)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .sum::<Result<Duration, String>>()
    })?;
    let wall = started.elapsed().as_secs_f64();
    let (user1, system1) = cpu_seconds();
    let what = match order {
        Order::Replay(path) => format!("replay of {path}"),
        Order::Model(model) => format!("model seed={},percent={}", model.seed, model.percent),
    };
    let written = list.iter().filter(|t| t.write).count();
    let checked = if args.reference.is_some() {
        format!(
            "; every touched page matches the reference ({:.2} s of the threads' time comparing)",
            compared.as_secs_f64()
        )
    } else {
        String::new()
    };
    Ok(format!(
        "restore ({what}): {} pages ({} MiB, {:.1}% of the file, {written} written) touched from {} threads \
         in {wall:.3} s wall, CPU {:.3} s user + {:.3} s system{checked}",
        list.len(),
        (list.len() * page_size) >> 20,
        100.0 * list.len() as f64 / pages as f64,
        list.len().div_ceil(slice),
        user1 - user0,
        system1 - system0,
    ))
}
