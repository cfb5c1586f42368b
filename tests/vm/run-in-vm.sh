#!/bin/bash
# tests/vm/run-in-vm.sh CMD [ARGS...]      (run it from the project root)
#
# Run CMD as root inside a throw-away QEMU VM that boots this machine's Debian
# kernel on a pure cgroup v2 hierarchy. Why: the host has hybrid cgroups
# (v1 cpu/memory/pids), so minidock's cgroup v2 code can't be tested on it.
#
# Inside the VM:
#   /                 the host's / (read-only, over 9p) under a tmpfs overlay:
#                     writable, and every change is discarded at the end
#   $PWD              the current directory, shared READ-WRITE at the same path
#   /sys/fs/cgroup    cgroup2, every controller enabled in cgroup.subtree_control
#   /tmp, /run        fresh tmpfs
# CMD gets the host's PATH (so the host's python3) and HOME, plus the
# variables listed in PASS_ENV below, stdin /dev/null, stdout+stderr merged
# and streamed to our stdout. We exit with CMD's exit status, 124 if the VM
# timed out, 125 if it died without reporting one. The guest side of all this
# is init.sh, next to this file.
#
# Settings (environment):
#   VM_MEM=2G  VM_CPUS=1  VM_TIMEOUT=3000 (seconds, 0 = none)
#   VM_DEBUG=1            show the kernel log and the qemu command
#   VM_ENV="NAME ..."     more host variables to pass in
#   VM_ACCEL=auto|tcg|kvm (kvm is untested: this host has none usable)
#
# Needs: apt-get install qemu-system-x86 linux-image-amd64 busybox-static
set -euo pipefail

die() { echo "run-in-vm: $*" >&2; exit 125; }
[ $# -ge 1 ] || die "usage: tests/vm/run-in-vm.sh CMD [ARGS...]"

HERE=$(cd "$(dirname "$0")" && pwd)
MEM=${VM_MEM:-2G}
CPUS=${VM_CPUS:-1}          # 1 is faster here than 2 under TCG (see README)
TIMEOUT=${VM_TIMEOUT:-3000}
DEBUG=${VM_DEBUG:-0}
CWD=$(pwd -P)
[ "$CWD" != / ] || die "run it from the project directory, not /"
command -v qemu-system-x86_64 > /dev/null || die "qemu-system-x86_64 missing (apt-get install qemu-system-x86)"
[ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static)"

# ------------------------------------------------------------------ kernel
# The newest installed Debian kernel and its modules.
KERNEL=$(ls -1v /boot/vmlinuz-* 2> /dev/null | tail -n1) || true
[ -n "$KERNEL" ] || die "no /boot/vmlinuz-* (apt-get install linux-image-amd64)"
KVER=${KERNEL#/boot/vmlinuz-}
[ -d "/lib/modules/$KVER" ] || die "/lib/modules/$KVER missing"
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/minidock-vm/$KVER
mkdir -p "$CACHE"

# vmlinuz is a compressed kernel that decompresses itself at boot, which
# takes ~5 s under emulation. Extract the plain ELF vmlinux inside it once
# (find the xz/gzip stream that decompresses to an ELF file) and boot that
# through QEMU's PVH entry point (Debian kernels have CONFIG_PVH=y).
BOOT=$CACHE/vmlinux
if [ ! -s "$BOOT" ]; then
    python3 - "$KERNEL" "$BOOT.tmp$$" << 'EOF' && mv "$BOOT.tmp$$" "$BOOT" || rm -f "$BOOT.tmp$$"
import lzma, sys, zlib
data = open(sys.argv[1], "rb").read()
for magic, unpack in ((b"\xfd7zXZ\x00", lambda b: lzma.LZMADecompressor().decompress(b)),
                      (b"\x1f\x8b\x08", lambda b: zlib.decompressobj(31).decompress(b))):
    at = data.find(magic)
    while at >= 0:
        try:
            elf = unpack(data[at:])
            if elf.startswith(b"\x7fELF"):
                open(sys.argv[2], "wb").write(elf)
                sys.exit(0)
        except (lzma.LZMAError, zlib.error):
            pass
        at = data.find(magic, at + 1)
sys.exit(1)
EOF
fi
[ -s "$BOOT" ] || BOOT=$KERNEL     # extraction failed: boot the slow way

# --------------------------------------------------------------- initramfs
# A tiny initramfs: static busybox, the modules needed to reach the 9p
# shares and build the overlay root, and init.sh as /init. Cached per kernel
# and per content of init.sh + module list, so editing either rebuilds it
# (outdated ones stay behind, 3 MB each: rm -r ~/.cache/minidock-vm to clean).
MODULES="virtio_pci 9pnet_virtio 9p overlay"
KEY=$( { cat "$HERE/init.sh"; echo "$MODULES"; } | sha256sum | cut -c1-16)
INITRD=$CACHE/initramfs-$KEY.cpio
if [ ! -s "$INITRD" ]; then
    stage=$(mktemp -d)
    mkdir -p "$stage"/{bin,modules,proc,sys,dev}
    cp /bin/busybox "$stage/bin/busybox"
    cp "$HERE/init.sh" "$stage/init"
    chmod 755 "$stage/init"
    # modprobe (from kmod, a dependency of linux-image-*) lists each module
    # with its dependencies, dependencies first: that is our insmod order.
    /sbin/modprobe -S "$KVER" --show-depends -a $MODULES | awk '$1 == "insmod" { print $2 }' |
        awk '!seen[$0]++' | while read -r ko; do
            name=$(basename "$ko"); name=${name%%.ko*}
            case $ko in      # Debian 12 ships plain .ko; newer releases compress them
                *.xz) xz -dc "$ko" ;; *.zst) zstd -qdc "$ko" ;; *) cat "$ko" ;;
            esac > "$stage/modules/$name.ko"
            echo "$name" >> "$stage/modules/order"
        done
    [ -s "$stage/modules/order" ] || die "no modules found for $KVER"
    # Uncompressed on purpose: decompressing is slow under emulation.
    (cd "$stage" && find . | LC_ALL=C sort | busybox cpio -o -H newc 2> /dev/null) > "$INITRD.tmp$$"
    rm -rf "$stage"
    mv "$INITRD.tmp$$" "$INITRD"
