"""`loupe duplicates`: list groups of duplicate pictures and bursts, and act on one group.

    loupe duplicates [--json | --csv] [--kind duplicate|burst] [--limit N] [--refresh] [--dismissed]
    loupe duplicates --quarantine GROUP [--keep ID]   move the others under $LOUPE_HOME/quarantine
    loupe duplicates --restore GROUP|ENTRY            put quarantined pictures back
    loupe duplicates --dismiss GROUP | --undismiss GROUP
    loupe duplicates --quarantined                    list what is in the quarantine
"""

from __future__ import annotations

import argparse
import csv
from typing import TextIO

from indexer.errors import ConfigError
from indexer.factory import open_library
from indexer.settings import Settings

from .arguments import positive_int
from .output import print_json

CSV_COLUMNS = ("group", "kind", "keep", "id", "path", "width", "height", "size_bytes", "taken_at", "camera",
               "score", "evidence", "inliers", "reason")


def register(commands: argparse._SubParsersAction) -> None:
    dups = commands.add_parser("duplicates", help="groups of duplicate pictures and bursts; quarantine, restore, dismiss")
    out = dups.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the groups (or the action's result) as JSON")
    out.add_argument("--csv", action="store_true", help="print one CSV row per picture of each group")
    dups.add_argument("--kind", choices=("duplicate", "burst"), default=None, help="only groups of this kind")
    dups.add_argument("--limit", type=positive_int, default=None, help="at most N groups")
    dups.add_argument("--refresh", action="store_true", help="recompute the groups even if the cached ones are current")
    dups.add_argument("--dismissed", action="store_true", help="include dismissed groups")
    action = dups.add_mutually_exclusive_group()
    action.add_argument("--quarantine", metavar="GROUP",
                        help="move every picture of GROUP but the one to keep under $LOUPE_HOME/quarantine")
    action.add_argument("--restore", metavar="GROUP|ENTRY", help="put back a group's (or one entry's) quarantined pictures")
    action.add_argument("--dismiss", metavar="GROUP", help="hide GROUP from now on (remembered)")
    action.add_argument("--undismiss", metavar="GROUP", help="show a dismissed group again")
    action.add_argument("--quarantined", action="store_true", help="list the quarantined pictures")
    dups.add_argument("--keep", type=positive_int, default=None, metavar="ID",
                      help="with --quarantine: keep this member instead of the suggestion")
    dups.set_defaults(handler=cmd_duplicates)


def cmd_duplicates(settings: Settings, args, out: TextIO) -> int:
    from indexer.duplicates import DuplicateOptions
    from indexer.review import DuplicatesReview

    if args.keep is not None and args.quarantine is None:
        raise ConfigError("--keep goes with --quarantine GROUP")
    library = open_library(settings)
    review = DuplicatesReview(library, DuplicateOptions(verify=settings.verify))
    if args.quarantine or args.restore or args.dismiss or args.undismiss:
        return _act(library, review, args, out)
    if args.quarantined:
        entries = [e.as_dict() for e in review.quarantined()]
        if args.json:
            print_json({"entries": entries}, out)
        else:
            for e in entries:
                print(f"{e['id']}\t{e['group'] or '-'}\t{e['original_path']}\t{e['moved_at']}", file=out)
            print(f"loupe: {len(entries)} quarantined pictures", file=out)
        return 0
    if library.stored_identity() is None:
        groups, total, stats = [], 0, {}
    else:
        page = review.page(kind=args.kind, limit=args.limit or 10**9, dismissed=args.dismissed, refresh=args.refresh)
        groups, total, stats = list(page.groups), page.total, page.stats
    if args.json:
        print_json({"groups": [g.as_dict() for g in groups], "total": total, "next": None, "stats": stats}, out)
    elif args.csv:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for g in groups:
            for m in g.members:
                writer.writerow([g.id, g.kind, "yes" if m.id == g.keep else "no", m.id, m.path, m.width, m.height,
                                 m.size_bytes, m.taken_at or "", m.camera or "", m.score, m.evidence,
                                 m.inliers if m.inliers is not None else "", g.reason])
    else:
        for g in groups:
            print(f"{g.id}  {g.kind}, {len(g.members)} pictures; keep {g.keep}: {g.reason}", file=out)
            for m in g.members:
                mark = "keep" if m.id == g.keep else "    "
                print(f"  {mark} {m.id:>8}  {m.width}×{m.height}  {m.path}  ({m.evidence})", file=out)
        print(f"loupe: {total} groups" + (f" (showing {len(groups)})" if len(groups) < total else ""), file=out)
    return 0


def _act(library, review, args, out: TextIO) -> int:
    with library.writer():
        library.sync_store()
        if args.quarantine:
            from indexer.thumbnails import remove_thumbnail

            group, entries = review.quarantine(args.quarantine, keep=args.keep)
            for entry in entries:
                remove_thumbnail(library.settings.home, entry.image_id)
            body = {"group": group.id, "kept": args.keep or group.keep, "quarantined": [e.as_dict() for e in entries]}
            line = f"moved {len(entries)} pictures of group {group.id} to the quarantine (restore: loupe duplicates --restore {group.id})"
        elif args.restore:
            target = args.restore
            if target.isdigit() and len(target) != 16:
                restored = review.restore(entry_ids=[int(target)])
            else:
                restored = review.restore(group_id=target)
            body = {"restored": [{**r.entry.as_dict(), "image_id": r.image_id} for r in restored]}
            line = f"restored {len(restored)} pictures"
        elif args.dismiss:
            group = review.dismiss(args.dismiss)
            body, line = {"group": group.id, "dismissed": True}, f"dismissed group {group.id}"
        else:
            found = review.undismiss(args.undismiss)
            body = {"group": args.undismiss, "dismissed": False}
            line = f"group {args.undismiss} shown again" if found else f"group {args.undismiss} was not dismissed"
    if args.json:
        print_json(body, out)
    else:
        print(f"loupe: {line}", file=out)
    return 0
