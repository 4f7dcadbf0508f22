#!/bin/sh
# hotswap-upgrade.sh PIDFILE [TIMEOUT_SECONDS]
#
# Live-upgrade a running hotswap master: USR2 -> wait until the new master is
# ready -> WINCH the old one -> wait until its workers are gone -> QUIT it,
# rolling back on any failure so the old generation keeps serving.
#
# Plain POSIX sh on purpose: deploy hosts and minimal images (busybox) have no
# Python to spare, so this uses only kill, sleep and /proc. Deadlines are
# counted in poll iterations because there is no clock command we can rely on.
# No health check: there is no HTTP client in sh (use `hotswap upgrade`).
#
# Progress goes to stderr; one final line goes to stdout:
#   "upgraded: OLD -> NEW", "rolled back: REASON" or "failed: REASON".
# Exit status: 0 upgraded, 1 failed or rolled back, 2 usage.

set -u

POLL=0.05            # seconds between two looks at the pidfiles and /proc
POLLS_PER_SECOND=20  # must match POLL
KILL_GRACE_POLLS=100 # a process told to QUIT gets 5 s before SIGKILL
WORKER_TITLE='hotswap: worker'

say() {
    printf 'hotswap-upgrade: %s\n' "$*" >&2
}

finish() {
    # $1 exit status, $2 the one line a deploy tool keeps.
    printf '%s\n' "$2"
    exit "$1"
}

usage() {
    printf 'usage: %s PIDFILE [TIMEOUT_SECONDS]\n' "${0##*/}" >&2
    printf '  TIMEOUT_SECONDS: a whole number > 0, per step (default 60)\n' >&2
    exit 2
}

# read_pid FILE: PID := the pid in FILE; false (PID empty) when missing or garbled.
read_pid() {
    PID=
    _rest=
    { read -r PID _rest < "$1"; } 2>/dev/null
    case $PID in
        '' | *[!0-9]*) PID=; return 1 ;;
    esac
    return 0
}

# read_status PID: STATE and PPID_OF from /proc/PID/status, empty when gone.
read_status() {
    STATE=
    PPID_OF=
    { while read -r _key _value _rest; do
        case $_key in
            State:) STATE=$_value ;;
            PPid:) PPID_OF=$_value; break ;;
        esac
    done < "/proc/$1/status"; } 2>/dev/null
}

# alive PID: true for a running process; a zombie already serves nothing.
alive() {
    case ${1:-} in
        '' | *[!0-9]*) return 1 ;;
    esac
    read_status "$1"
    case $STATE in
        '' | Z | X) return 1 ;;
    esac
    return 0
}

# read_cmdline PID: CMDLINE := its command line (the shell drops the NULs).
read_cmdline() {
    CMDLINE=
    { IFS= read -r CMDLINE < "/proc/$1/cmdline"; } 2>/dev/null
}

is_worker() {
    read_cmdline "$1"
    case $CMDLINE in
        "$WORKER_TITLE"*) return 0 ;;
    esac
    return 1
}

# is_master PID: the pid in a pidfile may have been reused by another program.
is_master() {
    is_worker "$1" && return 1
    case $CMDLINE in
        *hotswap*) return 0 ;;
    esac
    return 1
}