fi

# ------------------------------------------------------------ control dir
# A temp dir shared with the guest: we write cwd and cmd.bash, it writes rc.
CTL=$(mktemp -d "${TMPDIR:-/tmp}/minidock-vm.XXXXXX")
QPID=
cleanup() {
    if [ -n "$QPID" ]; then kill "$QPID" 2> /dev/null || true; wait "$QPID" 2> /dev/null || true; fi
    rm -rf "$CTL"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

printf '%s' "$CWD" > "$CTL/cwd"

# cmd.bash: the environment to pass in, then cd and exec CMD. %q quotes for bash.
PASS_ENV="PATH HOME USER LOGNAME LANG LC_ALL TZ TERM NO_COLOR CI
          PYTHONPATH VIRTUAL_ENV PYTHONDONTWRITEBYTECODE PYTHONUNBUFFERED PYTHONHASHSEED
          PYTEST_ADDOPTS PYTEST_DISABLE_PLUGIN_AUTOLOAD PYTEST_PLUGINS"
{
    for name in $PASS_ENV $(compgen -e | grep '^MINIDOCK_' || true) ${VM_ENV:-}; do
        [ -n "${!name+set}" ] && printf 'export %s=%q\n' "$name" "${!name}"
    done
    # A pyenv "python3" is a bash shim that forks a dozen processes per start:
    # ~3 s each time under emulation. Put the directory of the interpreter it
    # resolves to first in PATH: same python3, without the shim.
    if shim=$(command -v python3) && real=$(python3 -c 'import sys; print(sys.executable)') &&
        [ -n "$real" ] && [ "$(dirname "$shim")" != "$(dirname "$real")" ]; then
        printf 'export PATH=%q:"$PATH"\n' "$(dirname "$real")"
    fi
    printf 'cd %q || exit 125\n' "$CWD"
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} > "$CTL/cmd.bash"

# -------------------------------------------------------------------- qemu
# Accelerator: KVM where the host has a real one, else TCG (pure emulation).
# kvm_pvm is a software "nested" KVM found in some sandboxes (this host);
# it runs a stock kernel far slower than TCG, so it doesn't count.
ACCEL=${VM_ACCEL:-auto}
if [ "$ACCEL" = auto ]; then
    ACCEL=tcg
    if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then ACCEL=kvm; fi
fi
case $ACCEL in
    kvm) ACCEL_OPTS=(-accel kvm -cpu host) ;;
    tcg) ACCEL_OPTS=(-accel tcg -cpu Nehalem) ;;   # a plain x86-64-v2 CPU model emulates faster than "max"
    *) die "VM_ACCEL must be auto, tcg or kvm" ;;
