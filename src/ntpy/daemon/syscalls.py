"""What ``-F 1`` allows: the system calls ntpy makes after start-up, by group, with why.

One table (``GROUPS``) is the filter (``daemon/seccomp.py`` loads it) and the
documentation (``docs/seccomp.md`` is generated from it: ``python -m
ntpy.daemon.syscalls docs/seccomp.md``; a test fails when the page is stale). The list was
built from what the daemon really does in every mode -- the event loop on epoll, poll and
select; NTP serving with kernel timestamps and the error queue; upstreams and pool DNS;
NTS-KE; the control socket and the web listeners; SIGHUP reloads; workers and their
restarts; the drift, stats, log and key files -- and checked by running each mode under
``SCMP_ACT_LOG`` and under ``-F 1`` (``tests/interop/test_seccomp.py``).

Never allowed: ``execve``/``execveat`` (ntpy never runs a program), ``ptrace``, ``mount``,
``setns``/``unshare`` and namespace flags on ``clone``, ``bpf`` other than reading and
writing the elements of maps already open, ``init_module``, ``reboot``,
``settimeofday``/``clock_settime`` (ntpy steps with ``adjtimex``), ``setuid`` and friends
(the drop is over by then), ``ioctl`` other than the listed requests, ``socket`` in other
families than UNIX, INET, INET6 and NETLINK.
"""

from __future__ import annotations

import errno
import socket
import sys
import termios
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ArgRule:
    """Allow ``syscall`` only when argument ``arg`` compares with ``value``: equal, or
    ``(argument & mask) == value`` when ``mask`` is set."""

    syscall: str
    arg: int
    value: int
    mask: int | None = None


@dataclass(frozen=True, slots=True)
class Errno:
    """Make ``syscall`` fail with ``err`` (a caller that has a fallback takes it)."""

    syscall: str
    err: int


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    why: str
    calls: tuple[str, ...]
    roles: frozenset[str] = frozenset({"main", "worker"})
    """Which processes need it; the main's list must cover a restarted worker too (the
    worker is forked from the filtered main and inherits its filter)."""


BOTH = frozenset({"main", "worker"})
MAIN = frozenset({"main"})

