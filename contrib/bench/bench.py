#!/usr/bin/env python3
"""Helpers for contrib/bench/run.sh: test data, memory sampling, fio
summaries and the results table. Standard library only.

  bench.py memfile PATH SIZE_MIB SEED   write a sparse memfile with realistic pages
  bench.py rootfs-tree DIR BUDGET_MIB   copy real files from /usr into DIR
  bench.py memwatch PID OUT             sample PID's anonymous memory until it exits
  bench.py fio JSON                     print "iops p50_us p99_us" of a fio run
  bench.py bandwidth THROTTLE           bytes per second of a LATENCY,BANDWIDTH throttle
  bench.py cats FILE...                 cat the FILEs at once; print "wall_s reader_cpu_s"
  bench.py timed COMMAND...             run COMMAND; print "wall_s cpu_s" (it and its children)
  bench.py cpu PID                      print PID's CPU seconds so far (user + system)
  bench.py run LOG COMMAND...           run COMMAND (output appended to LOG); print "wall_s cpu_s"
  bench.py trace FILE                   print "blocks bytes" of a prefetch trace
  bench.py stat FILE NAME               print counter NAME of a mount's .stats FILE
  bench.py table RESULTS.tsv MAX_LOAD   print the Markdown table of medians; a row is
                                        not comparable when a run of it started at a
                                        1-minute load average above MAX_LOAD
"""

import json
import os
import random
import re
import shutil
import statistics
import struct
import sys
import time

PAGE = 4096

# Share of pages of each kind in the memfile. Runs of one kind are
# 1..RUN_MAX pages long, so kinds cluster as they do in a VM's memory.
KINDS = [
    ("zero", 0.35, 8192),  # never touched: large free regions
    ("zero-page", 0.10, 64),  # freed and zeroed pages among used ones
    ("repeat", 0.10, 64),  # a few pages seen over and over (page tables, fills)
    ("heap", 0.30, 64),  # compressible: pointers, small integers, text
    ("random", 0.15, 64),  # incompressible: encrypted or compressed data
]


