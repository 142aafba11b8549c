# Power cuts: the host kills qemu itself (so the guest's page cache is
# lost) at some point while this runs a sequence of operations, then boots
# the same disk again with cfsd.phase=check and cfsd.answered=N, N being
# the number of operations whose answer reached the console before the
# cut. Phase "run" sets up the state before (busybox:demo), then runs the
# operations, printing "starting K" before each and "answered K" after
# each reply. Phase "check" lets
# cfsd recover, checks what survived, and runs the remaining operations.
. /scenarios/lib.sh
expected=$(cat /fixtures/ids)
id_of() { echo "$expected" | sed -n "s/^$1 //p"; }

# op K: the Kth operation of the sequence.
op() {
    case $1 in
    1) cfsctl --progress none oci pull oci-archive:/fixtures/busybox.tar:demo-v2 busybox:v2 ;;
    2) cfsctl oci tag busybox:v2 busybox:latest ;;
    3) cfsctl oci untag busybox:v2 ;;
    4) cfsctl oci rm busybox:latest ;;
    5) cfsctl gc ;;
    6) cfsctl --progress none oci pull --stage oci-archive:/fixtures/busybox.tar:demo-v2 ;;
    7) cfsctl oci commit "$(complete_stage)" busybox:staged ;;
    8) cfsctl oci rm busybox:staged ;;
    9) cfsctl gc ;;
    10) cfsctl --progress none oci pull oci-archive:/fixtures/delta.tar busybox:fromdelta ;;
    11) cfsctl oci tag busybox:fromdelta busybox:v2 ;;
    esac
}
last=11

# tags_after K: the tags, sorted, once operations 1..K are done.
tags_after() {
    case $1 in
    0) echo "busybox:demo" ;;
    1) echo "busybox:demo busybox:v2" ;;
    2) echo "busybox:demo busybox:latest busybox:v2" ;;
    3) echo "busybox:demo busybox:latest" ;;
    4 | 5 | 6) echo "busybox:demo" ;;
    7) echo "busybox:demo busybox:staged" ;;
    8 | 9) echo "busybox:demo" ;;
    10) echo "busybox:demo busybox:fromdelta" ;;
    11) echo "busybox:demo busybox:fromdelta busybox:v2" ;;
    esac
}
# stages_after K: the complete stages once operations 1..K are done: the
# one operation 6 stages, until operation 7 commits it.
stages_after() { [ "$1" = 6 ] && echo 1 || echo 0; }
stages() { cfsctl --json oci staged | jq -r "[.stages[] | select(.state == \"$1\")] | length"; }
complete_stage() { cfsctl --json oci staged | jq -r '[.stages[] | select(.state == "complete") | .id][0]'; }
tags_now() { cfsctl --json oci images | jq -r '[.images[].name] | sort | join(" ")'; }

# Every tag reaches a complete image with its reference id.
check_tags() {
    for tag in $(tags_now); do
        case $tag in busybox:demo) want=$(id_of demo) ;; *) want=$(id_of v2) ;; esac
        expect "$tag reaches its image" "$want" "$(cfsctl oci compute-id "$tag")"
    done
}

case $CFSD_VM_PHASE in
run)
    start_cfsd
    cfsctl init >/dev/null
    cfsctl --progress none oci pull oci-archive:/fixtures/busybox.tar:demo busybox:demo >/dev/null
    echo "cut-window-open"
    k=1
    while [ $k -le $last ]; do
        echo "starting $k"
        op $k >/dev/null || fail "operation $k"
        echo "answered $k"
        k=$((k + 1))
    done
    echo "cut-window-closed"
    stop_cfsd
    ;;
check)
    answered=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^cfsd.answered=//p')
    start_cfsd
    fsck=$(cfsctl --json fsck || true)
    [ "$(echo "$fsck" | jq -r .ok)" = true ] || echo "fsck: $fsck"
    expect "fsck is clean after the cut" true "$(echo "$fsck" | jq -r .ok)"
    now=$(tags_now)
    if [ -z "$answered" ]; then
        # Cut before the state before was complete: nothing was promised.
        ok "cut during setup; tags: '$now'"
        exit 0
    fi
    # The operation in flight may have finished without its answer
    # reaching the console.
    if [ "$now" = "$(tags_after "$answered")" ]; then
        done_ops=$answered
    elif [ "$answered" -lt $last ] && [ "$now" = "$(tags_after $((answered + 1)))" ]; then
        done_ops=$((answered + 1))
    else
        fail "after $answered answered operations the tags are '$now'"
    fi
    # Operation 6 (the staged pull) changes no tag: a complete stage
    # tells that it finished.
    if [ "$done_ops" = 5 ] && [ "$answered" = 5 ] && [ "$(stages complete)" = 1 ]; then
        done_ops=6
    fi
    ok "after $answered answered operations the tags are '$now'"
    ok "stages after the cut: $(stages complete) complete, $(stages incomplete) incomplete"
    check_tags
    # A stage answered survives the cut whole; one cut short is never
    # complete, commit refuses it, and GC collects it.
    expect "complete stages after $done_ops operations" "$(stages_after $done_ops)" "$(stages complete)"
    for id in $(cfsctl --json oci staged | jq -r '.stages[] | select(.state != "complete") | .id'); do
        refused=$(cfsctl --json oci commit "$id" busybox:never 2>&1 || true)
        case $refused in *StageIncomplete* | *incomplete*) ok "an unfinished stage cannot be committed" ;;
        *) fail "committing unfinished stage $id: $refused" ;; esac
        cfsctl gc >/dev/null
        expect "GC collects the unfinished stage" 0 "$(stages incomplete)"
    done
    k=$((done_ops + 1))
    while [ $k -le $last ]; do
        op $k >/dev/null || fail "operation $k again after the cut"
        k=$((k + 1))
    done
    expect "all operations done again" "$(tags_after $last)" "$(tags_now)"
    check_tags
    fsck=$(cfsctl --json fsck || true)
    [ "$(echo "$fsck" | jq -r .ok)" = true ] || echo "fsck: $fsck"
    expect "fsck is clean at the end" true "$(echo "$fsck" | jq -r .ok)"
    stop_cfsd
    ;;
esac
