#!/usr/bin/env bash
# Prepare a Debian machine for the sandbox tests, as root: bubblewrap, a running
# docker engine and the sandbox image. Idempotent, and quick when all is there.
# Then run the tests with OPSD_SANDBOX_REQUIRE=bwrap,docker so that neither skips.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v dockerd >/dev/null || missing+=(docker.io)
[ -x /usr/bin/python3 ] || missing+=(python3)  # the interpreter the jails and the image use
if [ ${#missing[@]} -gt 0 ]; then
  echo "sandbox-setup: installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# bubblewrap runs unprivileged (the service drops to nobody): allow user namespaces.
for knob in kernel.unprivileged_userns_clone kernel.apparmor_restrict_unprivileged_userns; do
  file="/proc/sys/${knob//.//}"
  want=1
  [ "$knob" = kernel.apparmor_restrict_unprivileged_userns ] && want=0
  if [ -w "$file" ] && [ "$(cat "$file")" != "$want" ]; then
    sysctl -qw "$knob=$want"
  fi
done

if ! docker info >/dev/null 2>&1; then
  echo "sandbox-setup: starting dockerd"
  # shellcheck disable=SC2086  # DOCKERD_FLAGS is a list of flags
  nohup dockerd ${DOCKERD_FLAGS:-} >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    echo "sandbox-setup: dockerd did not answer within 60 s" >&2
    tail -n 20 /var/log/dockerd.log >&2
    exit 1
  fi
fi

"$PYTHON" -m sandbox.image ensure

# A program through each backend, so that a broken machine fails here, plainly.
"$PYTHON" - <<'EOF'
import asyncio

from sandbox import Program, make_sandbox


async def smoke(name: str) -> None:
    async with make_sandbox(name, workers=1) as box:
        record = await box.run(Program(command=["python3", "-c", "print(6 * 7)"]))
        assert record.stdout == "42\n", f"{name} sandbox: {record}"
        print(f"sandbox-setup: {name} sandbox works")


for backend in ("bwrap", "docker"):
    asyncio.run(smoke(backend))
EOF
