#!/bin/sh
# hotswap-upgrade.sh PIDFILE [TIMEOUT_SECONDS]
#
# Live-upgrade a running hotswap master and report how it ended. The master does the
# whole upgrade by itself on USR2 (boot the new generation, hand over, watch, commit or
# roll back) and writes each step to PIDFILE.upgrade; this script only checks that
# PIDFILE names a real hotswap master, sends USR2 and follows that file. Killing the
# script (Ctrl-C, a deploy tool's timeout) changes nothing: the upgrade goes on, and
# `hotswap status` or the next run of this script sees how it ended.
#
# Plain POSIX sh on purpose: deploy hosts and minimal images (busybox) have no Python to
# spare. It uses kill, sleep, cat -v, sed, awk and stat -c %Y (all in GNU coreutils and in
# busybox) and /proc.
#
# One final line goes to stdout, worded as `hotswap upgrade` (upgrade/record.py) words it:
#   upgraded: OLD -> NEW (generation G), ready in X s, drained in Y s, handover Z s, committed after W s
#   upgrade rolled back, old master OLD still serving: REASON
#   upgrade failed, old master OLD still serving: REASON
#   upgrade refused: REASON
#   upgrade failed: no running master: WHAT PIDFILE NAMES          (nothing was signalled)
#   upgrade not finished after T s (it is STATE); it goes on in the server, ...
# Progress goes to stderr.
# Exit status: 0 upgraded, 1 anything else, 2 usage.

set -u

# --- the protocol's names: copies of upgrade/names.py (tests/unit/test_protocol_names.py) ---
SUFFIX_STATE='.upgrade'
SUFFIX_OLDBIN='.oldbin'
TITLE_MASTER='hotswap: master'
STATE_COMMITTED='committed'
STATE_ROLLED_BACK='rolled-back'
STATE_FAILED='failed'
STATE_REFUSED='refused'

POLL=0.05            # seconds between two reads of the state file
POLLS_PER_SECOND=20  # must match POLL
CLK_TCK=100          # USER_HZ: the unit of /proc/PID/stat start times on every Linux we run on

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
    printf '  TIMEOUT_SECONDS: a whole number > 0, how long to follow the upgrade (default 60)\n' >&2
    exit 2
}

# --- who a pidfile names -------------------------------------------------------------

# read_pid FILE: PID := the pid in FILE; PID_PROBLEM says why not (missing, unreadable).
read_pid() {
    PID=
    PID_PROBLEM=
    if [ ! -e "$1" ]; then
        PID_PROBLEM="$1 does not exist"
        return 1
    fi
    if [ ! -f "$1" ] || [ ! -r "$1" ]; then
        PID_PROBLEM="$1 is unreadable: not a readable file"
        return 1
    fi
    _rest=
    { read -r PID _rest < "$1"; } 2>/dev/null
    case $PID$_rest in
        '') PID_PROBLEM="$1 is unreadable: it is empty" ;;
        *[!0-9]* | 0*) PID_PROBLEM="$1 is unreadable: it holds no pid" ;;
        *) return 0 ;;
    esac
    PID=
    return 1
}

# alive PID: true for a running process; a zombie serves nothing.
alive() {
    _state=
    { while read -r _key _value _rest; do
        [ "$_key" = State: ] && { _state=$_value; break; }
    done < "/proc/$1/status"; } 2>/dev/null
    case $_state in
        '' | Z | X) return 1 ;;
    esac
    return 0
}

# read_title PID: TITLE := the command line as the shell reads it (NULs dropped, first
# line); SHOWN := as `cat -v` shows it (a NUL is "^@"), without the NULs that pad a process
# title. The two agree only for a single argument: glued arguments ("hotswap: mast" "er")
# leave a "^@" inside SHOWN, a literal "^@" in an argument is in TITLE too but no title.
read_title() {
    TITLE=
    { IFS= read -r TITLE < "/proc/$1/cmdline"; } 2>/dev/null
    SHOWN=$(cat -v "/proc/$1/cmdline" 2>/dev/null | sed -e 's/\(\^@\)*$//')
}

