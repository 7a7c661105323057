"""``collector export``: the governance state as TOML, Kueue manifests or Slurm reservations."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from collector.cli import COMMANDS
from collector.cli._args import add_settings_args, read_input, read_settings_from_args
from collector.cli._render import print_json, shown
from shared.errors import ConfigError

if TYPE_CHECKING:
    from collector.governance.state import Governance

__all__ = ["add_parser", "run"]

FORMATS: Final = ("toml", "kueue", "slurm")

_DESCRIPTION: Final = """\
Print the governance state in one of three shapes:

  toml   (default) what `collector apply -f` reads (see `collector apply --help`): keep it
         in git, edit it, apply it back. Pools are written by their nodes, with
         their comments.

  kueue  the GPU quotas as Kueue objects (kueue.x-k8s.io/v1beta1, served by Kueue 0.13 and
         later), multi-document YAML for `kubectl apply -f`:
         - a ResourceFlavor per GPU model in the inventories (the 64 with the most GPUs:
           Kueue's flavors per resource group; a note names the rest), selecting its nodes by the
           label NVIDIA's GPU feature discovery sets, nvidia.com/gpu.product = the model's
           name with spaces as '-' (NVIDIA-H100-80GB-HBM3); --gpu-label names another key;
         - a Cohort per cohort, with parentName and the cohort's own gpus quota (limits only
           towards a parent, as Kueue allows);
         - a ClusterQueue per tenant with a gpus quota: its cohort, nvidia.com/gpu per
           flavor with nominalQuota, borrowingLimit and lendingLimit (limits only for a
           tenant in a cohort), reclaimWithinCohort: Any (nominal quota is guaranteed) and
           namespaceSelector: {} (every namespace: narrow it, and create LocalQueues).
         With several GPU models, each figure is split over the flavors in proportion to
         the GPUs of each model the tenant's leases hold now (none: the fleet's), in whole
         GPUs, summing to the store's figure. Not expressed: power and GPU-hours quotas,
         lease dates, notice, priorities. Names that are not DNS-1123 are lowered and get
         a hash suffix; the capwatch name is in the annotation capwatch.io/name.

  slurm  the leases as Slurm reservations, a shell script: one line per lease,
           TZ=UTC scontrol create reservation ReservationName=LEASE StartTime=... \\
             EndTime=... Nodes=N1,N2 Accounts=TENANT Flags=IGNORE_JOBS
         Run it with `sh` where scontrol reaches the controller. Leases that have ended
         are left out (a comment counts them); a lease in force starts `now`, a future one
         at its first midnight (lease's zone, written in UTC); a renewing lease without
         notice is reserved to the end of its current term (export again when it renews).
         Node names are passed as capwatch knows them: scontrol refuses a reservation
         naming a node Slurm does not know ("Invalid node name specified") and the script
         goes on with the next line; with --slurm-nodes FILE (`sinfo -N -h -o %N`) such
         leases are left out beforehand, as a comment and a warning on stderr. The script
         only creates: run again, each line is refused ("Requested reservation overlaps
         with another reservation", or "Duplicate reservation name" once the lease
         changed): update or delete those with scontrol. With slurmdbd, each tenant must
         exist as an account.

--json: toml as JSON; kueue as a v1 List (kubectl applies it too); slurm as the
reservations' fields, each with its command."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector export``."""
    p = sub.add_parser(
        "export",
        help=COMMANDS["export"][1],
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_args(p)
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="toml",
        help="toml (what `apply` reads, the default), kueue or slurm: see above",
    )
    p.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write to FILE instead of stdout"
    )
    p.add_argument(
        "--gpu-label",
        metavar="KEY",
        help="kueue: the node label holding the GPU model (default nvidia.com/gpu.product)",
    )
    p.add_argument(
        "--slurm-nodes",
        type=Path,
        metavar="FILE",
        help="slurm: the node names Slurm knows, one a line (`sinfo -N -h -o %%N`, '-' for "
        "stdin); leases naming another are left out",
    )
    p.add_argument("--json", action="store_true", help="the same as JSON (see above)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the state in the chosen format."""
    from collector.store.governance import governance  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    if args.gpu_label is not None and args.format != "kueue":
        raise ConfigError("--gpu-label applies to --format kueue", field="--gpu-label")
    if args.slurm_nodes is not None and args.format != "slurm":
        raise ConfigError("--slurm-nodes applies to --format slurm", field="--slurm-nodes")
    settings = read_settings_from_args(args)
    now = time.time()
    with StoreReader(settings.store_target) as store:
        if store.lacks("leases"):
            raise ConfigError(
                f"{str(settings.store_target)!r} has no leases table yet: start this version's "
                "`collector run` once to migrate it"
            )
        gov = store.run(governance())
        pools: dict[str, list[str]] = {}
        comments: dict[str, str] = {}
        if args.format == "toml":
            from collector.store.pools import pools as pool_rows  # noqa: PLC0415
            from collector.store.pools import pools_with_nodes  # noqa: PLC0415

            pools = pools_with_nodes(store)
            comments = {r["name"]: r["comment"] or "" for r in pool_rows(store)}
    if args.format == "kueue":
        from collector.cli.inventory import load_nodes  # noqa: PLC0415

        nodes = load_nodes(settings)
        node_gpus = {
            n.node: {c.model: c.count for c in n.components if c.kind == "gpu"} for n in nodes
        }
        with _output(args.output) as out:
            _kueue(gov, node_gpus, now, args, out)
    elif args.format == "slurm":
        known = None if args.slurm_nodes is None else _read_nodes(args.slurm_nodes)
        with _output(args.output) as out:
            _slurm(gov, now, known, args, out)
    else:
        from collector.governance.declare import export_spec  # noqa: PLC0415

        doc = export_spec(gov, pools, comments)
        with _output(args.output) as out:
            if args.json:
                print_json(doc, out)
            else:
                import tomli_w  # noqa: PLC0415

                out.write(tomli_w.dumps(doc))
    return 0


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    """stdout, or ``path`` written whole (a failed export leaves no half file)."""
    if path is None:
        yield sys.stdout
        return
    import io  # noqa: PLC0415

    buf = io.StringIO()
    yield buf
    try:
        path.write_text(buf.getvalue())
    except OSError as exc:
        raise ConfigError(
            f"--output {str(path)!r}: {exc.strerror or exc}", field="--output"
        ) from None


def _read_nodes(path: Path) -> set[str]:
    data = read_input(str(path), field="--slurm-nodes", label="--slurm-nodes ")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--slurm-nodes {str(path)!r}: {exc}", field="--slurm-nodes") from None
    return {line.strip() for line in text.splitlines() if line.strip()}


def _kueue(
    gov: Governance,
    node_gpus: dict[str, dict[str, int]],
    now: float,
    args: argparse.Namespace,
    out: TextIO,
) -> None:
    import yaml  # noqa: PLC0415

    from collector.governance.kueue import (  # noqa: PLC0415
        PRODUCT_LABEL,
        check_label_key,
        kueue_manifests,
    )

    label = PRODUCT_LABEL if args.gpu_label is None else check_label_key(args.gpu_label)
    export = kueue_manifests(gov, node_gpus, now, label=label)
    # Notes quote what nodes named (GPU models): each one line, so a comment in the manifest.
    notes = [shown(note) for note in export.notes]
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if args.json:
        print_json({"apiVersion": "v1", "kind": "List", "items": export.objects}, out)
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    out.write(f"# capwatch quotas as Kueue objects, exported {stamp}: kubectl apply -f FILE\n")
    out.writelines(f"# {note}\n" for note in notes)
    out.write(yaml.safe_dump_all(export.objects, explicit_start=True, sort_keys=False))


def _slurm(
    gov: Governance, now: float, known: set[str] | None, args: argparse.Namespace, out: TextIO
) -> None:
    from collector.governance.slurm import slurm_reservations  # noqa: PLC0415

    export = slurm_reservations(gov, now, slurm_nodes=known)
    for line in export.skipped:
        print(f"warning: left out: {line}", file=sys.stderr)
    if args.json:
        rows: list[dict[str, Any]] = [
            {
                "name": r.name,
                "lease": r.lease,
                "lease_id": r.lease_id,
                "tenant": r.tenant,
                "nodes": list(r.nodes),
                "start": r.start_text,
                "end": r.end_text,
                "renews": r.renews,
                "command": r.command(),
            }
            for r in export.reservations
        ]
        print_json({"reservations": rows, "skipped": export.skipped, "ended": export.ended}, out)
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    out.write(
        f"#!/bin/sh\n# capwatch leases as Slurm reservations, exported {stamp}; times in UTC\n"
        f"# {export.ended} ended lease(s) left out\n"
    )
    out.writelines(f"# left out: {line}\n" for line in export.skipped)
    for r in export.reservations:
        if r.renews:
            out.write(f"# {r.name}: a renewing lease, reserved to the end of its current term\n")
        out.write(r.command() + "\n")
