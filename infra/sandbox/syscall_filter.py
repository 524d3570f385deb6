"""
A seccomp filter for sandboxed processes: the few system calls that let a candidate hold memory or disk
no limit sees, carry data from one run to the next, or reach kernel code it has no use for. bubblewrap
installs it (`--seccomp FD`) just before the command starts; it is inherited by everything the command
starts and cannot be removed.

    socket, socketpair    only AF_UNIX (EAFNOSUPPORT otherwise): netlink, TCP and UDP buffers are kernel
                          memory charged to no cgroup; queued on the sandbox's own loopback they reached
                          the host-wide TCP/UDP limits (red team). Local AF_UNIX (DataLoader workers) works.
    fallocate             EOPNOTSUPP: glibc's posix_fallocate then writes zeros at disk speed, which the
                          disk cap can follow, instead of reserving gigabytes in a millisecond
    add_key, request_key, keyctl
                          ENOSYS, what a kernel built without keys answers (keyutils, Kerberos and systemd
                          then do without): keys outlive the process that made them, so a run could leave
                          16 KB for the next (red team), or read a key of the orchestrator's session keyring.
                          Each sandboxed process also starts with a fresh, empty session keyring
                          (infra/sandbox/run.py), in case the filter is missing
    fadvise64 with POSIX_FADV_DONTNEED, madvise with MADV_COLD or MADV_PAGEOUT
                          EPERM: they evict (or queue for eviction) page-cache pages every process shares,
                          so a run could clear bits in the cache of a system file for the next run to time
                          (red team: 200 of 200 bits). EPERM because the call and its arguments are fine but
                          this caller may not: a program that checks learns it was refused, not that it
                          erred. Other advice (SEQUENTIAL, WILLNEED, MADV_DONTNEED on its own memory, which
                          glibc and torch use) passes.
    preadv2, pwritev2 with RWF_NOWAIT
                          EPERM: a read that fails rather than wait for the disk tells, without timing, whether a
                          page of a shared file is in the page cache: with it a run counted the runs before it
                          and read bits an earlier run had set by loading pages (red team). The flags are tested
                          bit by bit (BPF_JSET); a plain read still loads and times pages (README: what remains)
    process_madvise, cachestat
                          ENOSYS, as on a kernel without them: the first advises other processes' memory
                          (MADV_PAGEOUT included); the second reads the page cache's state directly
    sched_setaffinity     EPERM: a run is pinned to its slot's cores before it starts (infra/sandbox/slots.py); where
                          no cpuset cgroup holds it there, this keeps it from moving onto another slot's cores
    io_uring_*, userfaultfd, perf_event_open
                          ENOSYS: kernel attack surface a training script does not need
    another ABI           (i386 or x32 system calls on x86_64): the process is killed

A classic BPF program, written out here rather than through libseccomp (one fewer native dependency);
architectures other than x86_64 and aarch64 (little-endian) get no filter (README). An argument is
compared by its low 32 bits, the `int` the kernel reads: advice with high bits set is refused too.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

# BPF instruction classes and seccomp return values (linux/filter.h, linux/seccomp.h)
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_NR, _ARCH, _ARG0 = 0, 4, 16  # offsets in struct seccomp_data; argument i at _ARG0 + 8 i, low half first
_X32_SYSCALL_BIT = 0x40000000
AF_UNIX = 1
POSIX_FADV_DONTNEED, MADV_COLD, MADV_PAGEOUT, RWF_NOWAIT = 4, 20, 21, 0x8

# machine -> (audit arch, {name: number})
_ARCHES = {
    "x86_64": (
        0xC000003E,
        {
            "socket": 41,
            "socketpair": 53,
            "fallocate": 285,
            "userfaultfd": 323,
            "perf_event_open": 298,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "fadvise64": 221,
            "madvise": 28,
            "process_madvise": 440,
            "cachestat": 451,
            "preadv2": 327,
            "pwritev2": 328,
            "sched_setaffinity": 203,
        },
    ),
    # aarch64's fadvise64_64 takes (fd, offset, len, advice) like x86_64's fadvise64: advice is argument 3 on both
    "aarch64": (
        0xC00000B7,
        {
            "socket": 198,
            "socketpair": 199,
            "fallocate": 47,
            "userfaultfd": 282,
            "perf_event_open": 241,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "fadvise64": 223,
            "madvise": 233,
            "process_madvise": 440,
            "cachestat": 451,
            "preadv2": 286,
            "pwritev2": 287,
            "sched_setaffinity": 122,
        },
    ),
}
_REFUSED = {
    "fallocate": errno.EOPNOTSUPP,
    "userfaultfd": errno.ENOSYS,
    "perf_event_open": errno.ENOSYS,
    "io_uring_setup": errno.ENOSYS,
    "io_uring_enter": errno.ENOSYS,
    "io_uring_register": errno.ENOSYS,
    "add_key": errno.ENOSYS,
    "request_key": errno.ENOSYS,
    "keyctl": errno.ENOSYS,
    "process_madvise": errno.ENOSYS,
    "cachestat": errno.ENOSYS,
    "sched_setaffinity": errno.EPERM,
}
# call -> (argument, values refused with EPERM): advice that evicts pages other processes share
_REFUSED_ADVICE = {"fadvise64": (3, (POSIX_FADV_DONTNEED,)), "madvise": (2, (MADV_COLD, MADV_PAGEOUT))}
# call -> (argument, bits refused with EPERM when any is set): reads that tell the page cache's state without timing
_REFUSED_FLAGS = {"preadv2": (5, RWF_NOWAIT), "pwritev2": (5, RWF_NOWAIT)}


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _refuse_values(nr: int, arg: int, values: tuple[int, ...], code: int) -> list[bytes]:
    """System call nr with argument arg (its low 32 bits) equal to one of values: the error; nr otherwise: allowed.
    Ends in a return either way (loading the argument overwrites the call number)."""
    ops = [_op(_LD_W_ABS, _ARG0 + 8 * arg)]
    for i, value in enumerate(values):
        ops.append(_op(_JEQ, value, len(values) - i, 0))  # to the error, past the other values and the allow
    ops += [_op(_RET, _ALLOW), _op(_RET, _ERRNO | code)]
    return [_op(_JEQ, nr, 0, len(ops)), *ops]


def _refuse_bits(nr: int, arg: int, bits: int, code: int) -> list[bytes]:
    """System call nr with any of bits set in argument arg (its low 32 bits): the error; nr otherwise: allowed."""
    return [
        _op(_JEQ, nr, 0, 4),
        _op(_LD_W_ABS, _ARG0 + 8 * arg),
        _op(_JSET, bits, 1, 0),
        _op(_RET, _ALLOW),
        _op(_RET, _ERRNO | code),
    ]


def program(machine: str | None = None) -> bytes | None:
    """The filter as bytes (struct sock_filter[]) for this machine, or None where there is none."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, nr = arch
    ops = [_op(_LD_W_ABS, _ARCH), _op(_JEQ, audit_arch, 1, 0), _op(_RET, _KILL_PROCESS), _op(_LD_W_ABS, _NR)]
    if audit_arch == _ARCHES["x86_64"][0]:
        ops += [_op(_JGE, _X32_SYSCALL_BIT, 0, 1), _op(_RET, _KILL_PROCESS)]
    for name, code in _REFUSED.items():
        ops += [_op(_JEQ, nr[name], 0, 1), _op(_RET, _ERRNO | code)]
    for name, (arg, values) in _REFUSED_ADVICE.items():
        ops += _refuse_values(nr[name], arg, values, errno.EPERM)
    for name, (arg, bits) in _REFUSED_FLAGS.items():
        ops += _refuse_bits(nr[name], arg, bits, errno.EPERM)
    # socket and socketpair: only the first argument (the domain) AF_UNIX passes
    ops += [
        _op(_JEQ, nr["socket"], 1, 0),
        _op(_JEQ, nr["socketpair"], 0, 3),
        _op(_LD_W_ABS, _ARG0),
        _op(_JEQ, AF_UNIX, 1, 0),
        _op(_RET, _ERRNO | errno.EAFNOSUPPORT),
    ]
    ops += [_op(_RET, _ALLOW)]
    return b"".join(ops)


def number(name: str, machine: str | None = None) -> int | None:
    """The number of system call name on this machine, where the filter knows it."""
    arch = _ARCHES.get(machine or platform.machine())
    return arch[1].get(name) if arch else None


def program_fd() -> int | None:
    """A memfd holding the program, positioned at its start, for bubblewrap's --seccomp; the caller closes it."""
    code = program()
    if code is None:
        return None
    fd = os.memfd_create("autoresearch-seccomp", os.MFD_CLOEXEC)
    os.write(fd, code)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