# master_title PID: true if PID is titled exactly TITLE_MASTER or "TITLE_MASTER [NAME]".
master_title() {
    read_title "$1"
    [ "$SHOWN" = "$TITLE" ] || return 1
    case $TITLE in
        "$TITLE_MASTER" | "$TITLE_MASTER ["*"]") return 0 ;;
    esac
    return 1
}

# started PID: STARTED := when PID started, in whole Unix seconds, rounded down (boot time
# is truncated to the second too), so a master is never judged younger than it is.
started() {
    STARTED=
    _stat=
    { IFS= read -r _stat < "/proc/$1/stat"; } 2>/dev/null
    # Field 2 is "(comm)", which may hold spaces and ")": count fields after the last ")".
    _fields=${_stat##*) }
    set -f
    # shellcheck disable=SC2086
    set -- $_fields
    set +f
    [ $# -ge 20 ] || return 1
    _ticks=${20}
    _btime=
    { while read -r _key _value _rest; do
        [ "$_key" = btime ] && { _btime=$_value; break; }
    done < /proc/stat; } 2>/dev/null
    case $_ticks$_btime in
        '' | *[!0-9]*) return 1 ;;
    esac
    STARTED=$((_btime + _ticks / CLK_TCK))
}

# written FILE: WRITTEN := FILE's mtime in whole Unix seconds.
written() {
    WRITTEN=$(stat -c %Y -- "$1" 2>/dev/null)
    case $WRITTEN in
        '' | *[!0-9]*) WRITTEN=; return 1 ;;
    esac
    return 0
}

# identify FILE: true if FILE names the hotswap master that wrote it (MASTER := its pid);
# else FOUND says what it names. A master has its exact title and started before it wrote
# the file; a reused pid started after, whatever its command line says.
identify() {
    MASTER=
    if ! read_pid "$1"; then
        FOUND=$PID_PROBLEM
        return 1
    fi
    if ! alive "$PID"; then
        FOUND="$1 names $PID, which is not running"
        return 1
    fi
    if ! master_title "$PID"; then
        _shown=$(printf '%s\n' "$SHOWN" | sed -e 's/\^@/ /g' -e 's/ *$//' |
            awk 'NR > 1 { printf "?" } { printf "%s", $0 }')
        FOUND="$1 names $PID, which is not a hotswap master (cmdline: $_shown)"
        return 1
    fi
    if ! written "$1"; then
        FOUND="cannot tell when $1 was written (stat -c %Y failed), so not whether $PID wrote it"
        return 1
    fi
    if ! started "$PID" || [ "$STARTED" -gt "$WRITTEN" ]; then
        FOUND="$1 names $PID, titled like a hotswap master but started after the file was written (the pid was reused)"
        return 1
    fi
    MASTER=$PID
    return 0
}

# --- the state file --------------------------------------------------------------------

# parse_state LINE: S_ID, S_STATE, S_OLD, S_NEW, S_GENERATION, S_READY, S_DRAIN, S_HANDOVER,
# S_COMMIT, S_REASON from "id=.. state=.. old=.. new=.. generation=.. ready=.. drain=.. handover=..
# commit=.. reason=TEXT"; false unless every key is there, in that order.
parse_state() {
    _line=$1
    for _key in id state old new generation ready drain handover commit; do
        case $_line in
            "$_key="*) _line=${_line#"$_key="} ;;
            *) return 1 ;;
        esac
        _value=${_line%% *}
        _line=${_line#"$_value"}
        _line=${_line# }
        case $_key in
            id) S_ID=$_value ;;
            state) S_STATE=$_value ;;
            old) S_OLD=$_value ;;
            new) S_NEW=$_value ;;
            generation) S_GENERATION=$_value ;;
            ready) S_READY=$_value ;;
            drain) S_DRAIN=$_value ;;
            handover) S_HANDOVER=$_value ;;
            commit) S_COMMIT=$_value ;;
        esac
    done
    case $_line in
        reason=*) S_REASON=${_line#reason=} ;;
        *) return 1 ;;
    esac
    return 0
}

# read_state: LINE := the state file's line (empty when missing).
read_state() {
    LINE=
    { IFS= read -r LINE < "$STATE"; } 2>/dev/null
}

