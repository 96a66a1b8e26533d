"""A checkpoint as a download: its model files as one tar stream, read a chunk at a time.

`GET /v1/runs/{id}/checkpoints/{step}/archive` sends a checkpoint directory
(trainer/checkpoint.py) without its optimiser and RNG state (`trainer_state.pt`): what
`AutoModelForCausalLM.from_pretrained` loads (config, weights, tokenizer; for LoRA also
`adapter/`) and `state.json`. The tar is written by hand, header, content and padding per
file, so that a model of many gigabytes streams without being held in memory.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

from service.storage import NotFound
from trainer.checkpoint import TRAINER_STATE

CHUNK = 1 << 20
BLOCK = 512


def archived_files(directory: Path) -> list[Path]:
    """The files of a checkpoint directory a download holds, in a stable order; NotFound
    when the directory is gone."""
    if not directory.is_dir():
        raise NotFound(f"checkpoint {directory.name} is no longer on the server")
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.relative_to(directory) != Path(TRAINER_STATE)
    )


def tar_stream(directory: Path, files: list[Path]) -> Iterator[bytes]:
    """An uncompressed tar of `files` (under `directory`), each under `<directory name>/`."""
    for path in files:
        size = path.stat().st_size
        info = tarfile.TarInfo(f"{directory.name}/{path.relative_to(directory).as_posix()}")
        info.size, info.mode, info.mtime = size, 0o644, int(path.stat().st_mtime)
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        sent = 0
        with path.open("rb") as f:
            while sent < size and (chunk := f.read(min(CHUNK, size - sent))):
                sent += len(chunk)
                yield chunk
        if sent != size:
            raise OSError(f"{path} changed while it was sent")
        if pad := -size % BLOCK:
            yield b"\0" * pad
    yield b"\0" * (2 * BLOCK)
