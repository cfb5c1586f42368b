#!/bin/sh
# Build the demo web server's root filesystem: busybox plus a static page, served by
# busybox httpd on port 80.
#
#   rootfs-samples/web/build.sh OUTDIR
set -eu
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
"$here/../busybox/build.sh" "$out"
mkdir -p "$out/var/www"
cp "$here/index.html" "$out/var/www/index.html"
echo "built web rootfs in $out"