esac

# Kernel command line: console on the serial port; on panic reboot at once
# (and -no-reboot turns a reboot into QEMU exiting); init from the initramfs.
# The rest skips work that is slow or pointless under emulation:
#   norandmaps      no ASLR: emulated code translations get reused across
#                   processes, which makes fork+exec several times faster
#   mitigations=off no CPU bug workarounds (speed; this VM runs only tests)
#   tsc=reliable no_timer_check   skip clock checks that emulation fails/slows
#   i8042.*, 8250.nr_uarts=1      don't probe PS/2 and unused serial ports
APPEND="console=ttyS0 panic=-1 rdinit=/init norandmaps mitigations=off tsc=reliable no_timer_check"
APPEND+=" cryptomgr.notests i8042.noaux i8042.nokbd 8250.nr_uarts=1"
if [ "$DEBUG" = 1 ]; then APPEND+=" loglevel=7"; else APPEND+=" quiet loglevel=0"; fi

# -M pc: the "microvm" machine boots ~1 s faster, but under TCG it hung in
# about half of the boots tried (TSC calibration, no HPET/ACPI PM timer).
# 9p shares (security_model=none: files keep the host's owners, and files
# the guest creates belong to whoever runs QEMU). multidevs=remap keeps inode
# numbers unique when a share spans several host filesystems.
QEMU_ARGS=(
    -M pc -nodefaults -no-user-config -no-reboot
    "${ACCEL_OPTS[@]}" -m "$MEM" -smp "$CPUS"
    -display none -serial stdio
    -kernel "$BOOT" -initrd "$INITRD" -append "$APPEND"
    -fsdev local,id=root,path=/,readonly=on,security_model=none,multidevs=remap
    -device virtio-9p-pci,fsdev=root,mount_tag=hostroot
    -fsdev local,id=ctl,path="$CTL",security_model=none
    -device virtio-9p-pci,fsdev=ctl,mount_tag=vmctl
    -fsdev local,id=cwd,path="$CWD",security_model=none,multidevs=remap
    -device virtio-9p-pci,fsdev=cwd,mount_tag=vmcwd
)
[ "$DEBUG" = 1 ] && echo "run-in-vm: qemu-system-x86_64 ${QEMU_ARGS[*]}" >&2

# Run QEMU in the background and wait for it: bash runs traps only between
# commands, so this way an INT/TERM sent to us kills QEMU at once (cleanup)
# instead of after it finishes. timeout(1) kills a hung VM; --foreground stops
# it from moving QEMU into a process group of its own, which a terminal would
# treat as a background job (and stop when it writes, if "stty tostop" is set).
timeout --foreground -k 10 "$TIMEOUT" qemu-system-x86_64 "${QEMU_ARGS[@]}" < /dev/null &
QPID=$!
qrc=0
wait "$QPID" || qrc=$?
QPID=

if [ -s "$CTL/rc" ]; then exit "$(cat "$CTL/rc")"; fi
[ "$qrc" = 124 ] && { echo "run-in-vm: timed out after ${TIMEOUT}s" >&2; exit 124; }
die "the VM stopped without an exit status (qemu: $qrc); try VM_DEBUG=1"
