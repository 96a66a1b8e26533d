"""A seccomp deny-list for bubblewrap jails (docker applies its own default profile).

Jobs have no capabilities, so most of these calls would fail anyway; the filter
removes kernel attack surface (bpf, perf, userfaultfd, io_uring, ...) and closes the
one channel that outlives a job inside a jail: the kernel keyrings of its user.
Calls from another ABI (32-bit `int 0x80`, x32) kill the process.
"""

from __future__ import annotations

import platform
import struct

# name: (x86_64, aarch64) system call numbers
DENIED = {
    "add_key": (248, 217),
    "request_key": (249, 218),
    "keyctl": (250, 219),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsmount": (432, 432),
    "unshare": (272, 97),
    "setns": (308, 268),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "syslog": (103, 116),
    "lookup_dcookie": (212, 18),
}
ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column, AUDIT_ARCH_*
X32_BIT = 0x40000000
EPERM = 1
RET_ALLOW, RET_ERRNO, RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
LD_ABS_W, JEQ_K, JGE_K, RET_K = 0x20, 0x15, 0x35, 0x06


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def deny_list_filter(machine: str | None = None) -> bytes | None:
    """The classic-BPF program bwrap's --seccomp takes, or None on an unknown machine."""
    column, audit_arch = ARCHES.get(machine or platform.machine(), (None, None))
    if column is None:
        return None
    numbers = sorted({numbers[column] for numbers in DENIED.values()})
    n = len(numbers)
    program = [
        _op(LD_ABS_W, 4),  # seccomp_data.arch
        _op(JEQ_K, audit_arch, 0, n + 4),  # another ABI: to the kill at the end
        _op(LD_ABS_W, 0),  # seccomp_data.nr
        _op(JGE_K, X32_BIT, n + 1, 0) if column == 0 else _op(JEQ_K, 0xFFFFFFFF, n + 1, 0),
    ]
    for i, number in enumerate(numbers):  # a match jumps to the ERRNO return
        program.append(_op(JEQ_K, number, n - i, 0))
    program += [_op(RET_K, RET_ALLOW), _op(RET_K, RET_ERRNO | EPERM), _op(RET_K, RET_KILL_PROCESS)]
    return b"".join(program)
