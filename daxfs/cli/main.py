"""The `daxfs` command. Click gives subcommands, option parsing and help text (docs/design.md says why).

Every error a user can cause ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
import time

import click

from daxfs.cli.sizes import SizeType
from daxfs.dax.protocol import DEAD_MOUNT_ERRNOS, MAP_XATTR, PREALLOC_XATTR, STATS_XATTR
from daxfs.daemon.stats import histogram_lines
from daxfs.engine.errors import DaxfsError

def fail(message: str, code: int = 1) -> None:
    click.echo(f"daxfs: {message}", err=True)
    sys.exit(code)


def quiet_exit_on_closed_pipe() -> None:
    """The reader went away (`daxfs inspect IMG | head`): stop quietly, as coreutils do."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
    sys.exit(141)  # 128 + SIGPIPE, what a shell reports for cat | head


def friendly(code: int = 1):
    """Turn the errors a user can cause into one line and exit `code`."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except DaxfsError as e:
                fail(str(e), code)
            except BrokenPipeError:  # before OSError, of which it is one
                quiet_exit_on_closed_pipe()
            except OSError as e:
                fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}", code)
            except KeyboardInterrupt:
                fail("interrupted", 130)
        return inner
    return wrap


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="daxfs")
def main() -> None:
    """daxfs: a FUSE file system emulating DAX on persistent memory with MAP_SYNC semantics."""


@main.command(short_help='Create an image (a sparse file, mode 0600).')
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--size", "-s", type=SizeType(), required=True, help="image size: 256M, 4G, ...")
@click.option("--inodes", type=int, default=None, help="inode count (default: one per 16 KiB)")
@click.option("--journal", "journal_size", type=SizeType(), default=None, help="journal size (default: 1/64 of the image, 1-64 MiB)")
@click.option("--force", is_flag=True, help="overwrite an existing image or file")
@friendly()
def mkfs(image: str, size: int, inodes: int | None, journal_size: int | None, force: bool) -> None:
    """Create a daxfs image (a sparse file, mode 0600)."""
    from daxfs.engine.mkfs import mkfs as make

    jb = journal_size // 4096 if journal_size else None
    sb = make(image, size, inodes=inodes, journal_blocks=jb, force=force)
    click.echo(f"{image}: {sb.total_blocks * 4096 >> 20} MiB, {sb.total_blocks - sb.data_start} data blocks, "
               f"{sb.inode_count} inodes, journal {sb.journal_blocks} blocks")


@main.command(short_help='Check an image; --repair a damaged journal.')
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report")
@click.option("--repair", is_flag=True, help="keep what a damaged journal replays, discard the committed transactions "
              "past the damage, reset the journal, and report what was lost")
def fsck(image: str, as_json: bool, repair: bool) -> None:
    """Check every invariant of an image. Exit 0 clean, 1 errors fixed (--repair), 4 errors left,
    8 operational error."""
    from daxfs.engine.fsck import check
    from daxfs.engine.repair import repair_journal

    try:
        fixed = repair_journal(image) if repair else None
        report = check(image)
    except DaxfsError as e:
        fail(str(e), 8)
    except OSError as e:
        fail(f"{image}: {e.strerror or e}", 8)
    if as_json:
        doc = report.as_dict()
        if fixed is not None:
            doc["repair"] = {"replayed": fixed.replayed, "lost": [vars(x) for x in fixed.lost]}
        click.echo(json.dumps(doc, indent=2))
    else:
        for line in (fixed.lines() if fixed is not None else []) + report.lines():
            click.echo(line)
    sys.exit(4 if not report.clean else 1 if fixed is not None and fixed.changed else 0)


@main.command(short_help='Geometry, usage and journal state of an image.')
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly()
def inspect(image: str, as_json: bool) -> None:
    """Geometry, usage, journal state and inode count of an image."""
    from daxfs.engine.describe import describe

    info = describe(image)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            click.echo(f"{k:<{width}}  {v}")


@main.command(short_help='Mount an image; returns once the mount answers.')
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("mountpoint", type=click.Path())
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
              help="map_sync, commit=SECONDS (default 5), ro, allow_other, debug, nomsync, log=FILE, crash_at=POINT:N")
@click.option("-f", "foreground", is_flag=True, help="stay in the foreground")
@click.option("--quiet", "-q", is_flag=True, help="print nothing on success, as mount(8) helpers do")
@click.option("--ready-fd", type=int, default=None, hidden=True)
@friendly()
def mount(image: str, mountpoint: str, options: tuple[str, ...], foreground: bool, quiet: bool,
          ready_fd: int | None) -> None:
    """Mount IMAGE on MOUNTPOINT; returns once the mount answers (the daemon logs to IMAGE.log)."""
    from daxfs.daemon import mount as daemon
    from daxfs.daemon.options import parse_options
    from daxfs.engine.pmem import lock_image, where_mounted

    opts = parse_options(list(options))
    image, mountpoint = os.path.abspath(image), os.path.abspath(mountpoint)
    if opts.remount:  # the image is mounted already: switch it between ro and rw
        daemon.remount(mountpoint, opts.ro, (lambda line: None) if quiet else click.echo)
        return
    if not os.path.isfile(image):
        raise DaxfsError(f"{image}: no such image" if not os.path.exists(image) else f"{image}: not a regular file")
    daemon.check_mountpoint(mountpoint)
    if not foreground:
        # Here, not in the daemon: a refusal must not land in the log of the daemon that holds the
        # image. A daemon whose mount is gone (umount(8) returns at once) may still be checkpointing:
        # wait for it; one still mounted somewhere is refused at once.
        os.close(lock_image(image, wait=0 if where_mounted(image) else LOCK_WAIT))
        sys.exit(daemon.start_background(image, mountpoint, opts, (lambda line: None) if quiet else click.echo,
                                         functools.partial(click.echo, err=True)))
    ready = os.fdopen(ready_fd, "w", buffering=1) if ready_fd is not None else None

    def tell(line: str) -> None:
        if ready is not None:
            ready.write(line + "\n")
            if line == "ready":
                ready.close()
        elif line != "ready":
            click.echo(line)

    _log_to_stderr(opts.debug)
    try:
        daemon.serve(image, mountpoint, opts, tell)
    except DaxfsError as e:
        if ready is not None and not ready.closed:
            tell(f"daxfs: {e}")
        raise


LOCK_WAIT = 30.0  # seconds a mount waits for a previous daemon of the image to finish exiting


def _log_to_stderr(debug: bool) -> None:
    import logging

    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s daxfs[%(process)d] %(levelname)s %(message)s")


@main.command(short_help='Commit, checkpoint, mark clean and unmount.')
@click.argument("mountpoint", type=click.Path())
@click.option("--lazy", "-l", is_flag=True, help="detach now even if files are open (umount -l)")
@friendly()
def umount(mountpoint: str, lazy: bool) -> None:
    """Commit, checkpoint, mark the image clean and unmount; cleans up a dead mount too."""
    from daxfs.daemon.mount import unmount

    unmount(os.path.abspath(mountpoint), click.echo, lazy=lazy)


def _xattr(path: str, name: str) -> bytes:
    try:
        return os.getxattr(path, name)
    except OSError as e:
        if e.errno in DEAD_MOUNT_ERRNOS:
            raise DaxfsError(f"{path}: dead mount (the daemon was killed); run `daxfs umount` on it") from None
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            raise DaxfsError(f"{path}: not on a daxfs mount") from None
        raise


@main.command(short_help="The daemon's counters and latency histograms.")
@click.argument("mountpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly()
def stats(mountpoint: str, as_json: bool) -> None:
    """The daemon's counters: writes, sync faults, commits, direct-access faults, their latency
    histograms, unstable blocks."""
    d = json.loads(_xattr(mountpoint, STATS_XATTR))
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    hists = {k: d.pop(k) for k in list(d) if k.endswith("_latency")}
    d["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(d["started"]))
    width = max(len(k) for k in d)
    for k, v in d.items():
        click.echo(f"{k:<{width}}  {v}")
    for name, hist in hists.items():  # commits, then direct-access faults, in the seed's format
        click.echo(f"{name.replace('_', ' ')}:")
        for line in histogram_lines(hist):
            click.echo(f"  {line}")


@main.command(name="map", short_help="A file's extents and their stability (filefrag -v).")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly()
def map_cmd(file: str, as_json: bool) -> None:
    """The file's extents, like filefrag -v: file range, pmem offset, state, stable/unstable."""
    d = json.loads(_xattr(file, MAP_XATTR))
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    bs = d["block_size"]
    nblocks = (d["size"] + bs - 1) // bs
    click.echo(f"File size of {file} is {d['size']} ({nblocks} block{'s' * (nblocks != 1)} of {bs} bytes), "
               f"{d['blocks']} allocated{', i_size unstable' if d['size_unstable'] else ''}; offsets and lengths "
               f"in {bs}-byte blocks")
    click.echo(" ext:     logical_offset:        pmem_offset: length:  state:     stability:")
    for i, (lblk, n, pblk, state, stable) in enumerate(d["extents"]):
        phys = f"{pblk}..{pblk + n - 1}" if pblk is not None else "-"
        click.echo(f"{i:4}: {lblk:>9}..{lblk + n - 1:<9} {phys:>20} {n:>7}  {state:<10} "
                   f"{'stable' if stable else 'unstable'}")
    if d.get("truncated"):
        click.echo("(more extents than fit in one reply; use --json on a smaller file)")