def heap_pool(rng, count):
    """Pages that compress like a process heap: 8-byte words that are
    small integers, pointers near a few bases, zeros, and real text."""
    texts = []
    roots = [os.path.dirname(os.__file__), "/usr/share/common-licenses"]
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith((".py", ".txt")) or root.endswith("licenses"):
                    try:
                        with open(os.path.join(dirpath, name), "rb") as f:
                            texts.append(f.read(64 << 10))
                    except OSError:
                        pass
                if len(texts) >= 400:
                    break
            if len(texts) >= 400:
                break
    text = b"".join(texts) or bytes(range(32, 127)) * 1000
    bases = [0x7F00_0000_0000 + rng.randrange(1 << 32) * PAGE for _ in range(4)]
    pool = []
    for i in range(count):
        if i % 2 and len(text) > PAGE:
            start = rng.randrange(len(text) - PAGE)
            pool.append(text[start : start + PAGE])
            continue
        words = []
        for _ in range(PAGE // 8):
            kind = rng.random()
            if kind < 0.35:
                words.append(0)
            elif kind < 0.65:
                words.append(rng.choice(bases) + rng.randrange(1 << 20) * 16)
            else:
                words.append(rng.randrange(1 << 12))
        pool.append(struct.pack("<%dQ" % (PAGE // 8), *words))
    return pool


def write_memfile(path, size_mib, seed):
    """A memfile of SIZE_MIB MiB; zero pages are left as holes, as
    `tdfs export` leaves them."""
    rng = random.Random(seed)
    pages = size_mib * (1 << 20) // PAGE
    repeat = [bytes([rng.randrange(256)]) * (PAGE // 2) + rng.randbytes(64) * 32 for _ in range(16)]
    heap = heap_pool(rng, 2048)
    names = [k[0] for k in KINDS]
    weights = [k[1] for k in KINDS]
    run_max = {k[0]: k[2] for k in KINDS}
    # The mean run of a kind is run_max/2 pages: weigh the choice of the next
    # run by share/mean so each kind ends up with its share of pages.
    run_weights = [w / (run_max[n] / 2) for n, w in zip(names, weights)]
    counts = dict.fromkeys(names, 0)
    with open(path, "wb") as f:
        page = 0
        while page < pages:
            kind = rng.choices(names, run_weights)[0]
            run = min(rng.randint(1, run_max[kind]), pages - page)
            counts[kind] += run
            if not kind.startswith("zero"):
                if kind == "random":
                    data = rng.randbytes(run * PAGE)
                elif kind == "repeat":
                    data = b"".join(rng.choice(repeat) for _ in range(run))
                else:
                    chunks = []
                    for _ in range(run):
                        p = bytearray(rng.choice(heap))
                        # A few private words per page, so no two are equal.
                        for _ in range(4):
                            at = rng.randrange(PAGE // 8) * 8
                            p[at : at + 8] = rng.randbytes(8)
                        chunks.append(bytes(p))
                    data = b"".join(chunks)
                os.pwrite(f.fileno(), data, page * PAGE)
            page += run
        f.truncate(pages * PAGE)
    share = ", ".join(f"{n} {100 * c / pages:.0f}%" for n, c in counts.items())
    print(f"memfile {path}: {size_mib} MiB, pages: {share}", file=sys.stderr)


def rootfs_tree(dest, budget_mib):
    """Copy regular files and symlinks from /usr (sorted walk, so the same
    machine gives the same tree) into DEST until BUDGET_MIB is used."""
    budget = budget_mib << 20
    used = 0
    for dirpath, dirnames, filenames in os.walk("/usr"):
        dirnames.sort()
        rel = os.path.relpath(dirpath, "/")
        os.makedirs(os.path.join(dest, rel), exist_ok=True)
        for name in sorted(filenames):
            src = os.path.join(dirpath, name)
            dst = os.path.join(dest, rel, name)
            try:
                if os.path.islink(src):
                    os.symlink(os.readlink(src), dst)
                    continue
                if not os.path.isfile(src):
                    continue
                size = os.path.getsize(src)
                if used + size > budget:
                    continue
                shutil.copyfile(src, dst)
                used += size
            except OSError:
                continue
        if used >= budget - (1 << 20):
            break
    print(f"rootfs tree {dest}: {used >> 20} MiB of files from /usr", file=sys.stderr)


def memwatch(pid, out):
    """Sample RssAnon of PID every 20 ms until it exits; write the peak
    in KiB to OUT (rewritten at each new peak, so a kill loses nothing)."""
    peak = 0
    status = f"/proc/{pid}/status"
    while True:
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        kib = int(line.split()[1])
                        if kib > peak:
                            peak = kib
                            with open(out + ".tmp", "w") as o:
                                o.write(f"{peak}\n")
                            os.replace(out + ".tmp", out)
                        break
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.02)


def fio_summary(path):
    """IOPS and completion-latency p50/p99 (µs) of all jobs of a fio run."""
    with open(path) as f:
        text = f.read()
    # fio may print warnings before the JSON document.
    doc = json.loads(text[text.index("{") :])
    read = doc["jobs"][0]["read"]
    iops = sum(j["read"]["iops"] for j in doc["jobs"])
    pct = read["clat_ns"].get("percentile", {})
    p50 = pct.get("50.000000", 0) / 1000
    p99 = pct.get("99.000000", 0) / 1000
    print(f"{iops:.0f} {p50:.1f} {p99:.1f}")


def bandwidth(throttle):
    """Bytes per second of `20ms,100MB`, read as ThrottleStore reads it."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)(/s)?\s*", throttle.split(",", 1)[1])
    scale = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
    if not m or m.group(2).lower() not in scale:
        sys.exit(f"bench.py: {throttle!r} is not LATENCY,BANDWIDTH")
    print(int(float(m.group(1)) * scale[m.group(2).lower()]))


def cats(files):
    """`cat` every file to /dev/null at once; wall seconds until the last
    ends, and the CPU seconds (user + system) of the cats."""
    import resource
    import subprocess

    start = time.monotonic()
    procs = [subprocess.Popen(["cat", f], stdout=subprocess.DEVNULL) for f in files]
    codes = [p.wait() for p in procs]
    wall = time.monotonic() - start
    if any(codes):
        sys.exit(f"bench.py: cat failed: {codes}")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{wall:.4f} {ru.ru_utime + ru.ru_stime:.4f}")


def run(command, log=None):
    """Run COMMAND (its output appended to LOG when given); print its wall
    seconds and the CPU seconds (user + system) of it and the children it
    waited for. Exits when it fails."""
    import resource
    import subprocess

    out = open(log, "ab") if log else None
    try:
        start = time.monotonic()
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT if out else None)
        wall = time.monotonic() - start
    finally:
        if out:
            out.close()
    if code:
        where = f" (log: {log})" if log else ""
        sys.exit(f"bench.py: {command[0]} exited with {code}{where}")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{wall:.4f} {ru.ru_utime + ru.ru_stime:.4f}")


def trace_size(path):
    """Blocks and bytes a prefetch trace lists."""
    with open(path) as f:
        doc = json.load(f)
    print(len(doc["indices"]), len(doc["indices"]) * doc["block_size"])


def cpu(pid):
    """User + system CPU seconds of PID so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    print(f"{(int(fields[11]) + int(fields[12])) / ticks:.4f}")


def stat_counter(path, name):
    """A counter of a tdfs mount's .stats (Prometheus text)."""
    with open(path) as f:
        for line in f:
            if line.startswith(name + " "):
                print(line.split()[1])
                return
    sys.exit(f"bench.py: no {name} in {path}")


def load(path):
    """RESULTS.tsv lines `pair<TAB>name<TAB>value` -> {name: {pair: value}}."""
    values = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or parts[0].startswith("#"):
                continue
            pair, name, value = parts
            values.setdefault(name, {})[pair] = float(value)
    # CPU seconds per GiB read: the reader's plus the daemon's (none for a
    # local file or `zstd -d`), for each timed read that has both.
    for name in [n[: -len(".reader-cpu")] for n in values if n.endswith(".reader-cpu")]:
        reader, daemon = values[name + ".reader-cpu"], values.get(name + ".daemon-cpu", {})
        size = values.get(name + ".bytes", {})
        per_gib = {r: (reader[r] + daemon.get(r, 0)) / (size[r] / 2**30) for r in reader if size.get(r)}
        if per_gib:
            values[name + ".cpu-per-gib"] = per_gib
    return values


class Ratio:
    """A row's figure: `value`, the median of its per-pair ratios (None when
    no pair measured both sides); `pairs`, how many pairs it is the median
    of; `load`, the highest 1-minute load average at the start of any run
    behind it (None when none was recorded)."""

    def __init__(self, value, pairs, load):
        self.value, self.pairs, self.load = value, pairs, load


class Table:
    def __init__(self, values, max_load):
        self.values = values
        self.max_load = max_load
        self.not_comparable = 0
        self.lines = [
            "| row | tdfs | baseline | ratio (median of pairs) | pairs | load (highest 1-min) | target | met "
            "| CPU per GiB: tdfs, baseline, ratio |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]

    def median(self, name):
        runs = self.values.get(name)
        return statistics.median(runs.values()) if runs else None

    def load(self, measurements, pairs):
        """The highest 1-minute load average recorded at the start of the
        runs of `measurements` (names such as `seq-cold-zstd.tdfs`) in
        `pairs`, or None."""
        loads = [
            self.values[m + ".load"][p]
            for m in measurements
            if m + ".load" in self.values
            for p in pairs
            if p in self.values[m + ".load"]
        ]
        return max(loads) if loads else None

    def ratio(self, num, den, invert=False):
        """Median over pairs of num/den (den/num when invert), both sides
        from the same pair; num and den name a figure of a measurement
        (`seq-cold-zstd.tdfs.secs`), whose load the Ratio carries."""
        a, b = self.values.get(num, {}), self.values.get(den, {})
        ratios, pairs = [], []
        for pair in sorted(a.keys() & b.keys()):
            x, y = (b[pair], a[pair]) if invert else (a[pair], b[pair])
            if y > 0:
                ratios.append(x / y)
                pairs.append(pair)
        measurements = [n.rsplit(".", 1)[0] for n in (num, den)]
        return Ratio(statistics.median(ratios) if ratios else None, len(pairs), self.load(measurements, pairs))

    def derived(self, value, *measurements):
        """A figure computed from the medians of `measurements` (names such
        as `slow-seq.ra`), over the pairs that have their `.secs` or
        `.iops`."""
        pairs = set()
        for m in measurements:
            for figure in (".secs", ".iops"):
                pairs |= self.values.get(m + figure, {}).keys()
        return Ratio(value, len(pairs), self.load(measurements, pairs))

    def row(self, name, tdfs, baseline, ratio, target=None, minimum=None, cpu=None, maximum=None, unit=""):
        """One line; `ratio` is a Ratio (None for a row without one), met
        when at least `minimum` or at most `maximum`; `cpu` names the timed
        reads (tdfs, baseline) whose CPU per GiB the last column compares.
        A row whose load was above max_load is not comparable: it shows so
        in place of its verdict."""
        if ratio is None:
            ratio = Ratio(None, 0, None)
        if ratio.load is None:
            load, comparable = ("not recorded" if ratio.pairs else "—"), True
        elif ratio.load > self.max_load:
            load, comparable = f"**{ratio.load:.2f} > {self.max_load:g}: not comparable**", False
            self.not_comparable += 1
        else:
            load, comparable = f"{ratio.load:.2f}", True
        if ratio.value is None:
            shown, met = "n/a", "—"
        else:
            shown = f"{ratio.value:.2f}×{unit}"
            if minimum is not None:
                met = "yes" if ratio.value >= minimum else "**no**"
            elif maximum is not None:
                met = "yes" if ratio.value <= maximum else "**no**"
            else:
                met = "—"
            if met != "—" and not comparable:
                met = "not comparable"
        self.lines.append(
            f"| {name} | {tdfs} | {baseline} | {shown} | {ratio.pairs or '—'} | {load} | {target or '—'} | {met} "
            f"| {self.cpu_cell(cpu)} |"
        )

    def cpu_cell(self, pair):
        """`2.10 s, 1.05 s: 2.00×` of CPU seconds per GiB read (daemon +
        reader) of tdfs and of the baseline, and their ratio (tdfs ÷
        baseline: below 1 means tdfs spends less CPU per byte)."""
        if pair is None:
            return "—"
        mine, theirs = (self.median(f"{n}.cpu-per-gib") for n in pair)
        if mine is None or theirs is None:
            return "n/a"
        ratio = self.ratio(f"{pair[0]}.cpu-per-gib", f"{pair[1]}.cpu-per-gib")
        return f"{mine:.2f} s, {theirs:.2f} s: {ratio.value:.2f}×"


def seq(t, name):
    """`2.10 s, 1023 MB/s; CPU: daemon 1.20 s + reader 0.40 s` of a timed
    sequential read."""
    secs = t.median(name + ".secs")
    size = t.median(name + ".bytes")
    if secs is None:
        return "n/a"
    if size is None:
        return f"{secs:.2f} s"
    reader, daemon = t.median(name + ".reader-cpu"), t.median(name + ".daemon-cpu")
    if reader is None:
        cpu = ""
    elif daemon is None:
        cpu = f"; CPU {reader:.2f} s"
    else:
        cpu = f"; CPU: daemon {daemon:.2f} s + reader {reader:.2f} s"
    return f"{secs:.2f} s, {size / secs / 1e6:.0f} MB/s{cpu}"


def rand(t, name):
    """`12345 IOPS, p50 80 µs, p99 900 µs` of a fio run."""
    iops = t.median(name + ".iops")
    if iops is None:
        return "n/a"
    return f"{iops:.0f} IOPS, p50 {t.median(name + '.p50'):.0f} µs, p99 {t.median(name + '.p99'):.0f} µs"


def table(path, max_load):
    t = Table(load(path), max_load)
    # The memory of the mount that checks the data (pair 0) is not a pair.
    pairs = {r for n, v in t.values.items() if not n.startswith("memory.") for r in v}
    tr = t.ratio

    if "seq-cold-zstd.tdfs.secs" in t.values:
        sq = [s for s in ("sq128k", "sq1m", "sqll128k", "sqll1m") if f"seq-cold-zstd.{s}.secs" in t.values]
        best_sq = min(sq, key=lambda s: t.median(f"seq-cold-zstd.{s}.secs")) if sq else None
        for s in sq:
            t.row(
                "seq-cold-zstd",
                seq(t, "seq-cold-zstd.tdfs"),
                f"{SQ_NAMES[s]}: {seq(t, f'seq-cold-zstd.{s}')}",
                tr("seq-cold-zstd.tdfs.secs", f"seq-cold-zstd.{s}.secs", invert=True),
                "≥ 1.5× best squashfuse" if s == best_sq else "",
                1.5 if s == best_sq else None,
                cpu=("seq-cold-zstd.tdfs", f"seq-cold-zstd.{s}"),
            )
        t.row(
            "seq-cold-zstd",
            seq(t, "seq-cold-zstd.tdfs"),
            f"`zstd -d` of the object: {seq(t, 'seq-cold-zstd.zstd')}",
            tr("seq-cold-zstd.tdfs.secs", "seq-cold-zstd.zstd.secs", invert=True),
            "≥ 0.7×",
            0.7,
            cpu=("seq-cold-zstd.tdfs", "seq-cold-zstd.zstd"),
        )
        t.row(
            "seq-cold-raw",
            seq(t, "seq-cold-raw.tdfs"),
            f"`cat` local file, cold: {seq(t, 'seq-cold-raw.local')}",
            tr("seq-cold-raw.tdfs.secs", "seq-cold-raw.local.secs", invert=True),
            cpu=("seq-cold-raw.tdfs", "seq-cold-raw.local"),
        )
        t.row(
            "seq-cold-rootfs",
            seq(t, "seq-cold-rootfs.tdfs"),
            f"`cat` local rootfs.ext4, cold: {seq(t, 'seq-cold-rootfs.local')}",
            tr("seq-cold-rootfs.tdfs.secs", "seq-cold-rootfs.local.secs", invert=True),
            cpu=("seq-cold-rootfs.tdfs", "seq-cold-rootfs.local"),
        )
        t.row(
            "seq-warm",
            seq(t, "seq-warm.tdfs"),
            f"`cat` from page cache: {seq(t, 'seq-warm.local')}",
            tr("seq-warm.tdfs.secs", "seq-warm.local.secs", invert=True),
            "≥ 0.5×",
            0.5,
            cpu=("seq-warm.tdfs", "seq-warm.local"),
        )
        # seq-warm.local reads the sparse memfile, whose page cache holds
        # large folios and its holes: no FUSE file gets that on this kernel,
        # so that figure is not comparable. The target is held against a
        # non-sparse copy read the same way (cat) when the run has it.
        full = "seq-rehit.localfull.secs" in t.values
        t.row(
            "seq-rehit",
            seq(t, "seq-rehit.tdfs"),
            f"`cat` from page cache (sparse file, large folios: not comparable): {seq(t, 'seq-warm.local')}",
            tr("seq-rehit.tdfs.secs", "seq-warm.local.secs", invert=True),
            "" if full else "≥ 0.9×",
            None if full else 0.9,
            cpu=("seq-rehit.tdfs", "seq-warm.local"),
        )
        if full:
            t.row(
                "seq-rehit",
                seq(t, "seq-rehit.tdfs"),
                f"`cat` of a non-sparse local copy from page cache: {seq(t, 'seq-rehit.localfull')}",
                tr("seq-rehit.tdfs.secs", "seq-rehit.localfull.secs", invert=True),
                "≥ 0.9×",
                0.9,
                cpu=("seq-rehit.tdfs", "seq-rehit.localfull"),
            )
        # squashfuse re-reads from the same kernel FUSE page cache: what any
        # FUSE file gets on this kernel.
        for s in sq:
            if f"seq-rehit.{s}.secs" in t.values:
                t.row(
                    "seq-rehit",
                    seq(t, "seq-rehit.tdfs"),
                    f"{SQ_NAMES[s]}, from its page cache: {seq(t, f'seq-rehit.{s}')}",
                    tr("seq-rehit.tdfs.secs", f"seq-rehit.{s}.secs", invert=True),
                    cpu=("seq-rehit.tdfs", f"seq-rehit.{s}"),
                )

    if "rand-4k-cold.tdfs.iops" in t.values:
        sq = [s for s in ("sq128k", "sq1m", "sqll128k", "sqll1m") if f"rand-4k-cold.{s}.iops" in t.values]
        best_sq = max(sq, key=lambda s: t.median(f"rand-4k-cold.{s}.iops")) if sq else None
        for s in sq:
            best = s == best_sq
            p99_lower = (t.median("rand-4k-cold.tdfs.p99") or 0) < (t.median(f"rand-4k-cold.{s}.p99") or 0)
            t.row(
                "rand-4k-cold",
                rand(t, "rand-4k-cold.tdfs"),
                f"{SQ_NAMES[s]}: {rand(t, f'rand-4k-cold.{s}')}",
                tr("rand-4k-cold.tdfs.iops", f"rand-4k-cold.{s}.iops"),
                ("≥ 3× IOPS, lower p99 " + ("(lower: yes)" if p99_lower else "(lower: **no**)")) if best else "",
                3.0 if best else None,
            )
        t.row(
            "rand-4k-cold",
            rand(t, "rand-4k-cold.tdfs"),
            f"local file, cold: {rand(t, 'rand-4k-cold.local')}",
            tr("rand-4k-cold.tdfs.iops", "rand-4k-cold.local.iops"),
        )
        t.row(
            "rand-4k-warm",
            rand(t, "rand-4k-warm.tdfs"),
            f"local file, page cache: {rand(t, 'rand-4k-warm.local')}",
            tr("rand-4k-warm.tdfs.iops", "rand-4k-warm.local.iops"),
            "≥ 0.9×",
            0.9,
        )

    if "slow-seq.ra.secs" in t.values:
        t.row(
            "slow-store seq",
            seq(t, "slow-seq.ra"),
            f"read-ahead off: {seq(t, 'slow-seq.nora')}",
            tr("slow-seq.ra.secs", "slow-seq.nora.secs", invert=True),
            "≥ 3×",
            3.0,
            cpu=("slow-seq.ra", "slow-seq.nora"),
        )
        obj = t.median("slow-seq.object-bytes")
        bw = t.median("slow-seq.store-bps")
        if obj and bw:
            ra, nora = t.median("slow-seq.ra.secs"), t.median("slow-seq.nora.secs")
            t.row(
                "slow-store seq",
                f"fetched {obj / ra / 1e6:.0f} MB/s of the object",
                f"one request: {bw / 1e6:.0f} MB/s; read-ahead off: {obj / nora / 1e6:.0f} MB/s",
                t.derived(obj / ra / bw, "slow-seq.ra", "slow-seq.nora"),
            )
        t.row(
            "slow-store rand",
            rand(t, "slow-rand.ra"),
            f"read-ahead off: {rand(t, 'slow-rand.nora')}",
            tr("slow-rand.ra.iops", "slow-rand.nora.iops"),
        )

    if "s3-seq.tdfs.secs" in t.values:
        t.row(
            "s3 (Garage) seq-cold",
            seq(t, "s3-seq.tdfs"),
            f"`aws s3 cp` of the object: {seq(t, 's3-seq.aws')}",
            tr("s3-seq.tdfs.secs", "s3-seq.aws.secs", invert=True),
        )
        dl = t.median("s3-seq.aws.secs")
        p99 = t.median("s3-rand.tdfs.p99")
        t.row(
            "s3 (Garage) rand-4k-cold",
            rand(t, "s3-rand.tdfs"),
            f"`aws s3 cp` before the first read: {dl:.2f} s" if dl else "n/a",
            t.derived(dl / (p99 / 1e6) if dl and p99 else None, "s3-seq.aws", "s3-rand.tdfs"),
        )

    many_rows(t)
    peers_rows(t)
    restore_rows(t)

    peaks = {n: t.median(n) for n in t.values if n.startswith("memory.")}
    if peaks:
        worst = max(peaks, key=peaks.get)
        t.row(
            "memory",
            f"peak RssAnon {peaks[worst] / 1024:.1f} MiB (mount: {worst[len('memory.'):]})",
            "—",
            None,
            "< 64 MiB " + ("(yes)" if peaks[worst] < 64 * 1024 else "(**no**)"),
        )
    print(
        f"Medians over {len(pairs)} pair(s) of runs: each row's tdfs and baseline runs alternate "
        "(A B A B …), and its ratio is the median of the per-pair ratios. The load column is the "
        "highest 1-minute load average at the start of any run of the row; a row is **not "
        f"comparable** when it is above {max_load:g}, and its verdict is withheld. "
        f"Not comparable: {t.not_comparable} row(s).\n"
    )
    print("\n".join(t.lines))
    print()
    print(
        "Ratios are tdfs ÷ baseline for throughput and IOPS (time ratios for the "
        "sequential reads: baseline time ÷ tdfs time), so above 1 means tdfs is faster."
    )
    if "s3-rand.tdfs.p99" in t.values:
        print(
            "The S3 random row's ratio is the download time ÷ tdfs's p99 read latency: how "
            "much sooner a random page can be read than after downloading the object."
        )


def cpu_note(t, name):
    """`daemon 1.2 s + readers 0.3 s CPU` of a `many` measurement."""
    d, r = t.median(name + ".daemon-cpu"), t.median(name + ".reader-cpu")
    return "" if d is None or r is None else f"; CPU: daemon {d:.2f} s + readers {r:.2f} s"


def many_rows(t):
    """Several readers at once on the slow store (`many` group): time
    against one reader alone, store bytes against the unique bytes."""
    for row, readers, what, unique_name, time_target, bytes_target in (
        ("same-file", 3, "the same memfile", "object bytes", 1.3, 1.05),
        ("shared-base", 4, "4 layers on one base", "unique bytes", 1.5, 1.1),
    ):
        if f"{row}.many.secs" not in t.values:
            continue
        # A time ratio here is many ÷ one: at most the target is met.
        t.row(
            row,
            f"{readers} `cat`s of {what}: {t.median(row + '.many.secs'):.2f} s{cpu_note(t, row + '.many')}",
            f"one `cat` alone: {t.median(row + '.one.secs'):.2f} s{cpu_note(t, row + '.one')}",
            t.ratio(f"{row}.many.secs", f"{row}.one.secs"),
            f"≤ {time_target}×",
            maximum=time_target,
            unit=" the time",
        )
        t.row(
            row,
            f"fetched {t.median(row + '.many.store-bytes') / 2**20:.0f} MiB from the store",
            f"{unique_name}: {t.median(row + '.unique-bytes') / 2**20:.0f} MiB",
            t.ratio(f"{row}.many.store-bytes", f"{row}.unique-bytes"),
            f"≤ {bytes_target}×",
            maximum=bytes_target,
            unit=" the bytes",
        )


def peers_rows(t):
    """Host B reading through its peer A (A's cache warm), against B
    reading the slow store and the unthrottled local store (`peers` group)."""
    if "peers-seq.peer.secs" not in t.values:
        return

    def note(name):
        b, a = t.median(name + ".cpu"), t.median(name + ".peer-cpu")
        reqs = t.median(name + ".store-requests")
        parts = [] if b is None else [f"CPU {b:.2f} s" + ("" if a is None else f" + peer {a:.2f} s")]
        if reqs is not None:
            parts.append(f"{reqs:.0f} store requests")
        return "; " + ", ".join(parts) if parts else ""

    for kind, show, metric, invert in (
        ("seq", seq, "secs", True),
        ("rand", rand, "iops", False),
    ):
        for base, label, minimum in (("slow", "slow store", 3.0), ("local", "local store", 0.5)):
            t.row(
                f"peers {kind}-cold",
                show(t, f"peers-{kind}.peer") + note(f"peers-{kind}.peer"),
                f"{label}: {show(t, f'peers-{kind}.{base}')}{note(f'peers-{kind}.{base}')}",
                t.ratio(f"peers-{kind}.peer.{metric}", f"peers-{kind}.{base}.{metric}", invert=invert),
                f"≥ {minimum}×",
                minimum,
            )


def restore(t, name):
    """`1.23 s; CPU: replay 0.20 s + daemon 0.80 s` of a restore row."""
    secs = t.median(name + ".secs")
    if secs is None:
        return "n/a"
    cpu = t.median(name + ".cpu")
    daemon = t.median(name + ".daemon-cpu")
    parts = [] if cpu is None else [f"replay {cpu:.2f} s"]
    if daemon is not None:
        parts.append(f"daemon {daemon:.2f} s")
    return f"{secs:.2f} s" + (f"; CPU: {' + '.join(parts)}" if parts else "")


def restore_rows(t):
    """A VM restore from a cold host (`restore` group): the recorded trace
    replayed through the mount with and without prefetch, against the
    flattened local file; the boot with and without its rootfs trace."""
    tr = t.ratio
    stores = (("slow", "slow store"), ("bucket", "bucket-like store"), ("fast", "local store"))
    for speed, what in stores:
        if f"restore-{speed}.prefetch.secs" not in t.values:
            continue
        pre = restore(t, f"restore-{speed}.prefetch")
        minimum = 1.0 if speed == "fast" else 3.0
        t.row(
            f"restore, {what}",
            f"prefetch: {pre}",
            f"no prefetch: {restore(t, f'restore-{speed}.off')}",
            tr(f"restore-{speed}.prefetch.secs", f"restore-{speed}.off.secs", invert=True),
            f"≥ {minimum:g}×",
            minimum,
        )
        t.row(
            f"restore, {what}",
            f"prefetch: {pre}",
            f"local file: {restore(t, 'restore.local')}",
            tr(f"restore-{speed}.prefetch.secs", "restore.local.secs", invert=True),
            "≥ 0.5× (within 2×)" if speed != "fast" else None,
            0.5 if speed != "fast" else None,
        )
        reqs = t.median(f"restore-{speed}.prefetch.store-requests")
        if reqs is not None:
            off = t.median(f"restore-{speed}.off.store-requests")
            t.row(
                f"restore, {what}: the store",
                f"prefetch: {reqs:.0f} requests,"
                f" {t.median(f'restore-{speed}.prefetch.store-bytes') / 2**20:.0f} MiB",
                f"no prefetch: {off:.0f} requests,"
                f" {t.median(f'restore-{speed}.off.store-bytes') / 2**20:.0f} MiB",
                None,
            )
    if "boot.trace.secs" in t.values:
        def cpu(n):
            return f"{t.median(n + '.secs'):.2f} s; CPU: QEMU {t.median(n + '.cpu'):.2f} s"

        t.row(
            "boot (QEMU TCG)",
            f"rootfs trace: {cpu('boot.trace')}",
            f"no trace: {cpu('boot.off')}",
            tr("boot.trace.secs", "boot.off.secs", invert=True),
            "≥ 1.0×",
            1.0,
        )


SQ_NAMES = {
    "sq128k": "squashfuse, zstd 128 KiB blocks",
    "sq1m": "squashfuse, zstd 1 MiB blocks",
    "sqll128k": "squashfuse_ll, zstd 128 KiB blocks",
    "sqll1m": "squashfuse_ll, zstd 1 MiB blocks",
}


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "memfile" and len(args) == 3:
        write_memfile(args[0], int(args[1]), int(args[2]))
    elif cmd == "rootfs-tree" and len(args) == 2:
        rootfs_tree(args[0], int(args[1]))
    elif cmd == "memwatch" and len(args) == 2:
        memwatch(int(args[0]), args[1])
    elif cmd == "fio" and len(args) == 1:
        fio_summary(args[0])
    elif cmd == "bandwidth" and len(args) == 1:
        bandwidth(args[0])
    elif cmd == "cats" and args:
        cats(args)
    elif cmd == "run" and len(args) >= 2:
        run(args[1:], log=args[0])
    elif cmd == "trace" and len(args) == 1:
        trace_size(args[0])
    elif cmd == "timed" and args:
        run(args)
    elif cmd == "cpu" and len(args) == 1:
        cpu(int(args[0]))
    elif cmd == "stat" and len(args) == 2:
        stat_counter(args[0], args[1])
    elif cmd == "table" and len(args) == 2:
        table(args[0], float(args[1]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