# human SECONDS: HUMAN := "1.23 s" from the state file's "1.234", "?" for "-".
human() {
    case $1 in
        '' | *[!0-9.]*) HUMAN='?' ;;
        *) HUMAN=$(awk -v s="$1" 'BEGIN { printf "%.2f s", s }') ;;
    esac
}

# report: print the final line for the parsed final state and exit.
report() {
    case $S_STATE in
        "$STATE_COMMITTED")
            [ "$S_GENERATION" = - ] && S_GENERATION='?'
            human "$S_READY"; _ready=$HUMAN
            human "$S_DRAIN"; _drain=$HUMAN
            human "$S_HANDOVER"; _handover=$HUMAN
            human "$S_COMMIT"
            # The old master writes "committed", then exits; until it is gone the new one
            # refuses USR2, so a deploy that upgrades again right away waits for that here.
            while alive "$M1" && [ "$n" -lt "$POLLS" ]; do
                n=$((n + 1))
                sleep "$POLL"
            done
            alive "$M1" && say "old master $M1 has not exited yet"
            finish 0 "upgraded: $S_OLD -> $S_NEW (generation $S_GENERATION), ready in $_ready, drained in $_drain, handover $_handover, committed after $HUMAN" ;;
        "$STATE_ROLLED_BACK")
            finish 1 "upgrade rolled back, old master $S_OLD still serving: $S_REASON" ;;
        "$STATE_FAILED")
            finish 1 "upgrade failed, old master $S_OLD still serving: $S_REASON" ;;
        "$STATE_REFUSED")
            finish 1 "upgrade refused: $S_REASON" ;;
    esac
}

# ours LINE: true if LINE is a state of the upgrade our USR2 started (parsed into S_*).
ours() {
    parse_state "$1" && [ "$S_ID" != "$BEFORE_ID" ] && [ "$S_OLD" = "$M1" ]
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
STATE=$PIDFILE$SUFFIX_STATE
OLDBIN=$PIDFILE$SUFFIX_OLDBIN

# --- 1. PIDFILE must name a hotswap master; anything else gets no signal ---
identify "$PIDFILE" || finish 1 "upgrade failed: no running master: $FOUND"
M1=$MASTER
say "master $M1 (from $PIDFILE)"
# A stale .oldbin (dead pid, a stranger, or M1 itself) is only worth a word: the master
# decides whether an upgrade already runs, and refuses USR2 if so.
if [ -e "$OLDBIN" ]; then
    if ! identify "$OLDBIN"; then
        say "ignoring stale $OLDBIN: $FOUND"
    elif [ "$MASTER" = "$M1" ]; then
        say "ignoring $OLDBIN: it names $M1, the master $PIDFILE names too"
    else
        say "$OLDBIN names master $MASTER: an upgrade may be running (the master decides)"
    fi
fi

# --- 2. remember the last state, then USR2 ---
read_state
BEFORE_ID=
parse_state "$LINE" && BEFORE_ID=$S_ID
kill -s USR2 "$M1" 2>/dev/null || finish 1 "upgrade failed: cannot send USR2 to master $M1"
say "sent USR2 to $M1; following $STATE"

# --- 3. follow the state file until our upgrade reaches a final state ---
SHOWN=
n=0
while :; do
    read_state
    if ours "$LINE"; then
        report
        if [ "$S_STATE" != "$SHOWN" ]; then
            SHOWN=$S_STATE
            say "$S_STATE (new master $S_NEW)"
        fi
    fi
    if ! alive "$M1"; then
        # Gone without a final state of ours? Look once more: it writes, then exits.
        read_state
        ours "$LINE" && report
        finish 1 "upgrade failed: master $M1 exited before it reported the upgrade"
    fi
    n=$((n + 1))
    if [ "$n" -ge "$POLLS" ]; then
        _tail="it goes on in the server, which finishes or rolls it back by itself"
        [ -n "$SHOWN" ] && finish 1 "upgrade not finished after $TIMEOUT s (it is $SHOWN); $_tail"
        finish 1 "upgrade failed: upgrade not finished after $TIMEOUT s (the master did not report it); $_tail"
    fi
    sleep "$POLL"
done
