"""The `daxfs` command. Click gives subcommands, option parsing and help text (docs/design.md says why).

Every error a user can cause ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import json
import re
import sys

import click

from daxfs.errors import DaxfsError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'256M', '4G', '4GiB', '1048576' -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise click.BadParameter(f"{text!r} is not a size (examples: 64M, 4G, 1048576)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


class SizeType(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except click.BadParameter as e:
            self.fail(e.message, param, ctx)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"daxfs: {message}", err=True)
    sys.exit(code)


def friendly(code: int = 1):
    """Turn the errors a user can cause into one line and exit `code`."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except DaxfsError as e:
                fail(str(e), code)
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


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--size", "-s", type=SizeType(), required=True, help="image size: 256M, 4G, ...")
@click.option("--inodes", type=int, default=None, help="inode count (default: one per 16 KiB)")
@click.option("--journal", "journal_size", type=SizeType(), default=None, help="journal size (default: 1/64 of the image, 1-64 MiB)")
@click.option("--force", is_flag=True, help="overwrite an existing image or file")
@friendly()
def mkfs(image: str, size: int, inodes: int | None, journal_size: int | None, force: bool) -> None:
    """Create a daxfs image (a sparse file, mode 0600)."""
    from daxfs.fs import mkfs as make

    jb = journal_size // 4096 if journal_size else None
    sb = make(image, size, inodes=inodes, journal_blocks=jb, force=force)
    click.echo(f"{image}: {sb.total_blocks * 4096 >> 20} MiB, {sb.total_blocks - sb.data_start} data blocks, "
               f"{sb.inode_count} inodes, journal {sb.journal_blocks} blocks")


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="machine-readable report")
def fsck(image: str, as_json: bool) -> None:
    """Check every invariant of an image. Exit 0 clean, 4 errors found, 8 operational error."""
    from daxfs.fsck import check

    try:
        report = check(image)
    except DaxfsError as e:
        fail(str(e), 8)
    except OSError as e:
        fail(f"{image}: {e.strerror or e}", 8)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for line in report.lines():
            click.echo(line)
    sys.exit(0 if report.clean else 4)


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly()
def inspect(image: str, as_json: bool) -> None:
    """Geometry, usage, journal state and inode count of an image."""
    from daxfs.fsck import describe

    info = describe(image)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            click.echo(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
