"""The docker sandbox image, built locally from this machine's Python.

No registry is needed: the root filesystem is assembled from the host's interpreter,
its standard library (without tests, tkinter and the like), the shared libraries
they link, /bin/sh and a few coreutils, and loaded with `docker import`.

    python -m sandbox.image build [--tag opsd-sandbox:latest] [--python /usr/bin/python3]
    python -m sandbox.image ensure   # build only when the tag is missing or out of date

To use another image, set `SandboxSettings.image` (and `image_python` if its
interpreter is not `python3` on PATH); it needs a writable /tmp mount point only.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import tarfile
import time

from sandbox.base import SandboxSettings
from sandbox.pool import default_python

logger = logging.getLogger(__name__)

RECIPE = "3"  # bump when the recipe changes: `ensure` then rebuilds
TOOLS = ("sh", "cat", "echo", "ls", "env", "sleep", "true", "false", "head", "tail", "wc", "sort")
TOOLS += ("id", "grep", "mkdir", "rm", "cp", "mv", "touch", "chmod", "ln", "tr", "cut", "uniq")
SKIPPED = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}
SKIPPED |= {"site-packages", "dist-packages", "__phello__"}
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
LAYOUT = """import json, os, sys, sysconfig
print(json.dumps({"stdlib": sysconfig.get_path("stdlib"),
  "platstdlib": sysconfig.get_path("platstdlib"),
  "libpython": os.path.join(sysconfig.get_config_var("LIBDIR") or "",
                            sysconfig.get_config_var("LDLIBRARY") or "")
               if sysconfig.get_config_var("Py_ENABLE_SHARED") else None}))"""


class RootFS:
    """A deterministic tar of host paths, keeping symlinks (and their targets)."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.GNU_FORMAT)  # noqa: SIM115
        self.done: set[str] = set()

    def _entry(self, name: str, kind: bytes, mode: int, **fields: object) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name.lstrip("/"))
        info.type, info.mode, info.mtime = kind, mode, 0
        for key, value in fields.items():
            setattr(info, key, value)
        return info

    def directory(self, path: str, mode: int = 0o755) -> None:
        if path in ("/", "") or path in self.done:
            return
        self.directory(os.path.dirname(path))
        self.done.add(path)
        self.tar.addfile(self._entry(path, tarfile.DIRTYPE, mode))

    def data(self, path: str, content: bytes, mode: int = 0o644) -> None:
        self.directory(os.path.dirname(path))
        self.done.add(path)
        self.tar.addfile(
            self._entry(path, tarfile.REGTYPE, mode, size=len(content)), io.BytesIO(content)
        )

    def link(self, path: str, target: str) -> None:
        self.directory(os.path.dirname(path))
        self.done.add(path)
        self.tar.addfile(self._entry(path, tarfile.SYMTYPE, 0o777, linkname=target))

    def add(self, path: str) -> None:
        """Add a host file (or empty directory), with every symlink on its way."""
        path = os.path.normpath(path)
        if path in self.done:
            return
        parts = path.strip("/").split("/")
        for i in range(len(parts)):
            prefix = "/" + "/".join(parts[: i + 1])
            if os.path.islink(prefix):
                if prefix not in self.done:
                    self.link(prefix, os.readlink(prefix))
                target = os.path.join(os.path.dirname(prefix), os.readlink(prefix))
                return self.add(os.path.join(target, *parts[i + 1 :]))
        if os.path.isdir(path):
            return self.directory(path)
        with open(path, "rb") as f:
            self.data(path, f.read(), os.stat(path).st_mode & 0o7777)

    def tree(self, root: str) -> None:
        """Add a directory tree, skipping SKIPPED and `config-*` directories."""
        self.add(root)
        real = os.path.realpath(root)
        for top, dirs, files in os.walk(real):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED and not d.startswith("config-"))
            for name in sorted(files):
                self.add(os.path.join(top, name))

    def finish(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def shared_libraries(binaries: list[str]) -> set[str]:
    """What `ldd` says these ELF files load (the dynamic loader included)."""
    found: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        for line in out.splitlines():
            words = line.split()
            if "=>" in words and len(words) > words.index("=>") + 1:
                candidate = words[words.index("=>") + 1]
            else:
                candidate = words[0] if words else ""
            if candidate.startswith("/"):
                found.add(candidate)
    return found


def rootfs(python: str) -> bytes:
    """The image's root filesystem as a tar, built from `python` on this machine."""
    layout = json.loads(subprocess.check_output([python, "-c", LAYOUT], text=True))
    fs = RootFS()
    for path in ("/tmp", "/proc", "/sys", "/dev", "/etc", "/root"):
        fs.directory(path, 0o1777 if path == "/tmp" else 0o700 if path == "/root" else 0o755)
    fs.add(python)
    stdlib, platstdlib = layout["stdlib"], layout["platstdlib"]
    fs.tree(stdlib)
    if os.path.realpath(platstdlib) != os.path.realpath(stdlib):
        fs.tree(platstdlib)
    binaries = [os.path.realpath(python)]
    if layout["libpython"] and os.path.exists(layout["libpython"]):
        fs.add(layout["libpython"])
        binaries.append(layout["libpython"])
    for top, _, files in os.walk(os.path.realpath(platstdlib)):
        binaries += [os.path.join(top, f) for f in files if f.endswith(".so")]
    tools = [
        p for t in TOOLS if os.path.exists(p := f"/usr/bin/{t}") or os.path.exists(p := f"/bin/{t}")
    ]
    for tool in [*tools, "/bin/sh"]:
        fs.add(tool)
    for top in ("/bin", "/sbin", "/lib", "/lib64"):  # merged-/usr links, as on the host
        if os.path.islink(top):
            fs.add(top)
    for library in sorted(shared_libraries(binaries + tools)):
        fs.add(library)
    for name in ("/etc/ld.so.cache", "/etc/localtime"):
        if os.path.exists(name):
            fs.add(name)
    fs.data("/etc/passwd", PASSWD.encode())
    fs.data("/etc/group", GROUP.encode())
    if "/usr/bin/python3" not in fs.done:
        fs.link("/usr/bin/python3", os.path.realpath(python))
    return fs.finish()


def build_image(client, tag: str, python: str | None = None) -> str:
    """Build the sandbox image from this machine's Python; returns its id."""
    python = default_python(python)
    started = time.monotonic()
    tar = rootfs(python)
    logger.info("sandbox image: root filesystem of %d MiB from %s", len(tar) >> 20, python)
    repository, _, version = tag.rpartition(":")
    if not repository or "/" in version:  # no tag, maybe a registry's port: "host:5000/x"
        repository, version = tag, "latest"
    changes = [
        "ENV PATH=/usr/local/bin:/usr/bin:/bin",
        "ENV LANG=C.UTF-8",
        "USER 65534:65534",
        "WORKDIR /tmp",
        f"LABEL opsd.sandbox.recipe={RECIPE}",
        'CMD ["python3"]',
    ]
    client.api.import_image_from_data(tar, repository=repository, tag=version, changes=changes)
    image = client.images.get(tag)
    logger.info("sandbox image %s built in %.1f s", tag, time.monotonic() - started)
    return image.id


def image_is_current(client, tag: str) -> bool:
    import docker.errors

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return (image.labels or {}).get("opsd.sandbox.recipe") == RECIPE


def main(argv: list[str] | None = None) -> None:
    import docker

    defaults = SandboxSettings()
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.image", description=__doc__.splitlines()[0]
    )
    parser.add_argument("action", choices=["build", "ensure"])
    parser.add_argument("--tag", default=defaults.image)
    parser.add_argument("--python", default=defaults.python, help="interpreter to copy")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    client = docker.from_env()
    if args.action == "ensure" and image_is_current(client, args.tag):
        logger.info("sandbox image %s is present", args.tag)
        return
    build_image(client, args.tag, args.python)


if __name__ == "__main__":
    main()
