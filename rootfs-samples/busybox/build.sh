#!/bin/sh
# Build a busybox root filesystem from Debian's busybox-static package.
#
#   rootfs-samples/busybox/build.sh OUTDIR
#
# The result is a directory tree that `minidock import` turns into an image: one static
# busybox binary, a symlink per applet (sh, ls, httpd, …), and the few files in /etc that
# programs expect (passwd, group). Nothing from the host but that one binary is copied.
set -eu
out=${1:?usage: build.sh OUTDIR}
busybox=/bin/busybox
if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then  # ldd fails on static binaries
    echo "build.sh: $busybox is not the static busybox: apt-get install busybox-static" >&2
    exit 1
fi
rm -rf "$out"
mkdir -p "$out"
cd "$out"
mkdir -p bin sbin usr/bin usr/sbin etc root tmp proc sys dev home/web var/www
chmod 1777 tmp
chmod 700 root
cp "$busybox" bin/busybox
# One link per applet, where busybox itself says it belongs (--list-full: "bin/sh", …).
for applet in $(bin/busybox --list-full); do
    [ "$applet" = bin/busybox ] || ln -sf /bin/busybox "$applet"
done
cat > etc/passwd <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
web:x:1000:1000:web:/home/web:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > etc/group <<'GROUP'
root:x:0:
tty:x:5:
web:x:1000:
staff:x:50:web
nogroup:x:65534:
GROUP
chown 1000:1000 home/web
echo "built busybox rootfs in $out ($(du -sh . | cut -f1))"
