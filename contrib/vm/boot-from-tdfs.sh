#!/usr/bin/env bash
# Boot a real VM from a tdfs mount, end to end:
#   1. build a 64 MiB ext4 root disk whose /sbin/init (a busybox-static
#      script) prints a marker and the SHA-256 of a known file, then powers off;
#      and a 128 MiB memory image with realistic pages (zero, repeated, random);
#   2. pack them with `tdfs pack` as a base build plus a layer that changes the
#      known file and some memory, zstd-compressed, into a local store; mount it;
#   3. boot QEMU (TCG) from the same root disk on local disk, then from the
#      layer's rootfs.ext4 on the mount; check marker and checksum on the serial
#      console within a time bound, and that .stats shows lazy reads;
#   4. map the layer's memfile as Firecracker maps snapshot memory and compare
#      every page with the flattened reference (vm_memfile_check).
# Prints both boot times. Exit 0 on success. The trap stops QEMU and tdfs and
# unmounts whatever happens; the work directory is removed unless --keep.
#
# Usage: contrib/vm/boot-from-tdfs.sh [--keep] [--pack-only] [WORKDIR]
#   WORKDIR      where the scratch directory is made (default: $TMPDIR or /tmp)
#   --pack-only  stop after step 2's packing, keep the scratch directory and
#                print "SCRATCH_DIR BASE_ID LAYER_ID" on stdout (the restore
#                benchmark boots from these images itself)
# Environment (all optional):
#   TDFS                      tdfs binary (default: built with cargo --release)
#   TDFS_VM_MEMFILE_CHECK     vm_memfile_check binary (default: built likewise)
#   TDFS_VM_KERNEL, TDFS_VM_INITRD   guest kernel and initrd (default: newest
#                             /boot/vmlinuz-* and its /boot/initrd.img-*)
#   TDFS_VM_BOOT_TIMEOUT      seconds one boot may take (default 240)
# Needs root (FUSE mount) and: apt-get install -y qemu-system-x86
#   linux-image-amd64 busybox-static fuse3 e2fsprogs python3
set -euo pipefail

readonly MARKER="TDFS-VM-BOOT-MARKER"
readonly CHECKSUM_TAG="TDFS-VM-CHECKSUM"
readonly KNOWN_FILE="etc/tdfs-known-file"
readonly ROOTFS_SIZE_MIB=64
readonly MEMFILE_SIZE_MIB=128
# Random data on the root disk the guest never reads: a mount that read
# eagerly would cache more than half the disk, a lazy one stays well below.
readonly UNREAD_PAYLOAD_MIB=40
readonly APT_LINE="apt-get install -y qemu-system-x86 linux-image-amd64 busybox-static fuse3 e2fsprogs python3"

keep=0
pack_only=0
parent=${TMPDIR:-/tmp}
for arg in "$@"; do
  case $arg in
    --keep) keep=1 ;;
    --pack-only) pack_only=1 keep=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $arg (usage: $0 [--keep] [--pack-only] [WORKDIR])" >&2; exit 2 ;;
    *) parent=$arg ;;
  esac
done