GROUPS: tuple[Group, ...] = (
    Group(
        "time",
        "reading the clocks: timestamps, timers on CLOCK_MONOTONIC, the vDSO's fallbacks",
        ("clock_gettime", "clock_getres", "gettimeofday", "time", "clock_nanosleep", "nanosleep"),
    ),
    Group(
        "clock discipline",
        "adjtimex/clock_adjtime: slewing, frequency, steps (ADJ_SETOFFSET) and the kernel's "
        "sync status, and reading them back; the main only (the workers never adjust)",
        ("adjtimex", "clock_adjtime"),
        MAIN,
    ),
    Group(
        "memory",
        "Python's allocator and arenas (brk, mmap), ctypes' executable trampolines "
        "(mprotect), the shared state page of the workers (mmap of a memfd), glibc's malloc "
        "trimming (madvise)",
        ("brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "memfd_create"),
    ),
    Group(
        "event loop",
        "the selectors the loop runs on: epoll (default), poll (--selector poll, for "
        "LD_PRELOAD clock simulators), select; the loop's wakeup socket pair",
        (
            "epoll_create1",
            "epoll_ctl",
            "epoll_wait",
            "epoll_pwait",
            "epoll_pwait2",
            "poll",
            "ppoll",
            "select",
            "pselect6",
        ),
    ),
    Group(
        "sockets: NTP",
        "answering and asking: recvmmsg/sendmmsg in batches (daemon/mmsg.py), recvmsg with "
        "kernel timestamps and the error queue (TX timestamps), sendto for single replies",
        (
            "recvmmsg",
            "sendmmsg",
            "recvmsg",
            "sendmsg",
            "recvfrom",
            "sendto",
            "getsockname",
            "getpeername",
            "getsockopt",
            "setsockopt",
            "shutdown",
        ),
    ),
    Group(
        "sockets: new connections and upstreams",
        "accepting the control socket, NTS-KE (TCP 4460) and HTTP clients; upstream "
        "sockets for servers added by a reload or a pool refill (ephemeral ports); NTS-KE "
        "to NTS upstreams; DNS for pool and server names (a UDP or TCP connect to the "
        "resolver, and netlink for getaddrinfo's AI_ADDRCONFIG); systemd notifications",
        ("accept", "accept4", "bind", "connect", "listen", "socketpair"),
    ),
    Group(
        "files",
        "the drift file and DRIFT.lastgood (written to a temporary file, fsync, rename), "
        "statistics files (a new one each day, and the symlink to it), the log file "
        "(reopened on SIGHUP), the NTS cookie key ring and ntscookies.json, the config, "
        "certificate and key re-read on SIGHUP, /etc/resolv.conf, /etc/hosts and "
        "/etc/nsswitch.conf for DNS, /proc/self (status lines)",
        (
            "openat",
            "open",
            "close",
            "read",
            "write",
            "pread64",
            "pwrite64",
            "readv",
            "writev",
            "lseek",
            "fstat",
            "newfstatat",
            "stat",
            "lstat",
            "statx",
            "fstatfs",
            "statfs",
            "access",
            "faccessat",
            "faccessat2",
            "readlink",
            "readlinkat",
            "getdents64",
            "fsync",
            "fdatasync",
            "rename",
            "renameat",
            "renameat2",
            "unlink",
            "unlinkat",
            "symlink",
            "symlinkat",
            "mkdir",
            "mkdirat",
            "fchmod",
            "fchown",
            "ftruncate",
            "dup",
            "dup2",
            "dup3",
            "fcntl",
            "pipe2",
            "getcwd",
            "flock",
        ),
    ),
    Group(
        "signals",
        "SIGTERM/SIGINT/SIGHUP/SIGUSR1 handlers and the wakeup fd, blocking signals around "
        "fork, stopping workers (kill), the level -1 report re-raising SIGSYS",
        (
            "rt_sigaction",
            "rt_sigprocmask",
            "rt_sigreturn",
            "sigaltstack",
            "kill",
            "tgkill",
            "getpid",
            "gettid",
            "getppid",
        ),
    ),
    Group(
        "threads and locks",
        "futex (locks, the GIL), the NTS-KE client's thread (glibc's pthread_create: clone3 "
        "is refused with ENOSYS below, so it falls back to clone), thread start-up "
        "bookkeeping",
        ("futex", "set_robust_list", "get_robust_list", "rseq", "set_tid_address", "sched_yield"),
    ),
    Group(
        "processes",
        "the main restarts a dead worker: fork (clone without namespace flags, see the "
        "argument rules), waitpid, and in the new worker PR_SET_PDEATHSIG, lowering "
        "capabilities again (capset can only lower them) and loading the worker's own "
        "filter on top of the inherited one (seccomp: a filter can only forbid more)",
        ("wait4", "waitid", "exit", "exit_group", "capget", "capset", "seccomp"),
    ),
    Group(
        "identity and limits",
        "getuid and friends (Python's os module, the status log line), rlimits, uname "
        "and sysinfo (glibc), sched_getaffinity (workers auto), getrandom (hash seeds, "
        "NTS keys and nonces, the rate limiter's random leak)",
        (
            "getuid",
            "geteuid",
            "getgid",
            "getegid",
            "getgroups",
            "getresuid",
            "getresgid",
            "getrlimit",
            "prlimit64",
            "uname",
            "sysinfo",
            "sched_getaffinity",
            "getrandom",
        ),
    ),
)

_NAMESPACE_FLAGS = 0x7E020000
"""CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: never."""
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_FIONBIO = 0x5421
_SIOCGIFINDEX = 0x8933
_BPF_MAP_ELEMENT_CMDS = (1, 2, 3, 4)
"""BPF_MAP_LOOKUP_ELEM, _UPDATE_ELEM, _DELETE_ELEM, _GET_NEXT_KEY: on a map fd it holds."""

ARG_RULES: tuple[tuple[str, tuple[ArgRule, ...]], ...] = (
    (
        "socket: UNIX (control socket, systemd, nscd), INET and INET6 (NTP, NTS-KE, DNS), "
        "NETLINK (getaddrinfo's AI_ADDRCONFIG); nothing else (no raw or packet sockets)",
        tuple(
            ArgRule("socket", 0, family)
            for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK)
        ),
    ),
    (
        "clone: fork (a worker restart) and threads, never with a namespace flag",
        (ArgRule("clone", 0, 0, _NAMESPACE_FLAGS),),
    ),
    (
        "prctl: only PR_SET_PDEATHSIG (a restarted worker dies with its main) and "
        "PR_SET_NO_NEW_PRIVS (set by libseccomp before the worker's own filter loads)",
        (ArgRule("prctl", 0, _PR_SET_PDEATHSIG), ArgRule("prctl", 0, _PR_SET_NO_NEW_PRIVS)),
    ),
    (
        "bpf: only the element operations on maps (lookup, update, delete, next key) of "
        "``fastpath xdp``: the main publishes policy and reads counters, workers read the "
        "kernel's rate-limit buckets; no program load, no map creation, no attach",
        tuple(ArgRule("bpf", 0, cmd) for cmd in _BPF_MAP_ELEMENT_CMDS),
    ),
    (
        "ioctl: FIONBIO (Python's setblocking), TCGETS (isatty when a file is opened), "
        "FIONREAD, SIOCGIFINDEX (interface names); nothing else",
        tuple(
            ArgRule("ioctl", 1, request)
            for request in (_FIONBIO, termios.TCGETS, termios.FIONREAD, _SIOCGIFINDEX)
        ),
    ),
)

