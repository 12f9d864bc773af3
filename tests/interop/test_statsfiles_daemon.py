"""The real daemon writes ntpd-format loopstats/peerstats while it syncs to loopback upstreams.

Two upstreams on the system clock (offset 0), iburst, minpoll 3: the daemon on its virtual
clock (-x) gets its first clock update in a few seconds. The files must exist under their
day-generation names with the plain name linked to them, and every line must parse as
ntpd's (and, when installed, NTPsec's ``ntp.statfiles`` must read them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .ntpy_daemon import running_ntpy
from .upstream import offset_servers

NTPSEC_PYTHON = "/usr/bin/python3"
NTPSEC_STATFILES = Path("/usr/lib/python3/dist-packages/ntp/statfiles.py")


def lines_of(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def check_loopstats(line: str) -> None:
    f = line.split()
    assert len(f) == 7, line
    assert int(f[0]) > 60000 and 0 <= float(f[1]) <= 86400, line
    for x in (f[2], f[4]):
        assert len(x.split(".")[1]) == 9, line
    assert len(f[3].split(".")[1]) == 3 and len(f[5].split(".")[1]) == 6, line
    int(f[6])


def check_peerstats(line: str, addresses: set[str]) -> None:
    f = line.split()
    assert len(f) == 8, line
    assert int(f[0]) > 60000 and 0 <= float(f[1]) <= 86400, line
    assert f[2] in addresses, line
    int(f[3], 16)
    for x in f[4:]:
        assert len(x.split(".")[1]) == 9, line


def test_daemon_writes_parseable_stats_files(tmp_path: Path) -> None:
    statsdir = tmp_path / "ntpstats"
    statsdir.mkdir()
    with offset_servers([("127.0.9.1", 0.0), ("127.0.9.2", 0.0)]) as ups:
        conf = "".join(
            f"server {u.address} port {u.port} iburst minpoll 3 maxpoll 4\n" for u in ups
        )
        conf += f"statsdir {statsdir}/\nstatistics loopstats peerstats clockstats\n"
        with running_ntpy(tmp_path, conf, listen=["127.0.9.10:0"]) as d:
            loop_line = d.wait_for_log(r"loopstats -> ")
            assert str(statsdir) in loop_line
            d.wait_for_log(r"clockstats: not produced by ntpy")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if lines_of(statsdir / "loopstats") and len(lines_of(statsdir / "peerstats")) >= 2:
                    break
                time.sleep(0.2)
            # Read while the daemon still runs: the lines are on disk already.
            loops = lines_of(statsdir / "loopstats")
            peers = lines_of(statsdir / "peerstats")
            assert loops and peers, d.log
        assert d.proc.returncode == 0, d.log
    assert "Traceback" not in d.log
    current = os.readlink(statsdir / "loopstats")
    assert current.startswith("loopstats.") and len(current) == len("loopstats.20261122")
    assert (statsdir / current).is_file()
    for line in loops:
        check_loopstats(line)
    for line in peers:
        check_peerstats(line, {"127.0.9.1", "127.0.9.2"})

    if NTPSEC_STATFILES.exists() and shutil.which(NTPSEC_PYTHON):
        script = (
            "import json, sys\nfrom ntp.statfiles import NTPStats\n"
            # endtime a minute ahead: NTPStats skips lines of the current second otherwise
            "import time\ns = NTPStats(sys.argv[1], endtime=int(time.time()) + 60)\n"
            "print(json.dumps([len(s.loopstats), sorted(s.peersplit())]))\n"
        )
        res = subprocess.run(
            [NTPSEC_PYTHON, "-c", script, str(statsdir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        n_loops, peer_ips = json.loads(res.stdout)
        assert n_loops >= len(loops) and n_loops > 0
        assert set(peer_ips) <= {"127.0.9.1", "127.0.9.2"} and peer_ips
    else:
        pytest.skip("NTPsec's ntp.statfiles not installed: parsed with our own checks only")
