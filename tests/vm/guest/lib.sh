# Shared by the scenarios: a cfsd on /run/cfsd.sock serving /disk/repo,
# cfsctl bound to it, and checks that print TAP-like lines.
repo=/disk/repo
export CFSD_ADDRESS=unix:/run/cfsd.sock

ok() { echo "ok - $*"; }
fail() {
    echo "not ok - $*"
    [ ! -s /run/cfsd.log ] || { echo "--- cfsd's log:"; cat /run/cfsd.log; }
    exit 1
}
# expect WHAT EXPECTED ACTUAL
expect() { [ "$2" = "$3" ] && ok "$1" || fail "$1: expected '$2', got '$3'"; }

start_cfsd() {
    rm -f /run/cfsd.sock
    cfsd --repo "$repo" --address "$CFSD_ADDRESS" --log debug "$@" >>/run/cfsd.log 2>&1 &
    cfsd_pid=$!
    i=0
    while [ ! -S /run/cfsd.sock ]; do
        kill -0 "$cfsd_pid" 2>/dev/null || { cat /run/cfsd.log; fail "cfsd exited at start"; }
        [ $i -lt 200 ] || fail "cfsd did not create its socket"
        sleep 0.05
        i=$((i + 1))
    done
}

stop_cfsd() {
    kill "$cfsd_pid"
    wait "$cfsd_pid" 2>/dev/null || true
}

# Every object's fs-verity digest, measured by the kernel, equals its name.
check_objects_sealed() {
    count=0
    for object in "$repo"/objects/??/*; do
        [ -f "$object" ] || continue
        name=$(basename "$(dirname "$object")")$(basename "$object")
        measured=$(fsverity measure "$object" | cut -d' ' -f1 | cut -d: -f2) ||
            fail "fsverity measure $object"
        [ "$measured" = "$name" ] || fail "object $name measures as $measured"
        count=$((count + 1))
    done
    [ "$count" -gt 0 ] || fail "the repository holds no objects"
    ok "all $count objects have fs-verity with the digest their name claims"
}
