#!/usr/bin/env bash
# The package test (issue 17): build the Debian package, install it, check
# `man tdfs` and `man tdfs-mount`, pack a small store with the installed
# tdfs, mount it through an /etc/fstab line and through the tdfs@ unit
# (systemctl when systemd is PID 1, else the unit's ExecStart line run by
# hand), read a file and compare its SHA-256 with the packed image, stop,
# purge the package and check that nothing is left. Run as root on a
# Debian machine with fuse3, man-db and cargo-deb; every step is bounded
# and the trap undoes whatever a failure left.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive

say() { printf 'test-package: %s\n' "$*"; }
die() {
  say "FAILED: $*" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (it installs a package and mounts)"
for tool in man mount umount systemd-escape sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (apt-get install man-db mount systemd)"
done

work=$(mktemp -d /tmp/tdfs-package-test.XXXXXX)
mnt_fstab="$work/mnt-fstab"
mnt_unit="$work/mnt-unit"
instance=$(systemd-escape --path "$mnt_unit")
conf="/etc/tdfs/$instance.conf"
marker="# tdfs-package-test $work"
unit_pid=
installed=no
systemd=no
[ "$(ps -p 1 -o comm=)" = systemd ] && systemd=yes

remove_fstab_line() {
  if [ -f /etc/fstab ] && grep -qF "$marker" /etc/fstab; then
    # Rewrite in place, keeping the file's inode, owner and mode.
    grep -vF "$marker" /etc/fstab >"$work/fstab" || true
    cat "$work/fstab" >/etc/fstab
  fi
}

cleanup() {
  local status=$?
  set +e
  if [ "$systemd" = yes ]; then
    timeout 60 systemctl stop "tdfs@$instance.service" 2>/dev/null
  fi
  if [ -n "$unit_pid" ] && kill -0 "$unit_pid" 2>/dev/null; then
    kill -TERM "$unit_pid"
    timeout 20 tail --pid="$unit_pid" -f /dev/null
  fi
  for m in "$mnt_fstab" "$mnt_unit"; do
    mountpoint -q "$m" 2>/dev/null && timeout 20 umount -l "$m"
  done
  remove_fstab_line
  rm -f "$conf"
  rmdir /etc/tdfs 2>/dev/null
  if [ "$installed" = yes ] && dpkg -s tdfs >/dev/null 2>&1; then
    timeout 300 apt-get purge -y -qq tdfs >/dev/null
  fi
  rm -rf "$work"
  [ "$status" = 0 ] && say "passed" || say "failed (exit $status)"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "build the package"
timeout 3600 bash contrib/deb/build.sh
deb=$(ls -1t "${CARGO_TARGET_DIR:-target}"/debian/tdfs_*.deb | head -n 1)

say "install $deb"
dpkg -s tdfs >/dev/null 2>&1 && die "tdfs is installed already: purge it first (apt-get purge tdfs)"
installed=yes
timeout 600 apt-get install -y -qq "./$deb" >/dev/null
tdfs=/usr/bin/tdfs
[ -x "$tdfs" ] || die "$tdfs missing after install"
[ -x /sbin/mount.tdfs ] || die "/sbin/mount.tdfs missing after install"
[ -f /lib/systemd/system/tdfs@.service ] || die "tdfs@.service missing after install"
for page in tdfs tdfs-mount; do
  timeout 30 man -w "$page" >/dev/null || die "man -w $page finds no page"
done

say "pack a small store with the installed tdfs"
mkdir -p "$work/images" "$mnt_fstab" "$mnt_unit"
head -c $((6 << 20)) /dev/urandom >"$work/images/memfile"
truncate -s $((10 << 20)) "$work/images/memfile" # a zero tail, stored nowhere
head -c $((4 << 20)) /dev/urandom >"$work/images/rootfs"
build=$(cat /proc/sys/kernel/random/uuid)
timeout 300 "$tdfs" pack --store "$work/store" --build-id "$build" \
  --memfile "$work/images/memfile" --rootfs "$work/images/rootfs" >/dev/null
want=$(sha256sum <"$work/images/memfile" | cut -d' ' -f1)

check_read() { # MOUNTPOINT HOW
  local got
  got=$(timeout 120 sha256sum <"$1/$build/memfile" | cut -d' ' -f1) ||
    die "$2: reading $1/$build/memfile failed"
  [ "$got" = "$want" ] || die "$2: memfile reads $got, packed $want"
  say "$2: memfile reads right"
}

say "mount through an /etc/fstab line"
touch /etc/fstab
echo "$work/store $mnt_fstab tdfs ro,noauto,cache_dir=$work/cache-fstab 0 0 $marker" >>/etc/fstab
timeout 60 mount "$mnt_fstab" || die "mount $mnt_fstab (through /etc/fstab and mount.tdfs) failed"
check_read "$mnt_fstab" "fstab"
timeout 30 umount "$mnt_fstab" || die "umount $mnt_fstab failed"
remove_fstab_line

say "mount through the tdfs@ unit (systemd is PID 1: $systemd)"
mkdir -p /etc/tdfs
# Quoted values: both systemd and the shell below read the file.
printf 'TDFS_STORE="%s"\nTDFS_OPTIONS="--threads 4"\n' "$work/store" >"$conf"
if [ "$systemd" = yes ]; then
  # Type=notify: start returns once tdfs sent READY=1, i.e. the mount answers.
  timeout 150 systemctl start "tdfs@$instance.service" || {
    journalctl -u "tdfs@$instance.service" --no-pager | tail -n 20
    die "systemctl start tdfs@$instance failed"
  }
  check_read "$mnt_unit" "tdfs@$instance (systemctl)"
  timeout 60 systemctl stop "tdfs@$instance.service"
else
  # Run the installed unit's ExecStart as systemd would: specifiers %f and
  # %i, the environment file, $VAR split into words.
  exec_start=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/tdfs@.service)
  [ -n "$exec_start" ] || die "no ExecStart line in the installed unit"
  exec_start=${exec_start//%f/$mnt_unit}
  exec_start=${exec_start//%i/$instance}
  say "ExecStart: $exec_start"
  (
    set -a
    . "$conf"
    set +a
    eval "exec $exec_start"
  ) >"$work/unit.log" 2>&1 &
  unit_pid=$!
  for _ in $(seq 150); do
    grep -qF "$mnt_unit" /proc/self/mountinfo && break
    kill -0 "$unit_pid" 2>/dev/null || { cat "$work/unit.log"; die "ExecStart exited before mounting"; }
    sleep 0.2
  done
  grep -qF "$mnt_unit" /proc/self/mountinfo || { cat "$work/unit.log"; die "ExecStart did not mount within 30 s"; }
  check_read "$mnt_unit" "tdfs@ ExecStart by hand"
  kill -TERM "$unit_pid"
  timeout 20 tail --pid="$unit_pid" -f /dev/null || die "tdfs did not exit within 20 s of SIGTERM"
  wait "$unit_pid" || die "tdfs exited with $? on SIGTERM"
  unit_pid=
fi
grep -qF "$mnt_unit" /proc/self/mountinfo && die "$mnt_unit still mounted after stop"
rm -f "$conf"
rmdir /etc/tdfs 2>/dev/null || true

say "purge the package"
timeout 300 apt-get purge -y -qq tdfs >/dev/null
dpkg -s tdfs >/dev/null 2>&1 && die "dpkg still lists tdfs after purge"
[ -z "$(dpkg -L tdfs 2>/dev/null)" ] || die "dpkg -L tdfs still lists files"
for path in /usr/bin/tdfs /sbin/mount.tdfs /lib/systemd/system/tdfs@.service \
  /usr/share/man/man1/tdfs.1.gz /usr/share/man/man1/tdfs-mount.1.gz \
  /usr/share/bash-completion/completions/tdfs /usr/share/zsh/vendor-completions/_tdfs \
  /usr/share/fish/vendor_completions.d/tdfs.fish /usr/share/doc/tdfs /var/cache/tdfs; do
  [ -e "$path" ] && die "$path is left after purge"
done
grep -qF "$marker" /etc/fstab && die "the test's fstab line is left"
# Only this test's mounts and processes: other tdfs mounts may be running.
grep -F "$work" /proc/self/mountinfo && die "a mount of this test is left"
pgrep -f "$work" >/dev/null && die "a process of this test is left: $(pgrep -a -f "$work")"
exit 0
