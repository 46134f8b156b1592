"""``mlserve registry ...``: list, show, alias, history, tag, archive, verify, gc, copy,
export, import.

``add_parser(subparsers)`` adds the ``registry`` command to the main parser; ``run(args)``
executes it and returns the exit status (errors print a message saying what to do, exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mlserve.errors import MlserveError
from mlserve.registry._settings import CLI_HELP as REGISTRY_HELP
from mlserve.registry._settings import CLI_METAVAR as REGISTRY_METAVAR
from rich.console import Console
from rich.table import Table

from .registry import Registry


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``registry`` and its subcommands to an ``add_subparsers()`` object."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", metavar=REGISTRY_METAVAR, default=argparse.SUPPRESS,
                        help=REGISTRY_HELP)
    reg: argparse.ArgumentParser = subparsers.add_parser(
        "registry", parents=[common], help="manage registered model versions",
        description="Versioned, checksummed model bundles: list, inspect, alias, archive, "
        "verify, gc, copy, export and import. --registry is a directory or s3://BUCKET/PREFIX "
        "(docs/registry.md). References: NAME (latest ready), NAME/3, NAME@alias.")
    sub = reg.add_subparsers(dest="registry_command", required=True, metavar="SUBCOMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, parents=[common], help=help_text, description=help_text)
        return p

    add("list", "list registered models (or versions of one model with NAME)").add_argument(
        "name", nargs="?", help="a model name: list its versions")
    add("show", "show one version: status, aliases, tags, metrics, artifacts").add_argument(
        "ref", help="NAME, NAME/VERSION or NAME@ALIAS")
    p = add("alias", "point NAME@ALIAS at VERSION (recorded in the history)")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("alias")
    p.add_argument("--reason", default="", help="why (kept in the audit history)")
    add("history", "audit history of a model: registrations, alias moves, archives").add_argument(
        "name")
    p = add("tag", "set a tag KEY=VALUE on a version")
    p.add_argument("ref")
    p.add_argument("key")
    p.add_argument("value")
    p = add("archive", "archive a version (NAME no longer resolves to it)")
    p.add_argument("ref")
    p.add_argument("--reason", default="")
    add("verify", "check every blob and version against its sha256").add_argument(
        "--repair", action="store_true",
        help="remove leftovers of interrupted writes and dangling aliases")
    add("gc", "remove leftovers of interrupted writes and blobs no version references")
    p = add("copy", "copy the whole registry given by --registry (versions, artifacts, aliases, "
            "tags, runs, history) into a new, empty one, e.g. onto shared object storage")
    p.add_argument("--to", required=True, metavar=REGISTRY_METAVAR, dest="to",
                   help="the destination: a new directory or s3://BUCKET/PREFIX; anything "
                   "already there but an empty registry is refused")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = add("export", "write a version as a bundle tar (mlserve.json + artifacts)")
    p.add_argument("ref")
    p.add_argument("file", metavar="FILE.tar")
    p = add("add", "register a model trained elsewhere (ONNX or TorchScript)")
    p.add_argument("name", help="model name to register under")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--onnx", metavar="FILE", help="an ONNX model: float32 [n, f] in")
    model.add_argument("--torchscript", metavar="FILE", help="a TorchScript model file")
    p.add_argument("--preprocessing", metavar="PLAN.json",
                   help="the feature plan the model was trained with (default: identity)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--inputs", metavar="NAME:DTYPE,...", help="raw input columns")
    shape.add_argument("--input-width", type=int, metavar="N", help="N unnamed float inputs")
    p.add_argument("--task", default="regression",
                   choices=["binary", "multiclass", "regression"])
    p.add_argument("--unknown-category", default="oov", choices=["oov", "missing", "error"],
                   help="what serving does with an unseen category (categorical plan features): "
                        "the out-of-vocabulary slot, a missing value, or HTTP 400")
    p.add_argument("--unknown-category-feature", action="append", default=[],
                   metavar="FEATURE:POLICY", help="per-feature override (repeatable)")
    p.add_argument("--description", default="")
    p = add("import", "register the bundle in a tar as a new version")
    p.add_argument("file", metavar="FILE.tar")
    p.add_argument("--name", default=None, help="register under this model name")
    return reg


def _console() -> Console:
    return Console(file=sys.stdout, width=120, highlight=False, soft_wrap=True)


def run(args: argparse.Namespace) -> int:
    """Runs the parsed ``registry`` subcommand; returns the exit status."""
    try:
        return _run(args)
    except MlserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    reg = Registry(getattr(args, "registry", None))
    out = _console()
    cmd = args.registry_command
    if cmd == "list":
        if args.name:
            table = Table("version", "status", "created", "aliases", "tags", "description")
            for mv in reg.list_versions(args.name):
                table.add_row(str(mv.version), mv.status, mv.created_at[:19],
                              ", ".join(mv.aliases),
                              ", ".join(f"{k}={v}" for k, v in mv.tags.items()),
                              mv.description)
        else:
            table = Table("model", "versions", "latest ready", "aliases", "updated")
            for m in reg.list_models():
                table.add_row(m.name, str(m.versions),
                              "-" if m.latest_ready is None else str(m.latest_ready),
                              ", ".join(f"{a}->{v}" for a, v in m.aliases.items()),
                              m.updated_at[:19])
            if not table.rows:
                out.print(f"no models registered in {reg.location}", markup=False)
                return 0
        out.print(table)
    elif cmd == "show":
        mv = reg.get(args.ref)  # the record: a shared registry's files are not downloaded
        out.print(f"[bold]{mv.ref}[/bold]  status={mv.status}  created={mv.created_at}")
        out.print(f"path: {mv.path}" if mv.path.is_dir() else
                  f"path: {mv.path} (not fetched on this machine yet)", markup=False)
        for label, value in (("description", mv.description), ("aliases", mv.aliases),
                             ("tags", mv.tags), ("run", mv.run_id), ("metrics", mv.metrics),
                             ("params", mv.params), ("lineage", mv.lineage)):
            if value:
                text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                out.print(f"{label}: {text}", markup=False)
        table = Table("artifact", "bytes", "sha256")
        for file, entry in mv.artifacts.items():
            table.add_row(file, str(entry.get("bytes", "")), entry["sha256"])
        out.print(table)
    elif cmd == "alias":
        mv = reg.set_alias(args.name, args.alias, args.version, reason=args.reason)
        out.print(f"{mv.name}@{args.alias} -> {mv.version}")
    elif cmd == "history":
        table = Table("time (UTC)", "event", "alias", "from", "to", "reason")
        for e in reg.history(args.name):
            table.add_row(e.at[:19], e.kind, e.alias or "",
                          "" if e.old_version is None else str(e.old_version),
                          "" if e.new_version is None else str(e.new_version), e.reason)
        out.print(table)
    elif cmd == "tag":
        mv = reg.set_tag(args.ref, args.key, args.value)
        out.print(f"{mv.ref}: {args.key}={args.value}", markup=False)
    elif cmd == "archive":
        mv = reg.archive(args.ref, reason=args.reason)
        out.print(f"{mv.ref} archived")
    elif cmd == "add":
        import tempfile

        from mlserve.categories import parse_feature_policies

        from .byo import bundle_from_model, parse_inputs

        with tempfile.TemporaryDirectory() as tmp:
            bundle = bundle_from_model(
                Path(tmp) / "bundle", name=args.name, onnx=args.onnx,
                torchscript=args.torchscript, preprocessing=args.preprocessing,
                inputs=parse_inputs(args.inputs) if args.inputs else None,
                input_width=args.input_width, task=args.task,
                unknown_category=args.unknown_category,
                unknown_category_features=parse_feature_policies(
                    args.unknown_category_feature, "--unknown-category-feature"))
            mv = reg.register(bundle, description=args.description)
        out.print(f"registered {mv.ref} (imported from "
                  f"{args.onnx or args.torchscript})", markup=False)
    elif cmd == "verify":
        problems = reg.verify(repair=args.repair)
        for p in problems:
            out.print(p, markup=False)
        unfixed = [p for p in problems if not p.endswith("(repaired)")]
        if unfixed:
            print(f"{len(unfixed)} problem(s); leftovers of interrupted writes are removed by "
                  "`mlserve registry verify --repair`; a corrupt version must be re-registered "
                  "or re-imported from an export", file=sys.stderr)
            return 1
        out.print(f"registry at {reg.location} is consistent", markup=False)
    elif cmd == "gc":
        removed = reg.gc()
        for gone in removed:
            out.print(f"removed {gone}", markup=False)
        out.print(f"{len(removed)} entr{'y' if len(removed) == 1 else 'ies'} removed")
    elif cmd == "copy":
        from mlserve.progress import rows_progress

        with rows_progress(out, "copying artifacts", args.no_progress, unit="bytes") as bar:
            target, counts = reg.copy_to(args.to, progress=bar)
        out.print(f"copied {counts['models']} model(s), {counts['versions']} version(s), "
                  f"{counts['runs']} run(s) and {counts['events']} history event(s) "
                  f"({counts['blobs']} artifact blob(s), {counts['bytes']:,} bytes) from "
                  f"{reg.location} to {target.location}", markup=False)
    elif cmd == "export":
        path = reg.export(args.ref, args.file)
        out.print(f"{args.ref} written to {path}", markup=False)
    elif cmd == "import":
        mv = reg.import_bundle(args.file, name=args.name)
        out.print(f"imported as {mv.ref}")
    else:  # pragma: no cover - argparse restricts the choices
        raise AssertionError(cmd)
    return 0