say() { printf '[boot-from-tdfs] %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
now() { date +%s.%N; }
seconds_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- prerequisites --------------------------------------------------------
missing=()
for tool in qemu-system-x86_64 mkfs.ext4 python3 sha256sum mountpoint timeout; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
((${#missing[@]} == 0)) || die "missing ${missing[*]}; install with: $APT_LINE"
[[ -e /dev/fuse ]] || die "/dev/fuse is missing (modprobe fuse; in a container, pass the device)"
busybox=/bin/busybox
if [[ ! -x $busybox ]] || ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is missing or not static; install with: apt-get install -y busybox-static"
fi
kernel=${TDFS_VM_KERNEL:-$(find /boot -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)}
[[ -n $kernel && -r $kernel ]] || die "no guest kernel in /boot; install with: $APT_LINE"
initrd=${TDFS_VM_INITRD:-/boot/initrd.img-${kernel#/boot/vmlinuz-}}
[[ -r $initrd ]] || die "no initrd $initrd for $kernel (update-initramfs -c -k ${kernel#/boot/vmlinuz-})"
boot_timeout=${TDFS_VM_BOOT_TIMEOUT:-240}

repo=$(cd "$(dirname "$0")/../.." && pwd)
if [[ -z ${TDFS:-} || -z ${TDFS_VM_MEMFILE_CHECK:-} ]]; then
  say "building tdfs and vm_memfile_check (cargo build --release)"
  (cd "$repo" && cargo build --release --quiet --bin tdfs --example vm_memfile_check)
fi
tdfs=${TDFS:-$repo/target/release/tdfs}
memfile_check=${TDFS_VM_MEMFILE_CHECK:-$repo/target/release/examples/vm_memfile_check}
[[ -x $tdfs ]] || die "tdfs binary $tdfs is not executable"
[[ -x $memfile_check ]] || die "vm_memfile_check binary $memfile_check is not executable"

# --- scratch space and cleanup --------------------------------------------
mkdir -p "$parent"
work=$(mktemp -d "$parent/tdfs-vm-boot.XXXXXX")
mnt=$work/mnt
qemu_pid=
tdfs_pid=

stop_pid() { # pid: TERM, up to 5 s grace, then KILL
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [[ -n $qemu_pid ]] && stop_pid "$qemu_pid"
  # tdfs unmounts on SIGTERM; a lazy unmount covers a daemon that cannot.
  [[ -n $tdfs_pid ]] && stop_pid "$tdfs_pid"
  if mountpoint -q "$mnt" 2>/dev/null; then
    umount -l "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null
  fi
  if ((rc != 0)) && [[ -f $work/tdfs.log ]]; then
    say "tdfs log (last lines):"
    tail -n 20 "$work/tdfs.log" >&2
  fi
  if mountpoint -q "$mnt" 2>/dev/null; then
    say "$mnt is still mounted; leaving $work in place"
  elif ((keep)); then
    say "kept $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. images --------------------------------------------------------------
say "building the root disks and memory images in $work"
mkdir -p "$work/tree" "$work/images"
tree=$work/tree
mkdir -p "$tree"/{bin,sbin,etc,dev,proc,sys,run,tmp,data}
cp "$busybox" "$tree/bin/busybox"
ln -s busybox "$tree/bin/sh"
cat >"$tree/sbin/init" <<EOF
#!/bin/sh
# PID 1 of the test guest: prove the root disk was read, then power off.
echo "$MARKER"
sum=\$(/bin/busybox sha256sum /$KNOWN_FILE)
echo "$CHECKSUM_TAG \${sum%% *}"
/bin/busybox sync
/bin/busybox poweroff -f
EOF
chmod 0755 "$tree/sbin/init"
head -c "$((UNREAD_PAYLOAD_MIB << 20))" /dev/urandom >"$tree/data/unread-payload"

# Same UUID, hash seed and clock for both disks, so the layer differs from
# the base only where the known file does, as a real template layer would.
make_rootfs() { # output, known file contents
  printf '%s\n' "$2" >"$tree/$KNOWN_FILE"
  E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -t ext4 -b 4096 -I 256 -L tdfs-vm \
    -U 6f1c1b9e-7d1a-4c55-9d3e-0c2b7f0e5a11 \
    -E hash_seed=2d0f8c4e-9a4b-4e1e-8f6a-3b5c7d9e1f20,root_owner=0:0 \
    -d "$tree" "$1" "${ROOTFS_SIZE_MIB}M" >/dev/null
}
make_rootfs "$work/images/base.ext4" "tdfs base build: version 1"
make_rootfs "$work/images/layer.ext4" "tdfs layer build: version 2, changed by the layer"
base_sum=$(printf '%s\n' "tdfs base build: version 1" | sha256sum | cut -d' ' -f1)
layer_sum=$(sha256sum <"$tree/$KNOWN_FILE" | cut -d' ' -f1)
[[ $base_sum != "$layer_sum" ]] || die "the layer did not change the known file"

# Memory: per 2 MiB region a mix of the page kinds a guest's RAM holds
# (zero, byte-repeated, random); the layer rewrites every 7th region and
# zeroes every 11th, as a resumed and re-snapshotted VM would.
python3 - "$work/images/base.mem" "$work/images/layer.mem" "$MEMFILE_SIZE_MIB" <<'EOF'
import random, sys
base_path, layer_path, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
PAGE, REGION = 4096, 2 << 20
rng = random.Random(20240611)
def page(kind, n):
    if kind == 0: return bytes(PAGE)
    if kind == 1: return bytes([n % 251 + 1]) * PAGE
    return rng.randbytes(PAGE)
regions = mib * (1 << 20) // REGION
with open(base_path, "wb") as base, open(layer_path, "wb") as layer:
    for r in range(regions):
        pages = REGION // PAGE
        kinds = [rng.choice((0, 0, 0, 1, 2)) for _ in range(pages)]
        data = b"".join(page(k, r * pages + i) for i, k in enumerate(kinds))
        base.write(data)
        if r % 11 == 5:
            data = bytes(REGION)
        elif r % 7 == 3:
            data = b"".join(page(2, 0) if i % 3 else data[i * PAGE:(i + 1) * PAGE]
                            for i in range(pages))
        layer.write(data)
EOF

# --- 2. pack and mount ------------------------------------------------------
store=$work/store
say "packing a base build and a layer (zstd) into $store"
base_id=$("$tdfs" pack --store "$store" --compress zstd \
  --memfile "$work/images/base.mem" --rootfs "$work/images/base.ext4" 2>"$work/pack-base.log") ||
  { cat "$work/pack-base.log" >&2; die "tdfs pack (base)"; }
layer_id=$("$tdfs" pack --store "$store" --compress zstd --base "$base_id" \
  --memfile "$work/images/layer.mem" --rootfs "$work/images/layer.ext4" 2>"$work/pack-layer.log") ||
  { cat "$work/pack-layer.log" >&2; die "tdfs pack (layer)"; }
say "base build $base_id, layer $layer_id"
sed 's/^/    /' "$work/pack-layer.log" >&2
if ((pack_only)); then
  echo "$work $base_id $layer_id"
  exit 0
fi

# The flattened reference comes from the store through tdfs export, not from
# the mount; it must equal the image that was packed.
"$tdfs" export --store "$store" "$layer_id" memfile -o "$work/images/layer.mem.export" 2>/dev/null ||
  die "tdfs export of the layer's memfile"
cmp "$work/images/layer.mem" "$work/images/layer.mem.export" || die "exported memfile differs from the packed image"

mkdir -p "$mnt"
"$tdfs" mount "$store" "$mnt" --foreground --cache-dir "$work/cache" >"$work/tdfs.log" 2>&1 &
tdfs_pid=$!
for _ in $(seq 300); do
  mountpoint -q "$mnt" && [[ -e $mnt/.stats ]] && break
  kill -0 "$tdfs_pid" 2>/dev/null || die "tdfs mount exited before mounting"
  sleep 0.1
done
mountpoint -q "$mnt" || die "tdfs mount did not come up within 30 s"
rootfs=$mnt/$layer_id/rootfs.ext4
[[ -f $rootfs ]] || die "$rootfs is not on the mount"
say "mounted $store on $mnt (tdfs pid $tdfs_pid)"

# --- 3. boot ----------------------------------------------------------------
stat_value() { # metric name -> its value in .stats
  awk -v name="$1" '$1 == name { print $2; found = 1 } END { if (!found) print 0 }' "$mnt/.stats"
}

boot() { # label, disk image; sets boot_seconds
  local label=$1 disk=$2 serial=$work/serial-$1.log started rc=0
  say "booting $label from $disk"
  started=$(now)
  # --foreground keeps QEMU in this script's process group, so whoever stops
  # the group stops the VM too.
  timeout --foreground -k 5 "$boot_timeout" qemu-system-x86_64 -accel tcg -m 256M -smp 1 \
    -kernel "$kernel" -initrd "$initrd" \
    -drive "file=$disk,if=virtio,format=raw,readonly=on" \
    -append "root=/dev/vda ro console=ttyS0 panic=-1" \
    -nographic -no-reboot </dev/null >"$serial" 2>&1 &
  qemu_pid=$!
  wait "$qemu_pid" || rc=$?
  qemu_pid=
  boot_seconds=$(seconds_since "$started")
  if ((rc == 124 || rc == 137)); then
    tail -n 15 "$serial" >&2
    die "$label: the VM did not power off within $boot_timeout s"
  fi
  ((rc == 0)) || { tail -n 15 "$serial" >&2; die "$label: qemu exited with $rc"; }
  grep -q "^$MARKER" "$serial" || { tail -n 15 "$serial" >&2; die "$label: no marker on the serial console"; }
  local seen
  seen=$(tr -d '\r' <"$serial" | awk -v tag="$CHECKSUM_TAG" '$1 == tag { print $2 }')
  [[ $seen == "$layer_sum" ]] ||
    die "$label: the guest saw known-file checksum '${seen:-none}', expected the layer's $layer_sum (base: $base_sum)"
  say "$label: marker and the layer's checksum seen; powered off after $boot_seconds s"
}

# Local disk first: it also warms the host's cache of QEMU, kernel and initrd,
# so the mount's boot pays only for tdfs.
"$tdfs" export --store "$store" "$layer_id" rootfs.ext4 -o "$work/images/layer.ext4.export" 2>/dev/null ||
  die "tdfs export of the layer's rootfs"
cmp "$work/images/layer.ext4" "$work/images/layer.ext4.export" || die "exported rootfs differs from the packed image"
boot local-disk "$work/images/layer.ext4.export"
local_seconds=$boot_seconds

cached_before=$(stat_value tdfs_cache_written_bytes_total)
store_before=$(stat_value tdfs_store_bytes_total)
boot tdfs-mount "$rootfs"
mount_seconds=$boot_seconds
cached=$(($(stat_value tdfs_cache_written_bytes_total) - cached_before))
fetched=$(($(stat_value tdfs_store_bytes_total) - store_before))
rootfs_size=$(stat -c %s "$rootfs")
say "the boot read $((cached >> 10)) KiB of the $((rootfs_size >> 20)) MiB rootfs into the cache ($((fetched >> 10)) KiB fetched from the store)"
((cached > 0 && fetched > 0)) || die ".stats shows no reads: the VM did not read through tdfs"
((cached * 2 < rootfs_size)) ||
  die "reads were not lazy: $cached bytes cached for a $rootfs_size-byte rootfs (want under half)"

# --- 4. memory as a VMM maps it ---------------------------------------------
"$memfile_check" "$mnt/$layer_id/memfile" "$work/images/layer.mem.export" --threads 4 >&2 ||
  die "the memfile mapped from the mount does not match the reference"

printf 'boot time (QEMU TCG, to power-off): local disk %s s, tdfs mount %s s (cold cache)\n' \
  "$local_seconds" "$mount_seconds"
say "OK"
