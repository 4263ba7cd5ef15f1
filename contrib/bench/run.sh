#!/usr/bin/env bash
# Benchmark tdfs against the ways a worker host could otherwise serve template
# files: a flattened local file, squashfuse over a zstd squashfs image of the
# same bytes, and `zstd -d` of the same frames; plus a slow (throttled) store
# and a local S3 server (Garage). Each row's tdfs and baseline runs alternate
# (A B A B ..., PAIRS pairs); every figure is a median over the pairs, every
# ratio the median of the per-pair ratios, and the 1-minute load average at
# the start of each run is recorded: a row any of whose runs started above
# LOAD_MAX is marked not comparable. See contrib/bench/README.md.
#
# Needs root (drops kernel caches, mounts FUSE). Installs nothing: it checks
# for the tools it uses and names the missing ones.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
HELPER="$HERE/bench.py"

TDFS=${TDFS:-$REPO/target/release/tdfs}
CHECKER=${CHECKER:-$REPO/target/release/examples/vm_memfile_check}
WORK=${BENCH_DIR:-/var/tmp/tdfs-bench}
# Pairs of runs (A B) per row; RUNS is the old name.
PAIRS=${PAIRS:-${RUNS:-3}}
# A row is not comparable when the 1-minute load average at the start of any
# of its runs was above this: by default 0.5 per core.
LOAD_MAX=${LOAD_MAX:-$(awk -v n="$(nproc)" 'BEGIN { printf "%.2f", n / 2 }')}
# Seconds to wait, before dropping caches for a cold run, for the load to
# come down to LOAD_MAX (the bench's own last run raises it; fio's 4 jobs
# most). 0: never wait.
LOAD_WAIT=${LOAD_WAIT:-60}
GROUPS_WANTED=${GROUPS_WANTED:-seq,rand,slow,many,s3,peers,restore}
MEMFILE_MIB=${MEMFILE_MIB:-2048}
# tdfs mount --passthrough for the seq and rand groups.
PASSTHROUGH=${PASSTHROUGH:-on}
# Memfile of the `many` group's base build (its layers are copies of it).
MANY_MIB=${MANY_MIB:-512}
ROOTFS_MIB=${ROOTFS_MIB:-1024}
FIO_SECS=${FIO_SECS:-15}
THROTTLE=${THROTTLE:-20ms,100MB}
# The restore group's store shaped like a cloud bucket seen from a VM
# (issue 22): 50 ms to first byte, 100 MB/s per request.
BUCKET_THROTTLE=${BUCKET_THROTTLE:-50ms,100MB}
SETTLE=${SETTLE:-3}
SEED=${SEED:-1}
# Bound on any one read of a whole file or download (seconds).
READ_TIMEOUT=${READ_TIMEOUT:-600}

usage() {
  cat <<EOF
usage: contrib/bench/run.sh [--pairs N] [--groups LIST] [--max-load L] [--load-wait S]
                            [--work DIR] [--fio-secs S] [--out FILE]

  --pairs N       pairs of runs per row, tdfs and baseline alternating
                  (A B A B ...), to take medians over (default $PAIRS;
                  --runs N is the same)
  --groups LIST   comma list of seq, rand, slow, many, s3, peers, restore (default
                  $GROUPS_WANTED)
  --max-load L    a row is not comparable when the 1-minute load average at
                  the start of any of its runs was above L (default $LOAD_MAX:
                  0.5 per core)
  --load-wait S   before dropping caches for a cold run, wait up to S seconds
                  for the load to come down to the bound (default $LOAD_WAIT)
  --work DIR      data, images, stores and mounts (default $WORK; reused
                  between invocations, delete it to regenerate the data)
  --fio-secs S    length of each fio run (default $FIO_SECS)
  --out FILE      also write the report (machine, date, table) to FILE

Environment: TDFS (binary, default target/release/tdfs), CHECKER (the
vm_memfile_check example, for restore), MEMFILE_MIB
($MEMFILE_MIB), ROOTFS_MIB ($ROOTFS_MIB), MANY_MIB ($MANY_MIB), THROTTLE
($THROTTLE), BUCKET_THROTTLE (restore's bucket-like store: $BUCKET_THROTTLE),
SEED ($SEED), PASSTHROUGH (tdfs mount --passthrough: $PASSTHROUGH); PAIRS,
LOAD_MAX and LOAD_WAIT set the defaults of --pairs, --max-load and
--load-wait.
EOF
}

OUT=""
while [ $# -gt 0 ]; do
  case $1 in
    --pairs|--runs) PAIRS=$2; shift 2 ;;
    --groups) GROUPS_WANTED=$2; shift 2 ;;
    --max-load) LOAD_MAX=$2; shift 2 ;;
    --load-wait) LOAD_WAIT=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --fio-secs) FIO_SECS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