@main.command(short_help='Preallocate unwritten extents (fallocate mode 0).')
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("offset", type=SizeType())
@click.argument("length", type=SizeType())
@friendly()
def prealloc(file: str, offset: int, length: int) -> None:
    """Preallocate unwritten extents for [OFFSET, OFFSET+LENGTH) (fallocate mode 0): they read as
    zeros, and a later write only converts them."""
    _xattr(file, STATS_XATTR)  # elsewhere the setxattr below would just set a user xattr
    try:
        os.setxattr(file, PREALLOC_XATTR, f"{offset} {length}".encode())
    except OSError as e:
        if e.errno in DEAD_MOUNT_ERRNOS:
            raise DaxfsError(f"{file}: dead mount (the daemon was killed); run `daxfs umount` on it") from None
        if e.errno == errno.ENOTSUP:
            raise DaxfsError(f"{file}: not on a daxfs mount") from None
        raise
    # The daemon can only mark the kernel's attributes stale; a getattr loads the new i_size into the
    # kernel's inode, which O_APPEND writes (no writeback cache) take as EOF without asking.
    os.stat(file)


@main.command(short_help='Crash-test daxfs or your own program.')
@click.option("--mode", type=click.Choice(["sync", "normal"]), default="sync", show_default=True,
              help="sync: -o map_sync; normal: the default commit interval")
