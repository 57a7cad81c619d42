#!/bin/bash
# Run xfstests against daxfs (docs/xfstests.md): `make xfstests XFSTESTS=/path/to/a/built/xfstests`.
#
# Everything the run needs lives in one temporary directory (images, mount points, daemon state, the
# config, the wrappers) and every mount in one private mount namespace, so nothing leaks into the host:
# not the mounts, not /sbin/mount.fuse.daxfs, not the fsgqa users. Only the results stay.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

usage() {
	cat <<'EOF'
usage: tools/xfstests/run.sh --xfstests DIR [options] [TESTS or check options ...]

  --xfstests DIR   a built xfstests checkout (default: $XFSTESTS)
  --venv DIR       the daxfs under test (default: the repository's .venv)
  --image-dir DIR  where the run directory with the TEST and SCRATCH images goes (default /dev/shm)
  --size SIZE      size of each image, as `daxfs mkfs --size` takes it (default 1G)
  --options OPTS   daxfs mount options for both mounts (default allow_other,nomsync)
  --results DIR    xfstests' RESULT_BASE (default XFSTESTS/results/daxfs-YYYYmmdd-HHMMSS)
  --json FILE      also write the summary there (it is always in RESULTS/summary.json)
  --no-users       do not provide the fsgqa, fsgqa2 and 123456-fsgqa users
  TESTS            passed to xfstests' ./check: test names (generic/001 generic/002) or
                   options (-g quick, -x dangerous, -e generic/013); default: -g quick
EOF
}

# ---------------------------------------------------------------------------------------------
# Inside the private mount namespace (the outer part below re-runs this script under unshare).
# ---------------------------------------------------------------------------------------------
inner_cleanup() {
	# Unmount what is still mounted (a test or check interrupted midway), waiting for each daemon to
	# commit and exit: the daemons live in this namespace and would keep it, and their mounts, alive.
	local mnt
	for mnt in $(awk -v run="$RUN/" '$3 == "fuse.daxfs" && index($2, run) == 1 { print $2 }' /proc/self/mounts); do
		echo "run.sh: unmounting $mnt" >&2
		timeout 90 "$VENV/bin/daxfs" umount "$mnt" >/dev/null 2>&1 || umount -l "$mnt" 2>/dev/null
	done
	wait_daemons 30
}

# A daemon holds an flock on its image until it has checkpointed and exited. (Not fuser: it stats
# every open file of every process, and hangs on any FUSE mount on the machine whose daemon is stuck.)
images_free() {
	local img
	for img in "$RUN"/*.img; do flock -n "$img" true 2>/dev/null || return 1; done
}

wait_daemons() {  # until no daemon of ours is running, at most $1 s
	local i
	for ((i = 0; i < $1 * 10; i++)); do
		images_free && return 0
		sleep 0.1
	done
	return 1
}

our_daemons() {  # pids of daxfs daemons serving an image of ours
	grep -lsF -- "$RUN/" /proc/[0-9]*/cmdline | while read -r f; do
		tr '\0' ' ' <"$f" | grep -q "daxfs.cli mount $RUN/" && f=${f#/proc/} && echo "${f%/cmdline}"
	done
}

inner() {
	set -e
	mount -t overlay daxfs-xfstests-sbin -o "lowerdir=$RUN/sbin:$SBIN" "$SBIN"
	if [ -d "$RUN/etc" ]; then
		for f in "$RUN"/etc/*; do mount --bind "$f" "/etc/${f##*/}"; done
	fi
	set +e
	# The namespace starts with a copy of every mount on the host. Detach the copies of FUSE mounts
	# (other people's daxfs daemons and the like): a copy keeps its FUSE connection alive after the
	# owner unmounts it on the host, and the owner's daemon would then wait for this run to end.
	# Detaching a copy here does nothing to the mount on the host.
	local mnt
	for mnt in $(awk '$3 == "fuse" || $3 == "fuseblk" || $3 ~ /^fuse\./ { print $2 }' /proc/self/mounts | sort -r); do
		umount -l "$(printf '%b' "$mnt")" 2>/dev/null
	done
	trap inner_cleanup EXIT
	trap 'exit 130' INT TERM
	cd "$XFSTESTS" || exit 1

	# The list of tests, for the progress counter: check -n lists without running.
	local total
	total=$(RESULT_BASE="$RUN/list" ./check -n "$@" 2>/dev/null | grep -cE '^[a-z0-9]+/[0-9]+')
	echo "run.sh: $total tests; progress lines are [done/total elapsed]"

	# The filters ignore the signal that interrupts check, to pass on all it prints as it winds down.
	./check "$@" 2>&1 | (trap '' INT TERM; awk -v total="$total" -v start="$(date +%s)" '
		/^[a-z0-9]+\/[0-9]+ / {
			n++; t = systime() - start
			printf "[%d/%d %d:%02d] ", n, total, t / 60, t % 60
		}
		{ print; fflush() }') | (trap '' INT TERM; tee "$RESULTS/check.out")
	return "${PIPESTATUS[0]}"
}

if [ "${DAXFS_XFSTESTS_INNER:-}" = 1 ]; then
	inner "$@"
	exit $?
fi

# ---------------------------------------------------------------------------------------------
# Outside: check the arguments, create the run directory, enter the namespace, summarize.
# ---------------------------------------------------------------------------------------------
die() { echo "run.sh: $*" >&2; exit 2; }

XFSTESTS=${XFSTESTS:-}
VENV=$repo/.venv
IMAGE_DIR=/dev/shm
SIZE=1G
OPTIONS=allow_other,nomsync
RESULTS=
JSON=
USERS=1
args=()
while [ $# -gt 0 ]; do
	case "$1" in
	--xfstests) XFSTESTS=${2:-}; shift ;;
	--venv) VENV=${2:-}; shift ;;
	--image-dir) IMAGE_DIR=${2:-}; shift ;;
	--size) SIZE=${2:-}; shift ;;
	--options) OPTIONS=${2:-}; shift ;;
	--results) RESULTS=${2:-}; shift ;;
	--json) JSON=${2:-}; shift ;;
	--no-users) USERS= ;;
	-h|--help) usage; exit 0 ;;
	--) shift; args+=("$@"); break ;;
	*) args+=("$1") ;;
	esac
	shift