# list_children PID [EXCEPT]: CHILDREN := live children of PID other than EXCEPT.
# /proc/PID/task/*/children names them in a few reads; without it (older kernels) every
# process is a candidate. Either way each candidate's PPid is checked.
list_children() {
    CHILDREN=
    _candidates=
    if [ -r "/proc/$1/task/$1/children" ]; then
        for _task in /proc/"$1"/task/*; do
            _line=
            { read -r _line < "$_task/children"; } 2>/dev/null
            _candidates="$_candidates $_line"
        done
    else
        for _dir in /proc/[0-9]*; do
            _candidates="$_candidates ${_dir#/proc/}"
        done
    fi
    for _pid in $_candidates; do
        [ "$_pid" = "${2:-}" ] && continue
        read_status "$_pid"
        [ "$PPID_OF" = "$1" ] || continue
        case $STATE in
            '' | Z | X) continue ;;
        esac
        CHILDREN="$CHILDREN $_pid"
    done
    CHILDREN=${CHILDREN# }
}

# read_failure: FAIL_LINE := the upgrade failure record, "<pid> <time> <reason>".
read_failure() {
    FAIL_LINE=
    { IFS= read -r FAIL_LINE < "$FAILED"; } 2>/dev/null
}

# failure_reason LINE: REASON := LINE without its pid and time fields.
failure_reason() {
    REASON=${1#* }
    case $REASON in
        *' '*) REASON=${REASON#* } ;;
        *) REASON='no reason given' ;;
    esac
}

# wait_gone PID POLLS: true once PID is gone, false when POLLS run out.
wait_gone() {
    _n=0
    while alive "$1"; do
        _n=$((_n + 1))
        [ "$_n" -ge "$2" ] && return 1
        sleep "$POLL"
    done
    return 0
}

# stop_pid PID: QUIT, then SIGKILL when it does not go within the step's deadline
# (a serving new master drains on QUIT: its requests must not be cut short).
stop_pid() {
    kill -s QUIT "$1" 2>/dev/null || return 0
    grace=$KILL_GRACE_POLLS
    [ "$POLLS" -gt "$grace" ] && grace=$POLLS
    wait_gone "$1" "$grace" && return 0
    say "$1 ignored QUIT; sending SIGKILL"
    kill -s KILL "$1" 2>/dev/null
    wait_gone "$1" "$KILL_GRACE_POLLS"
}

# Called through wait_for, which shellcheck cannot follow.
# shellcheck disable=SC2317
pidfile_names() {
    read_pid "$PIDFILE" && [ "$PID" = "$1" ]
}

# shellcheck disable=SC2317
oldbin_released() {
    ! read_pid "$OLDBIN" || [ "$PID" != "$M1" ]
}

# wait_for COMMAND...: poll COMMAND until true or the step deadline; false then.
wait_for() {
    _w=0
    until "$@"; do
        _w=$((_w + 1))
        [ "$_w" -ge "$POLLS" ] && return 1
        sleep "$POLL"
    done
    return 0
}

# --- step 3 failure: M2 never became ready; stopping it makes M1 roll back. ---
abort_unready() {
    _reason="new master not ready within $TIMEOUT s"
    _stopped=
    list_children "$M1"
    for _child in $CHILDREN; do
        is_worker "$_child" && continue
        say "$_reason; stopping $_child"
        stop_pid "$_child"
        _stopped="$_stopped $_child"
    done
    [ -n "$_stopped" ] || finish 1 "failed: $_reason (no new master process found)"
    if ! wait_for pidfile_names "$M1"; then
        finish 1 "failed: $_reason; stopped$_stopped but $PIDFILE does not name $M1 again"
    fi
    wait_for oldbin_released || say "$OLDBIN still names $M1"
    finish 1 "failed: $_reason; stopped$_stopped"
}

# shellcheck disable=SC2317
m1_serves_again() {
    pidfile_names "$M1" || return 1
    alive "$M2" && return 1
    list_children "$M1" "$M2"
    [ -n "$CHILDREN" ]
}

# --- rollback after WINCH: HUP first so M1's workers are back before M2 stops. ---
roll_back() {
    _reason=$1
    say "rolling back: $_reason"
    if ! kill -s HUP "$M1" 2>/dev/null; then
        finish 1 "failed: $_reason; old master $M1 is gone, cannot roll back"
    fi
    alive "$M2" && stop_pid "$M2"
    if ! wait_for m1_serves_again; then
        _reason="$_reason (rollback incomplete: $M1 has no workers or $PIDFILE names another)"
    fi
    finish 1 "rolled back: $_reason"
}

# --- arguments ---
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    usage
fi
PIDFILE=$1
TIMEOUT=${2:-60}
[ -n "$PIDFILE" ] || usage
case $TIMEOUT in
    '' | *[!0-9]*) usage ;;
esac
[ "$TIMEOUT" -gt 0 ] || usage
POLLS=$((TIMEOUT * POLLS_PER_SECOND))
OLDBIN=$PIDFILE.oldbin
FAILED=$PIDFILE.upgrade-failed

# --- step 1: a live master, and no upgrade already running ---
read_pid "$PIDFILE" || finish 1 "failed: no running master: $PIDFILE is missing or unreadable"
M1=$PID
alive "$M1" || finish 1 "failed: no running master: $PIDFILE names $M1, which is not alive"
is_master "$M1" ||
    finish 1 "failed: no running master: $PIDFILE names $M1, which is not a hotswap master"
if read_pid "$OLDBIN" && alive "$PID"; then
    finish 1 "failed: an upgrade is already in progress: $OLDBIN names $PID"
fi
say "old master $M1 (from $PIDFILE)"

# --- step 2: note the failure record, then USR2 ---
read_failure
FAIL_BEFORE=$FAIL_LINE
kill -s USR2 "$M1" 2>/dev/null || finish 1 "failed: cannot send USR2 to $M1"
say "sent USR2 to $M1; waiting for the new master to be ready"

# --- step 3: PIDFILE names a live pid other than M1 ---
M2=
n=0
while :; do
    if read_pid "$PIDFILE" && [ "$PID" != "$M1" ] && alive "$PID"; then
        M2=$PID
        break
    fi
    read_failure
    if [ -n "$FAIL_LINE" ] && [ "$FAIL_LINE" != "$FAIL_BEFORE" ] &&
        [ "${FAIL_LINE%% *}" = "$M1" ]; then
        failure_reason "$FAIL_LINE"
        wait_for oldbin_released || say "$OLDBIN still names $M1"
        finish 1 "failed: new master failed: $REASON"
    fi
    alive "$M1" || finish 1 "failed: old master $M1 died before the new master was ready"
    n=$((n + 1))
    [ "$n" -ge "$POLLS" ] && abort_unready
    sleep "$POLL"
done
say "new master $M2 ready after $n polls"

# --- step 5: WINCH, wait until M1 has no child but M2 ---
kill -s WINCH "$M1" 2>/dev/null || roll_back "cannot send WINCH to $M1"
say "sent WINCH to $M1; waiting for its workers to finish"
n=0
while :; do
    alive "$M2" || roll_back "new master $M2 exited during the drain"
    if ! alive "$M1"; then
        say "old master $M1 exited by itself during the drain"
        break
    fi
    list_children "$M1" "$M2"
    [ -z "$CHILDREN" ] && break
    n=$((n + 1))
    [ "$n" -ge "$POLLS" ] && roll_back "old workers did not finish within $TIMEOUT s"
    sleep "$POLL"
done
say "old workers drained after $n polls"

# --- step 6: QUIT M1; its workers are gone, so even SIGKILL loses nothing ---
# Only M1 removes its .oldbin, on its way out: wait for that only if it left on QUIT.
OLDBIN_POLLS=1
if alive "$M1"; then
    alive "$M2" || roll_back "new master $M2 exited before QUIT"
    kill -s QUIT "$M1" 2>/dev/null
    say "sent QUIT to $M1; waiting for it to exit"
    OLDBIN_POLLS=$POLLS
    if ! wait_gone "$M1" "$POLLS"; then
        say "old master $M1 ignored QUIT for $TIMEOUT s; sending SIGKILL"
        kill -s KILL "$M1" 2>/dev/null
        wait_gone "$M1" "$KILL_GRACE_POLLS"
        OLDBIN_POLLS=1
    fi
fi
POLLS=$OLDBIN_POLLS
wait_for oldbin_released || say "$OLDBIN still names the old master $M1"
finish 0 "upgraded: $M1 -> $M2"