@click.option("--points", type=click.IntRange(min=0), default=20, show_default=True,
              help="random crash points (a SIGKILL after a random delay), spread over the workloads")
@click.option("--seed", type=int, default=None, help="campaign seed (default: random, printed)")
@click.option("--workload", "workloads", multiple=True, metavar="NAME",
              help="a built-in workload (repeatable; default: all), or 'ace' for the exhaustive generator")
@click.option("--cmd", default="", metavar="SHELL", help="crash-test your own program: run SHELL in the mount "
              "($DAXFS_MNT; it may log acknowledgements to $DAXFS_ORACLE)")
@click.option("--check", "check_cmd", default="", metavar="SHELL",
              help="with --cmd: run after the remount; exit 0 if what survived is acceptable")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=2, show_default=True, help="cases at once")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None, help="write a JSON report")
@click.option("--no-inject", is_flag=True, help="random crash points only, not every injection point")
@click.option("--passes-per-point", type=click.IntRange(min=1), default=3, show_default=True,
              help="injection points passed more often are crashed at this many passes (first, last, between)")
@click.option("--sequences", type=click.IntRange(min=1), default=None,
              help="with --workload ace: a random sample of this many sequences (default: all)")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="copy the images and logs of every failed case into this directory")
@click.option("--list-points", is_flag=True, help="list the injection points and exit")
@click.option("--workload-seed", type=int, default=None, help="replay one case: its workload's seed")
@click.option("--sequence", type=int, default=None, help="replay one case: its ace sequence number")
@click.option("--crash-after", type=float, default=None, metavar="SECONDS",
              help="replay one case: SIGKILL this long after the workload starts")
