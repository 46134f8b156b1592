"""``mlserve features ...``: apply, ingest, materialize, copy, gc, get, list.

``add_parser(subparsers)`` adds the ``features`` command to the main parser; ``run(args)``
executes it and returns the exit status (errors print one line saying what to do, exit 1).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from mlserve.errors import InvalidInput, MlserveError

from ._settings import CLI_HELP, CLI_METAVAR
from ._time import ns_to_iso, to_ns
from .online import RowStatus

_LIST_KINDS = {"entities": "entity", "views": "view", "services": "service"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``features`` and its subcommands to an ``add_subparsers()`` object."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", metavar=CLI_METAVAR, default=argparse.SUPPRESS,
                        help=f"feature store: {CLI_HELP}")
    feat: argparse.ArgumentParser = subparsers.add_parser(
        "features", parents=[common], help="feature store: definitions, offline and online data",
        description="Entities, feature views and services (versioned definitions), Parquet "
        "offline data with point-in-time correct joins, and an LMDB online store with TTLs.")
    sub = feat.add_subparsers(dest="features_command", required=True, metavar="SUBCOMMAND")

    def add(name: str, help_text: str, description: str = "") -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, parents=[common], help=help_text, description=description or help_text)
        return p

    p = add("apply", "validate and record the definitions of a TOML file",
            "Validates the entities, feature views and feature services declared in FILE and "
            "records them: a view whose schema changed gets a new version (old versions and "
            "their data stay readable); TTL, source and description update in place.")
    p.add_argument("file", metavar="FILE.toml")
    p.add_argument("--dry-run", action="store_true", help="validate and report, record nothing")
    p = add("ingest", "append a CSV or Parquet file to a feature view's offline data",
            "Checks FILE against the view's schema (join keys, event_ts, columns and their "
            "types; created_ts optional, default: now) and appends it as a Parquet part.")
    p.add_argument("view", metavar="VIEW", help="NAME (latest version) or NAME/VERSION")
    p.add_argument("file", metavar="FILE", nargs="?",
                   help="a .csv or .parquet file (default: the view's source)")
    p = add("materialize", "copy the latest offline values into the online store",
            "With --start: per entity, the latest row with START <= event_ts <= END. With "
            "--incremental: what was ingested or became due since the view's last incremental "
            "run. Never replaces a newer online value with an older one.")
    p.add_argument("views", metavar="VIEW", nargs="*",
                   help="NAME or NAME/VERSION (default: the latest version of every view, and "
                   "the versions any feature service version pins)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--start", metavar="TIME", help="ISO 8601 time: full window from here")
    mode.add_argument("--incremental", action="store_true", help="since the last run")
    p.add_argument("--end", metavar="TIME", default="now", help="ISO 8601 time (default: now)")
    p.add_argument("--every", metavar="SECONDS", type=float, default=None,
                   help="with --incremental: run again every SECONDS until stopped (SIGTERM or "
                   "Ctrl-C), one line per view and run; a failed run is reported and retried "
                   "(e.g. a sidecar beside `mlserve serve --feature-store s3://...`)")
    p = add("copy", "copy the whole store (definitions and offline data) into an empty one",
            "Copies every definition version and every offline part of the store given by "
            "--store into the empty store at --to: a directory onto s3://BUCKET/PREFIX to share "
            "it, or back. Parts keep their names; definitions land last, in one transaction. "
            "Run it again after a failure: what was copied is kept. The online store is not "
            "copied: run `materialize` where you serve.")
    p.add_argument("--to", metavar=CLI_METAVAR, required=True,
                   help="the destination: a new or empty directory, or s3://BUCKET/PREFIX")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = add("gc", "free this machine's cache of a store shared through object storage",
            "Removes temp files of dead processes, old snapshots of the definitions, and "
            "copies of offline parts unused for --grace seconds that are gone from the store "
            "or belong to an older view version (downloaded again if used). Never touches the "
            "online store. Nothing to do for a store in a directory.")
    p.add_argument("--grace", metavar="SECONDS", type=_grace, default=3600.0,
                   help="leave what was used within this many seconds (default 3600, at least "
                   "60: a join or materialize may be reading the rest)")
    p = add("get", "print the online features of a service for some entities",
            "KEY is a join key value when the service has one join key, else "
            "NAME=VALUE[,NAME=VALUE...]. Values older than the view's TTL show as expired.")
    p.add_argument("service", metavar="SERVICE", help="a feature service (NAME or NAME/VERSION)"
                   " or a feature view")
    p.add_argument("keys", metavar="KEY", nargs="+")
    p.add_argument("--now", metavar="TIME", default="now",
                   help="time at which TTLs are checked (default: now)")
    p = add("list", "list entities, feature views and services")
    p.add_argument("kind", nargs="?", choices=sorted(_LIST_KINDS), help="only this kind")
    p.add_argument("--all-versions", action="store_true", help="every version, not the latest")
    return feat


def _console() -> Console:
    return Console(file=sys.stdout, width=140, highlight=False, soft_wrap=True)


def run(args: argparse.Namespace) -> int:
    """Runs the parsed ``features`` subcommand; returns the exit status."""
    from .store import FeatureStore

    try:
        with FeatureStore(getattr(args, "store", None)) as store:
            return _run(store, args, _console())
    except MlserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


#: Runs in a row in which every view failed (or listing them did) before ``--every`` gives up
#: (exit 1), so that a sidecar with a lasting problem (credentials, a deleted bucket) is
#: restarted and shows it.
EVERY_MAX_FAILED_RUNS = 10


def _grace(text: str) -> float:
    value = float(text)
    if not value >= 60:
        raise argparse.ArgumentTypeError(f"{text}: at least 60 seconds")
    return value


def _default_views(store: Any) -> list[str]:
    """What ``materialize`` without VIEW covers: the latest version of every view, and every
    view version that a version of a service pins (a model trained on an older service version
    reads the view versions it pinned)."""
    refs = [f"{i.name}/{i.version}" for i in store.registry.list("view")]
    for info in store.registry.list("service", all_versions=True):
        refs += [f"{sel.view}/{sel.version}" for sel in info.definition.selections]
    return list(dict.fromkeys(refs))


def _materialize_every(store: Any, args: argparse.Namespace, out: Console) -> int:
    """``materialize --incremental --every SECONDS``: incremental runs up to now, repeated
    until SIGTERM/SIGINT (exit 0). Views are listed again on every run (new ones are picked
    up); a view that fails is reported on stderr and retried next run, the others go on; after
    :data:`EVERY_MAX_FAILED_RUNS` runs in a row with nothing done, exit 1."""
    if not args.incremental or args.every <= 0 or args.end != "now":
        raise InvalidInput("--every SECONDS needs --incremental, SECONDS > 0 and no --end "
                           "(each run goes up to its own now)")
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))

    def failed(what: str, exc: Exception) -> None:
        text = str(exc) if isinstance(exc, MlserveError) else f"{type(exc).__name__}: {exc}"
        print(f"error: {what}: {text} (retrying in {args.every:g} s)", file=sys.stderr,
              flush=True)

    failed_runs = 0
    while not stopping:
        started = time.monotonic()
        done = errors = 0
        try:
            views = args.views or _default_views(store)
        except Exception as exc:  # a sidecar keeps going: the next run retries
            failed("listing the views", exc)
            views, errors = [], 1
        for view in views:
            if stopping:
                break
            try:
                r = store.materialize_incremental(view, "now")
            except Exception as exc:
                failed(f"materializing {view}", exc)
                errors += 1
                continue
            done += 1
            out.print(f"{ns_to_iso(r.end_ns)} {r.view}: {r.rows} rows, {r.written} "
                      f"written, {r.kept_newer} kept (newer)", markup=False)
        sys.stdout.flush()
        failed_runs = failed_runs + 1 if errors and not done else 0
        if failed_runs >= EVERY_MAX_FAILED_RUNS:
            print(f"error: {failed_runs} runs in a row failed; stopping", file=sys.stderr)
            return 1
        while not stopping and time.monotonic() - started < args.every:
            time.sleep(min(0.2, args.every))
    return 0


def _parse_keys(service_keys: tuple[str, ...], raw: list[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {k: [] for k in service_keys}
    for item in raw:
        if "=" in item:
            pairs = dict(p.split("=", 1) for p in item.split(","))
        elif len(service_keys) == 1:
            pairs = {service_keys[0]: item}
        else:
            raise InvalidInput(f"key {item!r}: this service needs {', '.join(service_keys)}; "
                               "write NAME=VALUE,NAME=VALUE")
        unknown = sorted(set(pairs) - set(service_keys))
        missing = [k for k in service_keys if k not in pairs]
        if unknown or missing:
            raise InvalidInput(f"key {item!r}: expected join keys {', '.join(service_keys)}")
        for k in service_keys:
            out[k].append(pairs[k])
    return out


def _run(store: Any, args: argparse.Namespace, out: Console) -> int:
    cmd = args.features_command
    if cmd == "apply":
        changes = store.apply(args.file, dry_run=args.dry_run)
        table = Table("kind", "name", "version", "action",
                      title="dry run: nothing recorded" if args.dry_run else None)
        for c in changes:
            table.add_row(c.kind, c.name, str(c.version), c.action)
        out.print(table)
    elif cmd == "ingest":
        result = store.ingest(args.view, args.file)
        out.print(f"{result.rows} rows appended to {result.view}"
                  + (f" ({result.part.name})" if result.part else ""), markup=False)
        if result.ignored_columns:
            out.print(f"ignored columns: {', '.join(result.ignored_columns)}", markup=False)
    elif cmd == "materialize" and args.every is not None:
        return _materialize_every(store, args, out)
    elif cmd == "materialize":
        views = args.views or _default_views(store)
        table = Table("view", "from", "to", "rows", "written", "kept (newer)")
        for view in views:
            if args.incremental:
                r = store.materialize_incremental(view, args.end)
            else:
                r = store.materialize(view, args.start, args.end)
            table.add_row(r.view, "-" if r.start_ns is None else ns_to_iso(r.start_ns),
                          ns_to_iso(r.end_ns), str(r.rows), str(r.written), str(r.kept_newer))
        out.print(table)
    elif cmd == "copy":
        from mlserve.progress import rows_progress

        with rows_progress(out, "copying offline parts", args.no_progress, unit="bytes") as bar:
            r = store.copy_to(args.to, progress=bar)
        out.print(f"copied to {r.location}: {r.definitions} definition versions, "
                  f"{r.parts_copied} of {r.parts} offline parts ({r.bytes / 1e6:.1f} MB; the "
                  "others were there already). Online stores are not copied: run `mlserve "
                  f"features materialize --incremental --store {r.location}` where you serve.",
                  markup=False)
    elif cmd == "gc":
        removed = store.gc(args.grace)
        for path in removed:
            out.print(f"removed {path}", markup=False)
        out.print(f"{len(removed)} cache entries removed", markup=False)
    elif cmd == "get":
        reader = store.service_reader(args.service)
        keys = _parse_keys(reader.join_keys, args.keys)
        dtypes: dict[str, str] = {}
        for view, _ in store.resolve(args.service):
            entity = view.resolved_entity
            dtypes.update(zip(entity.join_keys, entity.key_dtypes, strict=True))
        typed = {k: [_int_key(k, v) for v in values] if dtypes[k] == "int64" else values
                 for k, values in keys.items()}
        got = reader.read(typed, now_ns=to_ns(args.now, "--now"))
        table = Table(*reader.join_keys, "status", *got.names)
        for i in range(len(args.keys)):
            status = ", ".join(f"{v}:{s}" if len(got.views) > 1 else s
                               for v, s in zip(got.views, got.status_names()[i], strict=True))
            cells = ["-" if math.isnan(x) else f"{x:.6g}" for x in got.values[i].tolist()]
            table.add_row(*(str(keys[k][i]) for k in reader.join_keys), status, *cells)
        out.print(table)
        if (got.status == RowStatus.MISSING).all():
            out.print("every entity is missing from this machine's online store: has it been "
                      "materialized here? `mlserve features materialize --incremental --store "
                      f"{store.location}` (each machine has its own online store)", markup=False)
    elif cmd == "list":
        plurals = [args.kind] if args.kind else list(_LIST_KINDS)
        for plural in plurals:
            kind = _LIST_KINDS[plural]
            infos = store.registry.list(kind, all_versions=args.all_versions)
            table = Table("name", "version", "details", "updated (UTC)", title=plural)
            for info in infos:
                table.add_row(info.name, str(info.version), _details(info.definition),
                              info.updated_at[:19])
            out.print(table if infos else f"no {plural} in {store.location}", markup=False)
    else:  # pragma: no cover - argparse restricts the choices
        raise AssertionError(cmd)
    return 0


def _int_key(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"join key {name!r} is int64: {text!r} is not an integer") from None


def _details(d: Any) -> str:
    from .definitions import Entity, FeatureView

    if isinstance(d, Entity):
        return ", ".join(f"{k}:{t}" for k, t in zip(d.join_keys, d.key_dtypes, strict=True))
    if isinstance(d, FeatureView):
        ttl = "no TTL" if d.ttl_seconds is None else f"ttl {d.ttl_seconds:g}s"
        cols = ", ".join(f"{c.name}:{c.dtype}" for c in d.columns)
        return f"entity {d.entity_name}; {ttl}; {cols}"
    return "; ".join(f"{s.view}/{s.version}: {', '.join(s.columns or ())}"
                     for s in d.selections)
