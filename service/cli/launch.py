"""Several processes for one command: `--nproc-per-node N` starts the command again in N
processes on this machine through torch's elastic launcher (what `torchrun --standalone`
does), one per device; each joins the others (trainer.distributed.join_world).

Several machines: start the command with `torchrun` itself and its own flags
(docs/operating.md "Several devices").
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from service.cli.common import console, fail

NPROC_FLAG = "--nproc-per-node"


def _nproc(value: str | None) -> str | None:
    if value is None or value == "gpu" or (value.isdigit() and int(value) >= 1):
        return value
    raise typer.BadParameter("a number of processes, or `gpu`: one per GPU of this machine")


NprocOption = Annotated[
    str | None,
    typer.Option(
        NPROC_FLAG,
        callback=_nproc,
        metavar="N|gpu",
        help="train in N processes on this machine, one per device, or one per GPU (`gpu`), "
        "through torch's elastic launcher",
    ),
]


def without_nproc(argv: list[str]) -> list[str]:
    """The command line without its `--nproc-per-node` option."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == NPROC_FLAG:
            skip = True
        elif not arg.startswith(f"{NPROC_FLAG}="):
            kept.append(arg)
    return kept


def relaunch(nproc: str) -> None:
    """Run this command line again in `nproc` processes (without `--nproc-per-node`);
    return when all of them have finished or were stopped (SIGTERM, Ctrl-C: the launcher
    passes the signal on and gives them 30 seconds), fail when one failed."""
    from torch.distributed import is_torchelastic_launched
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if is_torchelastic_launched():
        raise fail(f"{NPROC_FLAG} starts the processes itself: not under torchrun")
    launcher = ["--standalone", f"{NPROC_FLAG}={nproc}", "--module", "service.cli"]
    args = get_args_parser().parse_args([*launcher, *without_nproc(sys.argv[1:])])
    try:
        run(args)
    except SignalException as exc:
        console.print(f"stopped by signal {exc.sigval.name}")
    except ChildFailedError as exc:
        raise fail(f"a process of the {nproc} failed: {exc}") from exc