@click.option("--crash-at", default=None, metavar="POINT:N",
              help="replay one case: SIGKILL at the N-th pass of an injection point, or 'end' or 'replay'")
@friendly()
def crashtest(mode, points, seed, workloads, cmd, check_cmd, jobs, json_file, no_inject, passes_per_point,
              sequences, keep, list_points, workload_seed, sequence, crash_after, crash_at) -> None:
    """Crash-test daxfs (or your program): mount, run a workload, SIGKILL the daemon (at random, or at
    every injection point it passes), remount, fsck, check every acknowledgement. Exit 1 on any violation."""
    from daxfs.testing import report as crashreport

    if list_points:
        crashreport.print_points()
        return
    sys.exit(crashreport.main(mode=mode, points=points, seed=seed, workloads=list(workloads), cmd=cmd,
                              check=check_cmd, jobs=jobs, json_file=json_file, inject=not no_inject,
                              passes_per_point=passes_per_point, sequences=sequences, keep=keep,
                              workload_seed=workload_seed, sequence=sequence, crash_after=crash_after,
                              crash_at=crash_at))


@main.group(invoke_without_command=True, short_help='What MAP_SYNC keeps after a crash, and what it costs.')
@click.pass_context
@friendly()
def demo(ctx: click.Context) -> None:
    """Show what MAP_SYNC buys and costs: both modes, a SIGKILL, a remount, side by side."""
    if ctx.invoked_subcommand is None:
        from daxfs.cli.demo import main as run

        run()


@demo.command(name="faults")
@click.option("--png", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="also draw the six histograms into FILE (needs matplotlib: pip install 'daxfs[plot]')")
@friendly()
def demo_faults(png: str | None) -> None:
    """The MAP_SYNC cover letter's page-fault latencies (512 pages, six cases), redone on daxfs beside
    the letter's own numbers, then what MAP_SYNC keeps after a SIGKILL."""
    from daxfs.cli.demo_faults import main as run

    run(png)


@main.command(short_help="Run a program with real DAX mappings (MAP_SYNC) of daxfs files.",
              context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="[--] PROGRAM [ARGS]...")
def run(command: tuple[str, ...]) -> None:
    """Run PROGRAM with the preload library of daxfs.dax: its mmap(MAP_SHARED[_VALIDATE] [| MAP_SYNC])
    of files on daxfs mounts become real DAX mappings, faulted by the daemon (docs/run.md). The
    program replaces this process (exec): same pid, so its signals and exit status are the caller's."""
    import glob

    if command and command[0] == "--":
        command = command[1:]
    if not command:
        fail("run: no program given (daxfs run [--] PROGRAM [ARGS]...)", 2)
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dax")
    libs = sorted(glob.glob(os.path.join(here, "_preload*.so")))
    if not libs:
        fail(f"run: the preload library is missing from {here} (not built): reinstall daxfs "
             "(pip install -e . in the checkout, or make venv)", 1)
    env = dict(os.environ)
    env["LD_PRELOAD"] = libs[0] + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    sys.stdout.flush()
    try:
        os.execvpe(command[0], list(command), env)
    except FileNotFoundError:
        fail(f"{command[0]}: command not found", 127)  # a shell's answer
    except PermissionError:
        fail(f"{command[0]}: permission denied", 126)
    except OSError as e:
        fail(f"{command[0]}: {e.strerror or e}", 126)


def mount_helper() -> None:
    """`mount -t fuse.daxfs IMAGE DIR -o OPTS` and fstab lines run this as /sbin/mount.fuse.daxfs."""
    args = sys.argv[1:]
    positional, options = [], []
    while args:
        a = args.pop(0)
        if a == "-o" and args:
            options += ["-o", args.pop(0)]
        elif a.startswith("-o") and len(a) > 2:
            options += ["-o", a[2:]]
        elif a in ("-n", "-s", "-v", "-f", "-r", "-w"):  # mount(8)'s own flags
            if a == "-r":
                options += ["-o", "ro"]
        else:
            positional.append(a)
    if len(positional) != 2:
        fail("usage: mount.fuse.daxfs IMAGE MOUNTPOINT [-o OPTIONS]", 1)
    main(["mount", "--quiet", *positional, *options])  # mount(8) helpers are silent on success

