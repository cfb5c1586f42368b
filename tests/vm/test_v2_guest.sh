#!/bin/bash
# Self-check of the test VM, run INSIDE it:
#     tests/vm/run-in-vm.sh tests/vm/test_v2_guest.sh
# Checks that the guest gives minidock what it needs: pure cgroup v2 with the
# cpu/memory/pids controllers enabled, overlayfs, namespaces and pivot_root.
# Prints one PASS/FAIL line per check; exits 0 only if all pass.
set -u
CG=/sys/fs/cgroup
failures=0
check() {   # check "description" COMMAND...   (PASS if COMMAND succeeds)
    local what=$1; shift
    if out=$("$@" 2>&1); then echo "PASS $what"; else echo "FAIL $what: $out"; failures=$((failures + 1)); fi
}
has_words() {   # has_words FILE WORD...   (FILE lists every WORD)
    local file=$1 line; shift
    line=" $(cat "$file") "
    for w in "$@"; do [[ $line == *" $w "* ]] || { echo "$file: $line"; return 1; }; done
}

echo "guest: kernel $(uname -r), $(nproc) cpu(s), uid $(id -u), python3 $(command -v python3)"

check "/sys/fs/cgroup is cgroup2" \
    bash -c 't=$(stat -f -c %T /sys/fs/cgroup); [ "$t" = cgroup2fs ] || { echo "type $t"; exit 1; }'
check "no cgroup v1 hierarchy mounted" bash -c '! grep " cgroup " /proc/mounts'
check "cgroup.controllers lists cpu memory pids" has_words $CG/cgroup.controllers cpu memory pids
check "root subtree_control enables cpu memory pids" has_words $CG/cgroup.subtree_control cpu memory pids
check "a child cgroup gets cpu.max memory.max pids.max" bash -c "
    mkdir $CG/selftest && trap 'rmdir $CG/selftest' EXIT &&
    ls $CG/selftest/cpu.max $CG/selftest/memory.max $CG/selftest/pids.max > /dev/null"

# overlayfs: the upper layer must be on tmpfs (/tmp), not on the guest's own
# overlay root and not on the 9p-shared project dir.
check "overlayfs mount (upper on tmpfs)" bash -c '
    d=$(mktemp -d) && trap "rm -rf $d" EXIT && mkdir $d/lower $d/upper $d/work $d/merged &&
    echo low > $d/lower/f &&
    mount -t overlay overlay -o lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work $d/merged &&
    echo high > $d/merged/f && [ "$(cat $d/upper/f)" = high ] && [ "$(cat $d/lower/f)" = low ] &&
    umount $d/merged'

# In new pid+mount+net namespaces we are PID 1 and see other namespaces.
unshare_test() {
    local outside inside
    outside="$(readlink /proc/self/ns/mnt) $(readlink /proc/self/ns/net)"
    inside=$(unshare --pid --mount --net --fork --mount-proc \
        sh -c 'echo $$ $(readlink /proc/self/ns/mnt) $(readlink /proc/self/ns/net)') || return 1
    set -- $outside $inside   # $1 $2 = outside mnt net, $3 = pid, $4 $5 = inside mnt net
    [ "$3" = 1 ] && [ "$1" != "$4" ] && [ "$2" != "$5" ] || { echo "outside: $outside, inside: $inside"; return 1; }
}
check "unshare --pid --mount --net --fork" unshare_test

# pivot_root into a tmpfs, in a new mount namespace. Afterwards the new root
# has no /bin: only bash builtins there.
pivot_test() {
    local r rc=0
    r=$(mktemp -d)
    unshare --mount bash -c '
        mount --make-rprivate / && mount -t tmpfs new-root "$1" &&
        mkdir "$1/old" && echo hello > "$1/marker" && cd "$1" && pivot_root . old &&
        read -r m < /marker && [ "$m" = hello ] && [ -d /old/proc/1 ]' pivot "$r" || rc=1
    rmdir "$r"
    return $rc
}
check "pivot_root in a new mount namespace" pivot_test

echo "self-check: $failures failure(s)"
[ $failures = 0 ]