ERRNOS: tuple[tuple[str, Errno], ...] = (
    (
        "clone3 fails with ENOSYS: its flags are in memory a filter cannot read, and glibc "
        "then uses clone (checked above)",
        Errno("clone3", errno.ENOSYS),
    ),
)


def filter_for(role: str) -> tuple[list[str], list[ArgRule], list[Errno]]:
    """The allowed calls, argument rules and errno rules for ``role``."""
    allow = [c for g in GROUPS if role in g.roles for c in g.calls]
    args = [r for _, rules in ARG_RULES for r in rules]
    return allow, args, [e for _, e in ERRNOS]


def render_markdown() -> str:
    """``docs/seccomp.md``: the table above as a page."""
    out = [
        "# ntpy's system-call filter (`-F 1`, `seccomp 1`)",
        "",
        "Generated from `src/ntpy/daemon/syscalls.py` by "
        "`python -m ntpy.daemon.syscalls docs/seccomp.md`; do not edit.",
        "",
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        "",
        "## Allowed system calls",
        "",
        "| group | processes | system calls | why |",
        "|---|---|---|---|",
    ]
    for g in GROUPS:
        who = "main, workers" if g.roles == BOTH else "main"
        calls = ", ".join(f"`{c}`" for c in g.calls)
        out.append(f"| {g.name} | {who} | {calls} | {g.why} |")
    out += ["", "## Allowed only with these arguments", ""]
    out += [f"- {why}" for why, _ in ARG_RULES]
    out += ["", "## Refused with an error (the caller falls back)", ""]
    out += [f"- {why}" for why, _ in ERRNOS]
    out += [
        "",
        "## Levels",
        "",
        "- `0`: no filter (the default).",
        "- `1`: any other call kills the process (SIGSYS); the kernel's audit log "
        "(`dmesg`, `type=1326 ... syscall=NR`) names it, and the main logs a worker that "
        "died so.",
        "- `-1`: the same list, but ntpy logs the forbidden call by name, then dies by "
        "SIGSYS: use it to find what a new libc or NSS module needs.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    text = render_markdown()
    if not argv:
        sys.stdout.write(text)
        return 0
    with open(argv[0], "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
