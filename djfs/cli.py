"""``djfs`` command line: entry points only; the work is done by djfs.fs and the library.

    djfs mount MOUNTPOINT [-f] [-o OPTIONS] [--schema NAME]...   read-only FUSE view (see djfs.fs.mount)
    djfs umount MOUNTPOINT [-z]                                  unmount; also clears a stale mount
    djfs gc SCHEMA [--run] [--grace SECONDS] [--folder NAME]     garbage-collect external objects (dry run)
    djfs cache info|clear [--location DIR]                       the local object cache

Database credentials come from djfs's configuration (DJ_HOST, DJ_USER, DJ_PASS, dj_local_conf.json or
$DJ_CONFIG), never from arguments, which every user of the host can read.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from .errors import DjfsError


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other error of a command."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: {message} (see {self.prog.split()[0]} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="djfs", description="djfs: DataJoint-style pipelines with external "
                                     "storage, and a read-only file system view of them")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    mount = commands.add_parser("mount", help="mount the read-only view of schemas at MOUNTPOINT",
                                description="Mount a read-only view of schemas, tables, rows and their external "
                                "attributes.  Options (-o) are listed in the documentation of djfs.fs.mount.")
    mount.add_argument("mountpoint")
    mount.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    mount.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                       help="mount options, e.g. -o allow_other,cache_size=50GiB,schemas=lab:imaging")
    mount.add_argument("--schema", action="append", default=[], help="show only this schema (repeatable)")
    mount.add_argument("--log-file", help="where the daemon logs (background default: "
                       "~/.local/state/djfs/mount-<mountpoint>.log; foreground: stderr)")
    mount.add_argument("--debug", action="store_true", help="log every FUSE request")

    umount = commands.add_parser("umount", help="unmount; also clears a stale mount whose daemon died")
    umount.add_argument("mountpoint")
    umount.add_argument("-z", "--lazy", action="store_true", help="detach now even if files are open")

    gc = commands.add_parser("gc", help="remove external objects no row references (dry run unless --run)")
    gc.add_argument("schema")
    gc.add_argument("--run", action="store_true", help="really remove (default: only report)")
    gc.add_argument("--grace", type=float, default=3600.0, metavar="SECONDS",
                    help="leave objects younger than this alone (inserts in flight); default 3600")
    gc.add_argument("--folder", help="also sweep orphans in this folder/bucket of the schema")

    cache = commands.add_parser("cache", help="show or clear the local object cache")
    cache.add_argument("action", choices=["info", "clear"])
    cache.add_argument("--location", help="the cache directory (default: configuration cache-location)")
    return parser


def _mount(args: argparse.Namespace) -> int:
    from .fs import mount
    return mount(args.mountpoint, args.options, args.schema, foreground=args.foreground, log_file=args.log_file,
                 debug=args.debug)


def _umount(args: argparse.Namespace) -> int:
    from .fs import unmount
    print(f"{args.mountpoint}: {unmount(args.mountpoint, lazy=args.lazy)}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    import djfs
    schema = djfs.Schema(args.schema, create_schema=False)
    if args.folder:
        schema.set_external_storage(args.folder)
    reports = [schema.external.gc(dry_run=not args.run, grace=args.grace)]
    for store in schema.external.datajoint:  # DataJoint's own stores: ~external_<store>
        reports.append(schema.external[store].gc(dry_run=not args.run, grace=args.grace))
        print(f"store {store!r}: ", end="")
        print(reports[-1])
    print(reports[0])
    return 1 if any(report.failed for report in reports) else 0


def _cache(args: argparse.Namespace) -> int:
    from . import config
    from .cache import open_cache
    location = args.location or config["cache-location"]
    if not location:
        raise DjfsError("no cache configured: set cache-location (dj_local_conf.json) or pass --location")
    cache = open_cache(location, config["cache-size"])
    if args.action == "clear":
        cache.clear()
        print(f"cleared {location}")
    else:
        print(json.dumps(cache.stats(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"mount": _mount, "umount": _umount, "gc": _gc, "cache": _cache}[args.command]
    warnings.showwarning = lambda message, *_, **__: print(f"djfs {args.command}: warning: {message}",
                                                           file=sys.stderr)
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - a command reports every failure in one line, never a traceback
        text = " ".join(str(error).split()) or type(error).__name__
        if not isinstance(error, (DjfsError, OSError)):
            text = f"{type(error).__name__}: {text}"
        print(f"djfs {args.command}: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
