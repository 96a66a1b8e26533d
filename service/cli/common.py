"""What the `opsd` command modules share: the console, the clean error exit, config files,
quiet libraries."""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

console = Console()


def fail(message: str) -> typer.Exit:
    """Print `error: <message>` on one line and return the exit (code 2) to raise."""
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code=2)


def quiet_libraries() -> None:
    """Our own progress bars and logs replace the libraries' per-file bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def log_through_console(level: str) -> None:
    """Log records (opsd's and the libraries') print through the console, so that they
    appear above a live progress bar instead of breaking into it."""
    from rich.logging import RichHandler

    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) and h.console is console for h in root.handlers):
        handler = RichHandler(console=console, show_time=False, show_path=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper())
    quiet_libraries()


def load_config_file(path: Path) -> dict[str, Any]:
    """A nested dict from a .toml file, or from JSON for any other suffix."""
    if not path.exists():
        raise fail(f"config file {path} does not exist")
    text = path.read_text()
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise fail(f"cannot parse {path}: {exc}") from exc