done
[ ${#args[@]} -gt 0 ] || args=(-g quick)

[ -n "$XFSTESTS" ] || die "no xfstests checkout: pass XFSTESTS=/path/to/a/built/xfstests (see docs/xfstests.md)"
XFSTESTS=$(cd "$XFSTESTS" 2>/dev/null && pwd) || die "$XFSTESTS: no such directory"
[ -x "$XFSTESTS/check" ] && [ -f "$XFSTESTS/common/rc" ] ||
	die "$XFSTESTS: not an xfstests checkout (no ./check or common/rc)"
[ -x "$XFSTESTS/ltp/fsstress" ] && [ -x "$XFSTESTS/src/t_dir_type" ] ||
	die "$XFSTESTS: not built (no ltp/fsstress or src/t_dir_type): build it as its README says"
VENV=$(cd "$VENV" 2>/dev/null && pwd) || die "no daxfs venv at $VENV: run \`make venv\` or pass --venv"
[ -x "$VENV/bin/daxfs" ] && [ -x "$VENV/bin/mount.fuse.daxfs" ] || die "$VENV has no daxfs installed"
[ "$(id -u)" = 0 ] || die "xfstests must run as root"
[ -d "$IMAGE_DIR" ] || die "$IMAGE_DIR: no such directory"
for tool in unshare flock findmnt timeout; do
	command -v $tool >/dev/null || die "$tool not found (util-linux, coreutils)"
done
[ -n "$RESULTS" ] || RESULTS=$XFSTESTS/results/daxfs-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS" && RESULTS=$(cd "$RESULTS" && pwd) || die "cannot create $RESULTS"

# no dot in the name: tests print their temporary files as "${path#*.}" (generic/469 does)
RUN=$(mktemp -d "$IMAGE_DIR/daxfs-xfstests-XXXXXX") || die "cannot create a directory in $IMAGE_DIR"
chmod 755 "$RUN"  # the fsgqa users reach TEST_DIR and SCRATCH_MNT through it
SBIN=$(realpath /sbin)
started=$(date +%s)
finished=
interrupted=

outer_cleanup() {
	trap '' INT TERM
	# A daemon still alive here means the namespace died hard (its shell was killed): SIGTERM makes
	# a daxfs daemon unmount and exit cleanly, which also lets the namespace go.
	local pids
	if ! images_free; then
		pids=$(our_daemons)
		echo "run.sh: stopping daxfs daemons left running: ${pids:-none found}" >&2
		[ -n "$pids" ] && kill -TERM $pids 2>/dev/null
		wait_daemons 30 || { pids=$(our_daemons); [ -n "$pids" ] && kill -KILL $pids 2>/dev/null; }
	fi
	mkdir -p "$RESULTS/daxfs-logs"
	cp "$RUN"/*.log "$RESULTS/daxfs-logs/" 2>/dev/null
	rm -rf "$RUN"
	if [ -z "$finished" ] || [ -n "$interrupted" ]; then
		echo "run.sh: interrupted; partial results in $RESULTS" >&2
	fi
}
trap outer_cleanup EXIT
trap 'exit 130' INT TERM  # until the namespace runs; then Ctrl-C is passed on to it

echo "run.sh: run directory $RUN, results in $RESULTS"
for dev in test scratch; do
	"$VENV/bin/daxfs" mkfs "$RUN/$dev.img" --size "$SIZE" >/dev/null || die "daxfs mkfs failed"
	mkdir "$RUN/$dev"
done
mkdir -m 1777 "$RUN/tmp"

# /sbin/mount.fuse.daxfs inside the namespace (an overlay on /sbin: nothing is created on the host).
mkdir "$RUN/sbin" "$RUN/bin"
cat >"$RUN/sbin/mount.fuse.daxfs" <<EOF
#!/bin/bash
# mount -t fuse.daxfs in the xfstests namespace of tools/xfstests/run.sh: the daxfs under test.
# Its stdout ("daxfs mounted ...") goes to a log: xfstests compares what mount prints with golden output.
exec >>"$RUN/mount-helper.log"
echo "\$(date +%T.%N) mount.fuse.daxfs \$*"
# umount(8) of a FUSE mount returns before the daemon has checkpointed and let go of the image;
# a mount that follows at once would find the image locked. Wait for that daemon (at most 30 s),
# unless the image is really mounted (then daxfs answers for itself).
if [ -f "\$1" ]; then
	for ((i = 0; i < 300; i++)); do
		flock -n "\$1" true 2>/dev/null && break
		findmnt -rn -S "\$1" >/dev/null && break
		sleep 0.1
	done
fi
exec "$VENV/bin/mount.fuse.daxfs" "\$@"
EOF
# df: xfstests checks that the mounted type (df -T) is FSTYP, "fuse"; a daxfs mount reads "fuse.daxfs".
cat >"$RUN/bin/df" <<EOF
#!/bin/bash
set -o pipefail
$(type -P df) "\$@" | sed -e 's/ fuse\.daxfs / fuse /'
EOF
chmod 755 "$RUN/sbin/mount.fuse.daxfs" "$RUN/bin/df"

# The test users of xfstests' README, in private copies of /etc/passwd & co bind-mounted in the namespace.
if [ -n "$USERS" ]; then
	mkdir "$RUN/etc" "$RUN/home"
	for f in passwd group shadow gshadow; do [ -f /etc/$f ] && cp -p /etc/$f "$RUN/etc/$f"; done
	id=60100
	for user in fsgqa fsgqa2 123456-fsgqa; do
		if ! getent passwd $user >/dev/null; then
			while getent passwd $id >/dev/null || getent group $id >/dev/null; do id=$((id + 1)); done
			echo "$user:x:$id:$id::$RUN/home/$user:/bin/bash" >>"$RUN/etc/passwd"
			getent group $user >/dev/null || echo "$user:x:$id:" >>"$RUN/etc/group"
			[ -f "$RUN/etc/shadow" ] && echo "$user:!:20000:0:99999:7:::" >>"$RUN/etc/shadow"
			[ -f "$RUN/etc/gshadow" ] && echo "$user:!::" >>"$RUN/etc/gshadow"
			mkdir -m 700 "$RUN/home/$user" && chown $id:$id "$RUN/home/$user"
			id=$((id + 1))
		fi
	done
fi

cat >"$RUN/local.config" <<EOF
# Written by daxfs tools/xfstests/run.sh (docs/xfstests.md says why each line is here).
export FSTYP=fuse
export FUSE_SUBTYP=.daxfs
export TEST_DEV=$RUN/test.img
export TEST_DIR=$RUN/test
export SCRATCH_DEV=$RUN/scratch.img
export SCRATCH_MNT=$RUN/scratch
export FUSE_MOUNT_OPTIONS="-o $OPTIONS"
export RESULT_BASE=\${RESULT_BASE:-$RESULTS}  # check -n lists the tests into a results directory of its own
EOF
cp "$RUN/local.config" "$RESULTS/local.config"

echo "run.sh: daxfs $("$VENV/bin/python" -c 'import daxfs, os; print(os.path.dirname(daxfs.__file__))'),"\
     "xfstests $XFSTESTS, ./check ${args[*]}"
# In a process group of its own (set -m), so that Ctrl-C, SIGINT or SIGTERM to this script reaches
# check and the test it runs the same way whether we run on a terminal or in the background; the
# daxfs daemons have sessions of their own and are unmounted by the namespace's cleanup instead.
set -m
DAXFS_XFSTESTS_INNER=1 RUN=$RUN SBIN=$SBIN VENV=$VENV XFSTESTS=$XFSTESTS RESULTS=$RESULTS \
	HOST_OPTIONS=$RUN/local.config TMPDIR=$RUN/tmp PATH="$RUN/bin:$PATH" \
	unshare -m --propagation private -- "$BASH" "${BASH_SOURCE[0]}" "${args[@]}" </dev/null &
child=$!
set +m
# SIGTERM, not SIGINT: a shell started in the background ignores SIGINT and cannot trap it (check and
# every test trap 15 as they trap 2).
trap 'interrupted=1; echo "run.sh: interrupting check" >&2; kill -TERM -- -$child 2>/dev/null' INT TERM
while :; do
	wait $child
	status=$?
	kill -0 $child 2>/dev/null || break
done
trap 'exit 130' INT TERM
finished=$(date +%s)

summary_args=("$RESULTS" --xfstests "$XFSTESTS" --seconds $((finished - started)) --config "$RUN/local.config")
[ -n "$JSON" ] && summary_args+=(--json "$JSON")
"$VENV/bin/python" "$here/summarize.py" "${summary_args[@]}" || status=1
exit $status
