#!/bin/busybox sh
# Guest-side init for tests/vm/run-in-vm.sh. Runs INSIDE the VM, in two stages:
#
#   stage 1  /init in the initramfs (PID 1, the kernel starts it with no args).
#            Loads the 9p/overlay modules, builds the real root filesystem
#            (host / over 9p, read-only, with a tmpfs overlay on top) and
#            switch_root's into it.
#   stage 2  PID 1 again, now on that root (started as "init stage2").
#            Mounts the kernel filesystems and pure cgroup v2, shares the
#            project dir, runs the command, reports its exit status, powers off.
#
# Every tool used here is a busybox applet (static busybox: it needs no
# libraries, so it works before the host's / is mounted). The runner hashes this file into
# the initramfs cache key, so editing it rebuilds the initramfs.

P9=trans=virtio,version=9p2000.L,msize=512000   # msize: bigger 9p messages = fewer round trips

fail() {
    echo "minidock-vm init: $*" > /dev/console
    sleep 1
    reboot -f        # -no-reboot makes QEMU exit; the runner then reports 125
}

if [ "$1" != stage2 ]; then
    # ---------------------------------------------------------------- stage 1
    /bin/busybox mount -t proc proc /proc   # first: --install reads /proc/self/exe
    /bin/busybox --install -s /bin
    export PATH=/bin
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev

    # virtio, 9p and overlayfs are modules in Debian's kernel. The runner
    # copied them here, listed in dependency order in /modules/order.
    for m in $(cat /modules/order); do
        insmod "/modules/$m.ko" || fail "insmod $m"
    done

    # The root filesystem: the host's / (9p tag "hostroot", read-only; with
    # cache=loose the guest caches freely, fine for a read-only snapshot)
    # under an overlay whose writable upper layer is a tmpfs. The guest can
    # write anywhere; all of it is thrown away at power-off.
    mkdir -p /lower /rw /newroot
    mount -t 9p -o ro,$P9,cache=loose hostroot /lower || fail "mount host root over 9p"
    mount -t tmpfs -o mode=755 rw /rw
    mkdir -p /rw/upper /rw/work
    mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
        fail "mount overlay root"

    # Take busybox and this script along to the new root's /run (a fresh tmpfs).
    mount -t tmpfs -o mode=755 run /newroot/run
    mkdir -p /newroot/run/vm/bin
    cp /bin/busybox /init /newroot/run/vm/

    umount /proc /sys /dev
    # Why switch_root and not just chroot: pivot_root(2) refuses to run while
    # / is the initramfs (rootfs), and container runtimes need pivot_root.
    # switch_root empties the initramfs, moves /newroot onto / and execs
    # stage 2 there as PID 1.
    exec switch_root /newroot /run/vm/busybox sh /run/vm/init stage2
fi

# -------------------------------------------------------------------- stage 2
# busybox applets first in PATH, for this script only; the command later gets
# the host's PATH.
/run/vm/busybox mount -t proc proc /proc
/run/vm/busybox --install -s /run/vm/bin
export PATH=/run/vm/bin

mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t mqueue mqueue /dev/mqueue
mount -t tmpfs -o mode=1777 tmp /tmp          # a fresh /tmp, not the host's
# udev would normally create these; bash process substitution needs /dev/fd.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr

# The control dir: a per-run host temp dir holding cwd and cmd.bash (written
# by the runner) and rc (written by us). cache=none: no stale reads.
mkdir -p /run/vmctl
mount -t 9p -o $P9,cache=none vmctl /run/vmctl || fail "mount control dir"

# The project dir, read-write and live, at the same path as on the host.
CWD=$(cat /run/vmctl/cwd)
mkdir -p "$CWD"
mount -t 9p -o $P9,cache=loose vmcwd "$CWD" || fail "mount $CWD"

# Pure cgroup v2: with no v1 hierarchy mounted, every controller belongs to
# v2. Options as systemd uses them. Then enable every available controller
# (cpu, memory, pids, io, ...) for the root's children, one by one so that a
# controller that can't be enabled doesn't stop the others.
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup ||
    fail "mount cgroup2"
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control ||
        echo "minidock-vm init: cannot enable cgroup controller $c" > /dev/console
done

ip link set lo up
hostname minidock-vm
# The console tty would turn every "\n" into "\r\n"; keep the output as is.
stty -F /dev/console -onlcr

# Run the command. Its output goes through a fifo and cat to the console, so
# the command's stdout is a pipe, never a tty: test output carries no colour
# codes or progress bars, on a terminal and in CI alike. env -i: the command
# sees only the environment cmd.bash exports.
mkfifo /run/vm/out
cat /run/vm/out > /dev/console &
cat_pid=$!
env -i /bin/bash /run/vmctl/cmd.bash < /dev/null > /run/vm/out 2>&1
echo $? > /run/vmctl/rc

# Processes the command left behind (daemons, stray children) may still hold
# the fifo open. Kill them so cat sees end-of-file and finishes.
for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = 1 ] || [ "$p" = "$cat_pid" ] || kill -9 "$p" 2> /dev/null
done
wait "$cat_pid"

sync
# tcsetattr(TCSADRAIN) waits until the UART has sent the last bytes;
# without it the end of the output can be lost at power-off.
stty -F /dev/console -onlcr
reboot -f
