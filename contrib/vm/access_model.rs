//! The access model of a resumed VM, for `vm_memfile_check --model SPEC`:
//! which pages of a memory snapshot a guest touches in its first moments
//! after a restore, and in what order. It stands in for a real guest so the
//! restore benchmark can record a working set with `tdfs mount
//! --record-prefetch` that looks like one; it is not a measurement of any
//! particular guest.
//!
//! What a resumed guest touches, as REAP (Ustiugov et al., ASPLOS '21)
//! and Firecracker snapshot traces describe it: a small share of memory
//! (5–15% here; REAP saw a few to tens of MiB of a 256 MiB–2 GiB guest),
//! mostly in contiguous runs (the kernel's text and data, the running
//! processes' heaps and stacks) plus scattered single pages (page tables,
//! slab objects, page-cache pages). The model, for a memfile of P pages and
//! a share S (`percent`, default 10):
//!
//! - **kernel**: the first pages after 1 MiB (where x86 kernels load), a
//!   run of 40% of the budget, touched first and in address order (the
//!   resume path runs through it);
//! - **heaps**: 4 regions at seeded offsets, each 8× its share of the
//!   budget in size, touched as runs of 1–64 pages covering an eighth of
//!   each region: 45% of the budget in all;
//! - **scattered**: single pages uniformly over the whole file, 15% of the
//!   budget.
//!
//! After the kernel run, heap runs and scattered pages interleave, as vCPUs
//! switch between processes. The order is fixed by `seed`; a page is listed
//! once (its first touch).

/// The model's parameters: `seed=N,percent=P` (either may be left out).
#[derive(Debug, Clone, Copy)]
pub struct Model {
    pub seed: u64,
    /// Share of the memfile's pages touched, 1 to 50.
    pub percent: u64,
}

impl Model {
    /// Parse `seed=N,percent=P`; either key may be left out.
    pub fn parse(spec: &str) -> Result<Model, String> {
        let mut model = Model {
            seed: 1,
            percent: 10,
        };
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or(format!(
                "model {spec}: {part} is not key=value (seed=N,percent=P)"
            ))?;
            let value: u64 = value
                .parse()
                .map_err(|_| format!("model {spec}: {value} is not a number"))?;
            match key {
                "seed" => model.seed = value,
                "percent" if (1..=50).contains(&value) => model.percent = value,
                "percent" => return Err(format!("model {spec}: percent must be 1 to 50")),
                _ => return Err(format!("model {spec}: unknown key {key} (seed, percent)")),
            }
        }
        Ok(model)
    }

    /// Page indices below `pages` in first-touch order.
    pub fn pages(&self, pages: usize) -> Vec<usize> {
        let mut rng = XorShift(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let budget = pages * self.percent as usize / 100;
        let mut seen = vec![false; pages];
        let mut order = Vec::with_capacity(budget);
        let mut touch = |page: usize, order: &mut Vec<usize>| {
            if page < pages && !seen[page] {
                seen[page] = true;
                order.push(page);
            }
        };

        let kernel_start = (256).min(pages / 2);
        for page in kernel_start..kernel_start + budget * 40 / 100 {
            touch(page, &mut order);
        }

        // Heap runs as (start, length) lists, one per region, consumed in
        // an interleaved order below.
        let heap_budget = budget * 45 / 100;
        let region_len = (heap_budget / 4 * 8).max(1);
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for _ in 0..4 {
            let start = rng.below(pages.saturating_sub(region_len).max(1));
            let mut covered = 0;
            while covered < heap_budget / 4 {
                let len = 1 + rng.below(64);
                runs.push((start + rng.below(region_len), len));
                covered += len;
            }
        }
        let mut scattered = budget * 15 / 100;
        while !runs.is_empty() || scattered > 0 {
            // Drawn in proportion to what is left, so both end together.
            if rng.below(scattered + runs.len()) < scattered {
                touch(rng.below(pages), &mut order);
                scattered -= 1;
                continue;
            }
            let (start, len) = runs.swap_remove(rng.below(runs.len()));
            for page in start..start + len {
                touch(page, &mut order);
            }
        }
        order
    }
}

/// xorshift64: a fixed sequence per seed, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