[[ $PAIRS =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --pairs wants a positive integer, not '$PAIRS'" >&2; exit 2; }
[[ $LOAD_MAX =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "run.sh: --max-load wants a number, not '$LOAD_MAX'" >&2; exit 2; }
[[ $LOAD_WAIT =~ ^[0-9]+$ ]] || { echo "run.sh: --load-wait wants whole seconds, not '$LOAD_WAIT'" >&2; exit 2; }

want() { [[ ",$GROUPS_WANTED," == *",$1,"* ]]; }
# The groups that read the main data set (prepare, verify_mounts).
want_main() { want seq || want rand || want slow || want s3 || want peers || want restore; }
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { echo "run.sh: $*" >&2; exit 1; }

# --- checks -----------------------------------------------------------------

check_tools() {
  local missing=() tool
  local tools=(python3 fusermount3 timeout dd mountpoint)
  if want_main; then tools+=(fio zstd mksquashfs squashfuse mkfs.ext4); fi
  if want s3; then tools+=(garage aws); fi
  if want restore; then tools+=(qemu-system-x86_64 busybox mkfs.ext4 sha256sum); fi
  for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    die "missing: ${missing[*]}. On Debian: apt-get install fio zstd squashfs-tools squashfuse e2fsprogs fuse3 awscli; Garage: contrib/garage/install.sh"
  fi
  [ "$(id -u)" = 0 ] || die "run as root: it drops kernel caches and mounts FUSE filesystems"
  [ -e /dev/fuse ] || die "/dev/fuse is missing"
  [ -x "$TDFS" ] || die "$TDFS not found: build it with cargo build --release (or set TDFS)"
  if want restore; then
    [ -x "$CHECKER" ] || die "$CHECKER not found: build it with cargo build --release --example vm_memfile_check (or set CHECKER)"
    "$TDFS" mount --help | grep -q -- --record-prefetch ||
      die "$TDFS has no mount --record-prefetch: the restore group records its traces with it"
  fi
  local newer
  newer=$(find "$REPO/src" "$REPO/Cargo.toml" "$REPO/Cargo.lock" -newer "$TDFS" -print -quit 2>/dev/null)
  if [ -n "$newer" ]; then
    BINARY_NOTE=" — **built before $newer changed: not the sources' build**"
    echo "run.sh: warning: $TDFS is older than $newer; rebuild with cargo build --release" >&2
  fi
}
BINARY_NOTE=""

# --- cleanup ------------------------------------------------------------------

MOUNTS=()
PIDS=()
cleanup() {
  local m p
  for m in "${MOUNTS[@]}"; do
    if mountpoint -q "$m" 2>/dev/null; then
      fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    fi
  done
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- measuring ----------------------------------------------------------------

# Lines `PAIR<TAB>NAME<TAB>VALUE`; PAIR 0 is the check before the pairs.
RESULTS="$WORK/results.tsv"
PAIR=0

record() { printf '%s\t%s\t%s\n' "$PAIR" "$1" "$2" >>"$RESULTS"; }

load1() { cut -d' ' -f1 /proc/loadavg; }
above_load_max() { awk -v l="$1" -v m="$LOAD_MAX" 'BEGIN { exit !(l > m) }'; }

# start_run NAME: record NAME.load, the 1-minute load average as the run of
# NAME starts, and keep it in LOAD for the run's log line.
LOAD=""
start_run() {
  LOAD=$(load1)
  record "$1.load" "$LOAD"
}

# Wait up to LOAD_WAIT seconds for the 1-minute load average to come down to
# LOAD_MAX (it decays by half in ~42 s once the work stops).
wait_quiet() {
  local waited=0 load
  load=$(load1)
  while above_load_max "$load" && [ "$waited" -lt "$LOAD_WAIT" ]; do
    sleep 2
    waited=$((waited + 2))
    load=$(load1)
  done
  if [ "$waited" -ge "$LOAD_WAIT" ] && [ "$LOAD_WAIT" -gt 0 ] && above_load_max "$load"; then
    log "  load $load still above $LOAD_MAX after ${LOAD_WAIT} s: this run will not be comparable"
  fi
}

# Wait for the load to come down (wait_quiet), drop the kernel caches, then
# wait SETTLE seconds: in a VM with free page reporting (virtio-balloon;
# the kernel reports freed memory to the host about 2 s after it is freed),
# memory touched within that window is still backed and cheap, later it
# costs host faults. Waiting puts every contender in the same state.
drop_caches() {
  wait_quiet
  sync
  echo 3 >/proc/sys/vm/drop_caches
  sleep "$SETTLE"
}

# Drop one file's pages from the kernel page cache (POSIX_FADV_DONTNEED).
drop_file_cache() { dd if="$1" iflag=nocache count=0 status=none; }

# The daemon serving the mount being read (tdfs or squashfuse), whose CPU
# time a timed read counts; empty for a local file or a download.
DAEMON_PID=""

# timed NAME BYTES COMMAND...: record NAME.load (start_run), NAME.secs (wall
# time), NAME.bytes, NAME.reader-cpu (CPU seconds of COMMAND and its
# children) and, while a mount is up, NAME.daemon-cpu (its daemon's CPU
# seconds meanwhile).
timed() {
  local name=$1 bytes=$2 out wall rcpu d0 d1
  shift 2
  start_run "$name"
  [ -n "$DAEMON_PID" ] && d0=$(python3 "$HELPER" cpu "$DAEMON_PID")
  out=$(timeout "$READ_TIMEOUT" python3 "$HELPER" timed "$@")
  read -r wall rcpu <<<"$out"
  record "$name.secs" "$wall"
  record "$name.bytes" "$bytes"
  record "$name.reader-cpu" "$rcpu"
  local cpu_note="reader $rcpu s CPU"
  if [ -n "$DAEMON_PID" ]; then
    d1=$(python3 "$HELPER" cpu "$DAEMON_PID")
    record "$name.daemon-cpu" "$(python3 -c "print($d1 - $d0)")"
    cpu_note="daemon $(python3 -c "print(f'{$d1 - $d0:.2f}')") s + $cpu_note"
  fi
  log "  $name: $(python3 -c "print(f'{$wall:.2f} s, {$bytes / $wall / 1e6:.0f} MB/s')"), $cpu_note; load $LOAD"
}

# timed_cat NAME FILE: sequential read of the whole FILE.
# shellcheck disable=SC2016 # $1 is the inner shell's
timed_cat() { timed "$1" "$(stat -c %s "$2")" sh -c 'cat "$1" >/dev/null' sh "$2"; }

# fio_rand NAME FILE INVALIDATE: random 4 KiB reads, 4 jobs, FIO_SECS;
# records NAME.load, .iops, .p50 and .p99.
fio_rand() {
  local name=$1 file=$2 invalidate=$3 json="$WORK/fio.json" iops p50 p99
  start_run "$name"
  timeout $((FIO_SECS + 120)) fio --name=rand4k --filename="$file" --readonly \
    --rw=randread --bs=4k --numjobs=4 --ioengine=psync --time_based \
    --runtime="$FIO_SECS" --invalidate="$invalidate" --group_reporting \
    --output-format=json --output="$json" >/dev/null
  read -r iops p50 p99 < <(python3 "$HELPER" fio "$json")
  record "$name.iops" "$iops"
  record "$name.p50" "$p50"
  record "$name.p99" "$p99"
  log "  $name: $iops IOPS, p50 $p50 µs, p99 $p99 µs; load $LOAD"
}

# wait_mounted DIR PID: until DIR is a mount point (or PID died).
wait_mounted() {
  for _ in $(seq 300); do
    mountpoint -q "$1" && return 0
    kill -0 "$2" 2>/dev/null || die "the mount on $1 exited while starting (log: $WORK/logs)"
    sleep 0.1
  done
  die "$1 was not mounted after 30 s"
}

# mount_tdfs NAME STORE ARGS...: a fresh tdfs mount (empty cache) on
# $WORK/mnt/NAME, in the foreground as a child, with its anonymous memory
# sampled. Sets MNT.
TDFS_PID=""
WATCH_PID=""
MOUNT_NAME=""
mount_tdfs() {
  local name=$1 store=$2
  shift 2
  MNT="$WORK/mnt/$name"
  MOUNT_NAME=$name
  mkdir -p "$MNT" "$WORK/logs"
  rm -rf "$WORK/cache/$name"
  "$TDFS" mount "$store" "$MNT" --foreground --cache-dir "$WORK/cache/$name" \
    --passthrough "$PASSTHROUGH" "$@" \
    >>"$WORK/logs/$name.log" 2>&1 &
  TDFS_PID=$!
  DAEMON_PID=$TDFS_PID
  PIDS+=("$TDFS_PID")
  MOUNTS+=("$MNT")
  wait_mounted "$MNT" "$TDFS_PID"
  rm -f "$WORK/mem.peak"
  python3 "$HELPER" memwatch "$TDFS_PID" "$WORK/mem.peak" &
  WATCH_PID=$!
  PIDS+=("$WATCH_PID")
}

# umount_tdfs: unmount the last tdfs mount, record its peak RssAnon (KiB).
umount_tdfs() {
  fusermount3 -u "$MNT"
  timeout 30 tail --pid="$TDFS_PID" -f /dev/null || kill "$TDFS_PID" 2>/dev/null || true
  wait "$TDFS_PID" 2>/dev/null || true
  DAEMON_PID=""
  wait "$WATCH_PID" 2>/dev/null || true
  [ -s "$WORK/mem.peak" ] && record "memory.$MOUNT_NAME" "$(cat "$WORK/mem.peak")"
  rm -rf "$WORK/cache/$MOUNT_NAME"
}

# wait_flat FILE: with passthrough on, wait (up to 60 s) until tdfs has
# written the flat copy of the wholly cached FILE, so the warm rows measure
# the steady state (passthrough opens) and not the copy.
wait_flat() {
  local state
  for _ in $(seq 600); do
    state=$(getfattr --only-values -n user.tdfs.passthrough "$1" 2>/dev/null) || return 0
    case $state in flattening*|"not cached"*) sleep 0.1 ;; *) log "  passthrough: $state"; return 0 ;; esac
  done
  log "  passthrough: still $state after 60 s"
}

# mount_squash IMAGE PROGRAM: squashfuse (or squashfuse_ll) on $WORK/mnt/sq.
SQ_PID=""
mount_squash() {
  MNT="$WORK/mnt/sq"
  mkdir -p "$MNT"
  "$2" -f "$1" "$MNT" >>"$WORK/logs/squashfuse.log" 2>&1 &
  SQ_PID=$!
  DAEMON_PID=$SQ_PID
  PIDS+=("$SQ_PID")
  MOUNTS+=("$MNT")
  wait_mounted "$MNT" "$SQ_PID"
}

umount_squash() {
  fusermount3 -u "$MNT"
  wait "$SQ_PID" 2>/dev/null || true
  DAEMON_PID=""
}

# --- data ---------------------------------------------------------------------

DATA="$WORK/data"
STORE="$WORK/store"

prepare() {
  local stamp="memfile=$MEMFILE_MIB rootfs=$ROOTFS_MIB seed=$SEED"
  mkdir -p "$DATA" "$WORK/logs"
  if [ -f "$DATA/ready" ] && [ "$(cat "$DATA/ready")" = "$stamp" ]; then
    log "reusing the data in $DATA"
  else
    rm -rf "$DATA" "$STORE"
    mkdir -p "$DATA"
    log "writing a $MEMFILE_MIB MiB memfile"
    python3 "$HELPER" memfile "$DATA/memfile" "$MEMFILE_MIB" "$SEED"
    log "building a $ROOTFS_MIB MiB ext4 rootfs from files in /usr"
    python3 "$HELPER" rootfs-tree "$DATA/tree" $((ROOTFS_MIB * 6 / 10))
    mkfs.ext4 -q -F -b 4096 -d "$DATA/tree" "$DATA/rootfs.ext4" "${ROOTFS_MIB}M"
    rm -rf "$DATA/tree"
    local compression id
    for compression in zstd none; do
      log "tdfs pack --compress $compression"
      id=$(timeout 1200 "$TDFS" pack --store "$STORE" --memfile "$DATA/memfile" \
        --rootfs "$DATA/rootfs.ext4" --compress "$compression" 2>>"$WORK/logs/pack.log")
      echo "$id" >"$DATA/build.$compression"
    done
    local block
    for block in 128K 1M; do
      log "mksquashfs -comp zstd -b $block"
      # zstd level 3, as tdfs pack writes, so both images hold like frames.
      timeout 1200 mksquashfs "$DATA/memfile" "$DATA/memfile-$block.sqfs" -noappend -quiet \
        -comp zstd -Xcompression-level 3 -b "$block" -no-progress >>"$WORK/logs/mksquashfs.log"
    done
    echo "$stamp" >"$DATA/ready"
  fi
  ZSTD_BUILD=$(cat "$DATA/build.zstd")
  RAW_BUILD=$(cat "$DATA/build.none")
  ZSTD_OBJECT="$STORE/$ZSTD_BUILD/memfile.zstd"
  [ -f "$ZSTD_OBJECT" ] || die "$ZSTD_OBJECT missing: delete $WORK and run again"
}

# Check once that every mount serves the memfile's bytes.
verify_mounts() {
  log "checking that tdfs and squashfuse serve the memfile's bytes"
  mount_tdfs verify "$STORE"
  timeout "$READ_TIMEOUT" cmp "$DATA/memfile" "$MNT/$ZSTD_BUILD/memfile"
  timeout "$READ_TIMEOUT" cmp "$DATA/memfile" "$MNT/$RAW_BUILD/memfile"
  umount_tdfs
  mount_squash "$DATA/memfile-1M.sqfs" squashfuse
  timeout "$READ_TIMEOUT" cmp "$DATA/memfile" "$MNT/memfile"
  umount_squash
}

# squashfuse programs and images: name, program, image.
squash_variants() {
  local block
  for block in 128K 1M; do
    echo "sq${block,,} squashfuse $DATA/memfile-$block.sqfs"
    if command -v squashfuse_ll >/dev/null; then
      echo "sqll${block,,} squashfuse_ll $DATA/memfile-$block.sqfs"
    fi
  done
}

# --- groups -------------------------------------------------------------------

# One pair of every seq row: each tdfs run (on a fresh mount) is followed by
# its baselines, so a pair's two sides are at most a minute apart.
group_seq() {
  local zfile name prog img
  mount_tdfs seq "$STORE"
  zfile="$MNT/$ZSTD_BUILD/memfile"
  drop_caches
  timed_cat seq-cold-zstd.tdfs "$zfile"
  wait_flat "$zfile"
  drop_file_cache "$zfile"
  timed_cat seq-warm.tdfs "$zfile"
  timed_cat seq-rehit.tdfs "$zfile"
  umount_tdfs

  cat "$DATA/memfile" >/dev/null
  timed_cat seq-warm.local "$DATA/memfile"
  # The sparse memfile's page cache holds large folios (and its holes),
  # which no FUSE file gets on this kernel; a non-sparse copy read the same
  # way is the local figure to hold seq-rehit against.
  cp --sparse=never "$DATA/memfile" "$WORK/memfile.full"
  cat "$WORK/memfile.full" >/dev/null
  timed_cat seq-rehit.localfull "$WORK/memfile.full"
  rm -f "$WORK/memfile.full"

  while read -r name prog img; do
    mount_squash "$img" "$prog"
    drop_caches
    timed_cat "seq-cold-zstd.$name" "$MNT/memfile"
    # The same kernel FUSE page cache as tdfs's seq-rehit, for comparison.
    timed_cat "seq-rehit.$name" "$MNT/memfile"
    umount_squash
  done < <(squash_variants)

  drop_caches
  # shellcheck disable=SC2016 # $1 is the inner shell's
  timed seq-cold-zstd.zstd "$(stat -c %s "$STORE/$RAW_BUILD/memfile")" sh -c 'zstd -d -q -c "$1" >/dev/null' sh "$ZSTD_OBJECT"

  mount_tdfs seq-raw "$STORE"
  drop_caches
  timed_cat seq-cold-raw.tdfs "$MNT/$RAW_BUILD/memfile"
  umount_tdfs
  drop_caches
  timed_cat seq-cold-raw.local "$DATA/memfile"

  mount_tdfs seq-rootfs "$STORE"
  drop_caches
  timed_cat seq-cold-rootfs.tdfs "$MNT/$ZSTD_BUILD/rootfs.ext4"
  umount_tdfs
  drop_caches
  timed_cat seq-cold-rootfs.local "$DATA/rootfs.ext4"
}

# One pair of every rand row, each tdfs run followed by its baselines.
group_rand() {
  local file name prog img
  mount_tdfs rand-cold "$STORE"
  drop_caches
  fio_rand rand-4k-cold.tdfs "$MNT/$ZSTD_BUILD/memfile" 1
  umount_tdfs
  drop_caches
  fio_rand rand-4k-cold.local "$DATA/memfile" 1
  while read -r name prog img; do
    mount_squash "$img" "$prog"
    drop_caches
    fio_rand "rand-4k-cold.$name" "$MNT/memfile" 1
    umount_squash
  done < <(squash_variants)

  mount_tdfs rand-warm "$STORE"
  file="$MNT/$ZSTD_BUILD/memfile"
  cat "$file" >/dev/null
  wait_flat "$file"
  fio_rand rand-4k-warm.tdfs "$file" 0
  umount_tdfs
  cat "$DATA/memfile" >/dev/null
  fio_rand rand-4k-warm.local "$DATA/memfile" 0
}

# Read-ahead on (A) against off (B), the seq row's pair and then the rand row's.
group_slow() {
  local kind ra extra
  record slow-seq.object-bytes "$(stat -c %s "$ZSTD_OBJECT")"
  record slow-seq.store-bps "$(python3 "$HELPER" bandwidth "$THROTTLE")"
  for kind in seq rand; do
    for ra in ra nora; do
      extra=(--bench-throttle "$THROTTLE")
      [ "$ra" = nora ] && extra+=(--readahead 0)
      mount_tdfs "slow-$kind-$ra" "$STORE" "${extra[@]}"
      drop_caches
      if [ "$kind" = seq ]; then
        timed_cat "slow-seq.$ra" "$MNT/$ZSTD_BUILD/memfile"
      else
        fio_rand "slow-rand.$ra" "$MNT/$ZSTD_BUILD/memfile" 1
      fi
      umount_tdfs
    done
  done
}

# --- peers (the `peers` group) -------------------------------------------------

# A free loopback port for a peer server.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# peers_read KIND NAME FILE: a cold `cat` (KIND seq) or fio run (KIND rand)
# of FILE on the last mount, recorded as NAME, with the CPU seconds the
# mount (and, when A_PID is set, the peer A) spent on it.
peers_read() {
  local kind=$1 name=$2 file=$3 b0 a0=0
  drop_caches
  b0=$(python3 "$HELPER" cpu "$TDFS_PID")
  [ -n "${A_PID:-}" ] && a0=$(python3 "$HELPER" cpu "$A_PID")
  if [ "$kind" = seq ]; then timed_cat "$name" "$file"; else fio_rand "$name" "$file" 1; fi
  record "$name.cpu" "$(python3 -c "print($(python3 "$HELPER" cpu "$TDFS_PID") - $b0)")"
  if [ -n "${A_PID:-}" ]; then
    record "$name.peer-cpu" "$(python3 -c "print($(python3 "$HELPER" cpu "$A_PID") - $a0)")"
  fi
  record "$name.store-requests" "$(python3 "$HELPER" stat "$MNT/.stats" tdfs_store_requests_total)"
}

# Host B reads the zstd memfile cold through its peer A, whose cache is
# warm (A read the file from the slow store first); against B reading the
# slow store itself (THROTTLE) and the unthrottled local store, right after
# (A stays mounted, idle, meanwhile). B's only peer is A, so A owns every
# unit and B's store requests stay 0.
group_peers() {
  local addr kind a_pid a_mnt a_watch a_name file="$ZSTD_BUILD/memfile"
  addr="127.0.0.1:$(free_port)"
  mount_tdfs peers-a "$STORE" --peer-listen "$addr" --bench-throttle "$THROTTLE"
  a_pid=$TDFS_PID a_mnt=$MNT a_watch=$WATCH_PID a_name=$MOUNT_NAME
  cat "$a_mnt/$file" >/dev/null
  for kind in seq rand; do
    mount_tdfs "peers-b-$kind" "$STORE" --peer "http://$addr" --bench-throttle "$THROTTLE"
    A_PID=$a_pid
    peers_read "$kind" "peers-$kind.peer" "$MNT/$file"
    A_PID=""
    umount_tdfs
    mount_tdfs "peers-slow-$kind" "$STORE" --bench-throttle "$THROTTLE"
    peers_read "$kind" "peers-$kind.slow" "$MNT/$file"
    umount_tdfs
    mount_tdfs "peers-local-$kind" "$STORE"
    peers_read "$kind" "peers-$kind.local" "$MNT/$file"
    umount_tdfs
  done
  TDFS_PID=$a_pid MNT=$a_mnt WATCH_PID=$a_watch MOUNT_NAME=$a_name
  umount_tdfs
}

# --- many readers at once (the `many` group) ----------------------------------

MANY="$WORK/many"
LAYER_COUNT=4

# A base build of a MANY_MIB memfile and LAYER_COUNT layers packed on it (zstd),
# each the base with 4 regions of 8 MiB rewritten, in their own store.
prepare_many() {
  local stamp="many=$MANY_MIB seed=$SEED" i r base
  if [ -f "$MANY/ready" ] && [ "$(cat "$MANY/ready")" = "$stamp" ]; then
    log "reusing the layered store in $MANY"
  else
    rm -rf "$MANY"
    mkdir -p "$MANY/data" "$WORK/logs"
    log "writing a $MANY_MIB MiB memfile and $LAYER_COUNT layers on it"
    python3 "$HELPER" memfile "$MANY/data/base.mem" "$MANY_MIB" "$SEED"
    truncate -s 16M "$MANY/data/rootfs"
    base=$(timeout 1200 "$TDFS" pack --store "$MANY/store" --memfile "$MANY/data/base.mem" \
      --rootfs "$MANY/data/rootfs" --compress zstd 2>>"$WORK/logs/pack.log")
    echo "$base" >"$MANY/data/build.base"
    for i in $(seq "$LAYER_COUNT"); do
      cp --sparse=always "$MANY/data/base.mem" "$MANY/data/layer$i.mem"
      for r in 1 2 3 4; do
        dd if=/dev/urandom of="$MANY/data/layer$i.mem" bs=1M count=8 conv=notrunc status=none \
          seek=$(( (i * 131 + r * 37) % (MANY_MIB / 8) * 8 ))
      done
      timeout 1200 "$TDFS" pack --store "$MANY/store" --memfile "$MANY/data/layer$i.mem" \
        --rootfs "$MANY/data/rootfs" --compress zstd --base "$base" \
        2>>"$WORK/logs/pack.log" >"$MANY/data/build.layer$i"
      rm "$MANY/data/layer$i.mem"
    done
    echo "$stamp" >"$MANY/ready"
  fi
}

# many_read ROW KIND FILE...: cat the FILEs at once on a fresh mount of the
# slow store, caches dropped; records ROW.KIND.load, .secs, .reader-cpu,
# .daemon-cpu (the mount's CPU seconds while they ran) and .store-bytes.
many_read() {
  local row=$1 kind=$2 cpu0 cpu1 wall rcpu f files=()
  shift 2
  mount_tdfs "many-$row-$kind" "$MANY/store" --bench-throttle "$THROTTLE"
  for f in "$@"; do files+=("$MNT/$f"); done
  drop_caches
  start_run "$row.$kind"
  cpu0=$(python3 "$HELPER" cpu "$TDFS_PID")
  read -r wall rcpu < <(timeout "$READ_TIMEOUT" python3 "$HELPER" cats "${files[@]}")
  cpu1=$(python3 "$HELPER" cpu "$TDFS_PID")
  record "$row.$kind.secs" "$wall"
  record "$row.$kind.reader-cpu" "$rcpu"
  record "$row.$kind.daemon-cpu" "$(python3 -c "print($cpu1 - $cpu0)")"
  record "$row.$kind.store-bytes" "$(python3 "$HELPER" stat "$MNT/.stats" tdfs_store_bytes_total)"
  log "  $row.$kind: $wall s for $# reader(s), readers $rcpu s CPU, daemon $(python3 -c "print(f'{$cpu1 - $cpu0:.2f}')") s CPU; load $LOAD"
  umount_tdfs
}

group_many() {
  local base i unique layers=()
  base=$(cat "$MANY/data/build.base")
  unique=$(stat -c %s "$MANY/store/$base/memfile.zstd")
  for i in $(seq "$LAYER_COUNT"); do
    layers+=("$(cat "$MANY/data/build.layer$i")/memfile")
    unique=$((unique + $(stat -c %s "$MANY/store/$(cat "$MANY/data/build.layer$i")/memfile.zstd")))
  done
  record same-file.unique-bytes "$(stat -c %s "$MANY/store/$base/memfile.zstd")"
  record shared-base.unique-bytes "$unique"
  many_read same-file one "$base/memfile"
  many_read same-file many "$base/memfile" "$base/memfile" "$base/memfile"
  many_read shared-base one "${layers[0]}"
  many_read shared-base many "${layers[@]}"
}

# --- S3 (Garage on loopback) ----------------------------------------------------

GARAGE_PID=""
start_garage() {
  local dir="$WORK/garage" ports node key
  rm -rf "$dir"
  mkdir -p "$dir"
  ports=$(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')
  read -r RPC_PORT S3_PORT ADMIN_PORT <<<"$ports"
  sed -e "s|@DIR@|$dir|" -e "s|@RPC_PORT@|$RPC_PORT|g" -e "s|@S3_PORT@|$S3_PORT|" \
    -e "s|@ADMIN_PORT@|$ADMIN_PORT|" -e "s|@RPC_SECRET@|$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')|" \
    "$REPO/contrib/garage/garage.toml.in" >"$dir/garage.toml"
  chmod 600 "$dir/garage.toml"
  RUST_LOG=garage=warn garage -c "$dir/garage.toml" server >>"$WORK/logs/garage.log" 2>&1 &
  GARAGE_PID=$!
  PIDS+=("$GARAGE_PID")
  local g=(garage -c "$dir/garage.toml")
  for _ in $(seq 100); do "${g[@]}" status >/dev/null 2>&1 && break; sleep 0.2; done
  node=$("${g[@]}" status | awk '/^ID/ {getline; print $1; exit}')
  "${g[@]}" layout assign -z dc1 -c 10G "$node" >/dev/null
  "${g[@]}" layout apply --version 1 >/dev/null
  "${g[@]}" bucket create tdfs >/dev/null
  key=$("${g[@]}" key create bench-key)
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION=garage AWS_DEFAULT_REGION=garage
  AWS_ACCESS_KEY_ID=$(awk -F': *' '/Key ID/ {print $2}' <<<"$key")
  AWS_SECRET_ACCESS_KEY=$(awk -F': *' '/Secret key/ {print $2}' <<<"$key")
  "${g[@]}" bucket allow --read --write tdfs --key bench-key >/dev/null
  S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
  for _ in $(seq 100); do
    aws --endpoint-url "$S3_ENDPOINT" s3 ls s3://tdfs >/dev/null 2>&1 && break
    sleep 0.2
  done
  log "garage serves S3 on $S3_ENDPOINT; uploading build $ZSTD_BUILD"
  timeout 1200 aws --endpoint-url "$S3_ENDPOINT" s3 cp --recursive --only-show-errors \
    "$STORE/$ZSTD_BUILD" "s3://tdfs/bench/$ZSTD_BUILD"
}

group_s3() {
  local url="s3://tdfs/bench" object="s3://tdfs/bench/$ZSTD_BUILD/memfile.zstd"
  drop_caches
  # shellcheck disable=SC2016 # $1 and $2 are the inner shell's
  timed s3-seq.aws "$(stat -c %s "$ZSTD_OBJECT")" \
    sh -c 'aws --endpoint-url "$1" s3 cp --only-show-errors "$2" - >/dev/null' sh "$S3_ENDPOINT" "$object"
  mount_tdfs s3-seq "$url" --endpoint-url "$S3_ENDPOINT"
  drop_caches
  timed_cat s3-seq.tdfs "$MNT/$ZSTD_BUILD/memfile"
  umount_tdfs
  mount_tdfs s3-rand "$url" --endpoint-url "$S3_ENDPOINT"
  drop_caches
  fio_rand s3-rand.tdfs "$MNT/$ZSTD_BUILD/memfile" 1
  umount_tdfs
}

# --- VM restore from a cold host (the `restore` group) -------------------------

RESTORE="$WORK/restore"
RESTORE_REC="$RESTORE/rec"

# The memfile packed again with 4 KiB blocks, for the restore rows: traces
# name blocks of the header's block size, and 2 MiB blocks would name
# nearly every block of the file for a working set of scattered pages (E2B
# uses 4 KiB blocks for a memfile without hugepages). Then its trace,
# recorded on a mount while vm_memfile_check runs the access model
# (contrib/vm/access_model.rs); the build packed with the trace in its
# metadata (when `tdfs pack` has --prefetch-memfile); the boot images of
# contrib/vm and the rootfs trace recorded from one boot.
prepare_restore() {
  local stamp out rootfs
  stamp="restore $(cat "$DATA/ready")"
  if [ -f "$RESTORE/ready" ] && [ "$(cat "$RESTORE/ready")" = "$stamp" ]; then
    log "reusing the restore data in $RESTORE"
  else
    rm -rf "$RESTORE"
    mkdir -p "$RESTORE_REC" "$WORK/logs"
    rootfs="$RESTORE/rootfs"
    truncate -s 16M "$rootfs"
    log "tdfs pack --memfile-block-size 4KiB (the restore build)"
    timeout 1200 "$TDFS" pack --store "$STORE" --memfile "$DATA/memfile" --rootfs "$rootfs" \
      --compress zstd --memfile-block-size 4KiB 2>>"$WORK/logs/pack.log" >"$RESTORE/build"
    RESTORE_BUILD=$(cat "$RESTORE/build")
    log "recording the restore trace (vm_memfile_check --model seed=$SEED)"
    mount_tdfs restore-record "$STORE" --prefetch off --record-prefetch "$RESTORE_REC"
    timeout "$READ_TIMEOUT" "$CHECKER" "$MNT/$RESTORE_BUILD/memfile" --model "seed=$SEED" \
      >>"$WORK/logs/restore.log"
    umount_tdfs
    RESTORE_TRACE="$RESTORE_REC/$RESTORE_BUILD/memfile.prefetch.json"
    [ -s "$RESTORE_TRACE" ] || die "no trace recorded at $RESTORE_TRACE (log: $WORK/logs/restore-record.log)"
    if "$TDFS" pack --help | grep -q -- --prefetch-memfile; then
      log "tdfs pack --prefetch-memfile (the restore build, its trace in metadata.json)"
      timeout 1200 "$TDFS" pack --store "$STORE" --memfile "$DATA/memfile" --rootfs "$rootfs" \
        --compress zstd --memfile-block-size 4KiB --prefetch-memfile "$RESTORE_TRACE" \
        2>>"$WORK/logs/pack.log" >"$RESTORE/build.meta"
    fi
    log "building the boot images of contrib/vm"
    out=$(TDFS=$TDFS TDFS_VM_MEMFILE_CHECK=$CHECKER timeout 1200 \
      "$REPO/contrib/vm/boot-from-tdfs.sh" --pack-only "$RESTORE" 2>>"$WORK/logs/restore.log")
    read -r VM_DIR _ VM_BUILD <<<"$out"
    echo "$VM_DIR $VM_BUILD" >"$RESTORE/vm"
    log "recording the rootfs trace of one boot"
    mount_tdfs restore-record-boot "$VM_DIR/store" --prefetch off --record-prefetch "$RESTORE_REC"
    boot_vm "$MNT/$VM_BUILD/rootfs.ext4"
    umount_tdfs
    [ -s "$RESTORE_REC/$VM_BUILD/rootfs.ext4.prefetch.json" ] || die "no rootfs trace recorded"
    echo "$stamp" >"$RESTORE/ready"
  fi
  RESTORE_BUILD=$(cat "$RESTORE/build")
  RESTORE_TRACE="$RESTORE_REC/$RESTORE_BUILD/memfile.prefetch.json"
  read -r VM_DIR VM_BUILD <"$RESTORE/vm"
}

# boot_vm DISK [NAME]: boot contrib/vm's guest (QEMU TCG) from DISK to its
# power-off, as boot-from-tdfs.sh does, and check the guest's marker on the
# console; with NAME, record NAME.load, NAME.secs and NAME.cpu (QEMU's CPU
# seconds).
boot_vm() {
  local disk=$1 name=${2:-record} serial="$WORK/logs/boot.serial" wall cpu kernel
  : >"$serial"
  LOAD=""
  [ $# -gt 1 ] && start_run "$name"
  kernel=$(find /boot -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)
  read -r wall cpu < <(python3 "$HELPER" run "$serial" timeout -k 5 "$READ_TIMEOUT" \
    qemu-system-x86_64 -accel tcg -m 256M -smp 1 \
    -kernel "$kernel" -initrd "/boot/initrd.img-${kernel#/boot/vmlinuz-}" \
    -drive "file=$disk,if=virtio,format=raw,readonly=on" \
    -append "root=/dev/vda ro console=ttyS0 panic=-1" -nographic -no-reboot)
  grep -q "^TDFS-VM-BOOT-MARKER" "$serial" || die "boot $name: no marker on the console ($serial)"
  if [ $# -gt 1 ]; then
    record "$name.secs" "$wall"
    record "$name.cpu" "$cpu"
  fi
  log "  $name: booted in $wall s, QEMU $cpu s CPU${LOAD:+; load $LOAD}"
}

# restore_replay ROW FILE: caches dropped, replay the recorded trace on FILE
# (vm_memfile_check --replay, 4 threads); records ROW.load, ROW.secs,
# ROW.cpu (the replay's) and, on a tdfs mount, ROW.daemon-cpu.
restore_replay() {
  local row=$1 file=$2 wall cpu cpu0="" cpu1
  drop_caches
  start_run "$row"
  [ -n "$TDFS_PID" ] && cpu0=$(python3 "$HELPER" cpu "$TDFS_PID")
  read -r wall cpu < <(python3 "$HELPER" run "$WORK/logs/restore.log" timeout "$READ_TIMEOUT" \
    "$CHECKER" "$file" --replay "$RESTORE_TRACE" --threads 4)
  record "$row.secs" "$wall"
  record "$row.cpu" "$cpu"
  if [ -n "$cpu0" ]; then
    cpu1=$(python3 "$HELPER" cpu "$TDFS_PID")
    record "$row.daemon-cpu" "$(python3 -c "print($cpu1 - $cpu0)")"
  fi
  log "  $row: $wall s, replay $cpu s CPU${cpu0:+, daemon $(python3 -c "print(f'{$cpu1 - $cpu0:.2f}')") s CPU}; load $LOAD"
}

# restore_store_use ROW: the store requests and bytes the last mount made
# (the whole restore: prefetch runs and the replay's misses), as
# ROW.store-requests and ROW.store-bytes.
restore_store_use() {
  local row=$1
  record "$row.store-requests" "$(python3 "$HELPER" stat "$MNT/.stats" tdfs_store_requests_total)"
  record "$row.store-bytes" "$(python3 "$HELPER" stat "$MNT/.stats" tdfs_store_bytes_total)"
}

# The replays in the order bucket off, bucket prefetch, slow off, slow
# prefetch, local file, fast prefetch, fast off: the slow and fast prefetch
# runs next to both of their baselines, the bucket's next to its off one.
group_restore() {
  local step speed mode extra file prefetched=() build
  if [ -f "$RESTORE/build.meta" ]; then
    build=$(cat "$RESTORE/build.meta")
  else
    build=$RESTORE_BUILD
    prefetched=(--prefetch-dir "$RESTORE_REC")
  fi
  for step in bucket.off bucket.prefetch slow.off slow.prefetch local fast.prefetch fast.off; do
    if [ "$step" = local ]; then
      TDFS_PID=""
      restore_replay restore.local "$DATA/memfile"
      continue
    fi
    speed=${step%.*} mode=${step#*.} extra=()
    [ "$speed" = slow ] && extra=(--bench-throttle "$THROTTLE")
    [ "$speed" = bucket ] && extra=(--bench-throttle "$BUCKET_THROTTLE")
    if [ "$mode" = off ]; then
      extra+=(--prefetch off) file=$RESTORE_BUILD
    else
      extra+=("${prefetched[@]}") file=$build
    fi
    mount_tdfs "restore-$speed-$mode" "$STORE" "${extra[@]}"
    restore_replay "restore-$step" "$MNT/$file/memfile"
    restore_store_use "restore-$step"
    umount_tdfs
  done

  mount_tdfs boot-off "$VM_DIR/store" --prefetch off
  drop_caches
  boot_vm "$MNT/$VM_BUILD/rootfs.ext4" boot.off
  umount_tdfs
  mount_tdfs boot-trace "$VM_DIR/store" --prefetch-dir "$RESTORE_REC"
  drop_caches
  boot_vm "$MNT/$VM_BUILD/rootfs.ext4" boot.trace
  umount_tdfs
}

# --- report -------------------------------------------------------------------

describe_machine() {
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) memory, kernel $(uname -r)"
  echo "- disk under $WORK: $(df -h --output=source,fstype,size "$WORK" | tail -1 | tr -s ' ')"
  echo "- tdfs $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?') ($TDFS, built $(date -u -r "$TDFS" '+%H:%M UTC')$BINARY_NOTE)$(want_main && echo "; $(squashfuse --version 2>&1 | head -1); $(mksquashfs -version | head -1); $(fio --version); $(zstd --version)")"
  want_main && echo "- data: ${MEMFILE_MIB} MiB memfile ($(du -m "$DATA/memfile" | cut -f1) MiB not zero, zstd object $(( $(stat -c %s "$ZSTD_OBJECT") >> 20 )) MiB), ${ROOTFS_MIB} MiB ext4 rootfs; squashfs images $(du -m "$DATA/memfile-128K.sqfs" | cut -f1) MiB (128 KiB) and $(du -m "$DATA/memfile-1M.sqfs" | cut -f1) MiB (1 MiB)"
  want many && echo "- many: a ${MANY_MIB} MiB memfile (zstd object $(( $(stat -c %s "$MANY/store/$(cat "$MANY/data/build.base")/memfile.zstd") >> 20 )) MiB) and $LAYER_COUNT layers on it, each rewriting 32 MiB"
  if want restore; then
    local blocks bytes rblocks rbytes source="--prefetch-dir (the recording)"
    read -r blocks bytes < <(python3 "$HELPER" trace "$RESTORE_TRACE")
    read -r rblocks rbytes < <(python3 "$HELPER" trace "$RESTORE_REC/$VM_BUILD/rootfs.ext4.prefetch.json")
    [ -f "$RESTORE/build.meta" ] && source="metadata.json (tdfs pack --prefetch-memfile)"
    echo "- restore: the memfile packed with 4 KiB blocks; its trace, recorded while vm_memfile_check ran the access model (seed $SEED), lists $blocks blocks ($((bytes >> 20)) MiB, $((100 * bytes / (MEMFILE_MIB << 20)))% of the memfile), replayed from 4 threads; prefetch from $source; boot: contrib/vm's guest (QEMU TCG, 1 vCPU), rootfs trace of one boot: $rblocks blocks ($((rbytes >> 10)) KiB), replayed with --prefetch-dir"
  fi
  echo "- pairs: $PAIRS (each row's tdfs and baseline runs alternate, A B A B ...; medians over the pairs); load bound: $LOAD_MAX (1-minute load average at the start of each run; $(nproc) cores), waiting up to ${LOAD_WAIT} s before each cold run for it"
  echo "- fio: random 4 KiB reads, 4 jobs, psync, ${FIO_SECS} s; slow store: $THROTTLE per request (restore's bucket-like store: $BUCKET_THROTTLE); after dropping caches: ${SETTLE} s settle"
}

main() {
  check_tools
  mkdir -p "$WORK"
  local load_start
  load_start=$(cut -d' ' -f1-3 /proc/loadavg)
  : >"$RESULTS"
  if want_main; then
    prepare
    verify_mounts
  fi
  if want s3; then start_garage; fi
  if want many; then prepare_many; fi
  if want restore; then prepare_restore; fi
  for PAIR in $(seq "$PAIRS"); do
    log "pair $PAIR of $PAIRS (load $(cut -d' ' -f1-3 /proc/loadavg))"
    if want seq; then group_seq; fi
    if want rand; then group_rand; fi
    if want slow; then group_slow; fi
    if want many; then group_many; fi
    if want s3; then group_s3; fi
    if want peers; then group_peers; fi
    if want restore; then group_restore; fi
  done
  local report="$WORK/report.md"
  {
    describe_machine
    echo "- load average (1, 5, 15 min) at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    python3 "$HELPER" table "$RESULTS" "$LOAD_MAX"
  } >"$report"
  cat "$report"
  if [ -n "$OUT" ]; then cp "$report" "$OUT"; fi
}

main
