"""``zeroshot cache ls`` and ``cache prune``: what the on-disk cache holds, and freeing it."""
from __future__ import annotations

import time

from .options import add_cache_arg


def _size(n: int) -> str:
    """Bytes as a short human-readable size."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _row(e) -> list[str]:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
    rows = f"{e.rows} file{'' if e.rows == 1 else 's'}" if e.kind == "text" else str(e.rows)
    state = "complete" if e.complete else "incomplete"
    return [e.fingerprint, e.kind, e.backbone or "-", e.location or "-", rows, _size(e.bytes), when, state]


def _print_table(entries) -> None:
    table = [["fingerprint", "kind", "backbone", "data", "rows", "size", "last used", "state"]]
    table += [_row(e) for e in entries]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def cmd_ls(args) -> None:
    from ..cache import list_entries, resolve_cache_dir

    entries = list_entries(args.cache_dir)
    print(f"cache {resolve_cache_dir(args.cache_dir)}: {len(entries)} entries, "
          f"{_size(sum(e.bytes for e in entries))}")
    if entries:
        _print_table(entries)


def cmd_prune(args) -> None:
    from ..cache import prune

    if not (args.all or args.fingerprint or args.incomplete or args.older_than is not None):
        raise ValueError("say what to remove: --older-than DAYS, --fingerprint FP, --incomplete or --all")
    removed = prune(args.cache_dir, older_than_days=args.older_than, fingerprint=args.fingerprint,
                    incomplete=args.incomplete, everything=args.all, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for e in removed:
        print(f"{verb} {e.path} ({_size(e.bytes)})")
    print(f"{verb} {len(removed)} entries, {_size(sum(e.bytes for e in removed))} freed")


def add_commands(sub) -> None:
    group = sub.add_parser("cache", help="list or prune the feature / text cache").add_subparsers(
        dest="cache_command", required=True)
    p = group.add_parser("ls", help="one row per cache entry: backbone, data, rows, size, last use, state")
    add_cache_arg(p)
    p.set_defaults(func=cmd_ls)

    p = group.add_parser("prune", help="remove cache entries matching every option given")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="entries not used for DAYS days")
    p.add_argument("--fingerprint", metavar="FP", help="entries of this backbone fingerprint (a prefix)")
    p.add_argument("--incomplete", action="store_true", help="unfinished extractions only")
    p.add_argument("--all", action="store_true", help="every entry")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    add_cache_arg(p)
    p.set_defaults(func=cmd_prune)
