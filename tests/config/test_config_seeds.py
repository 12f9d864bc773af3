"""Configs taken from the real-world guides in /work/shared/seeds.

The valid configs must parse to what an ntpd admin would expect; the lines the guides
garbled in copy-paste (dots stripped from addresses, a mask with no value) must fail with
the ``file:line`` of the bad line rather than being silently accepted.
"""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from ntpy.config import ConfigError, parse_text

# Seed 002 (CentOS, joining the NTP pool): the final /etc/ntp.conf, with the guide's comments.
CENTOS_POOL = """\
# For more information about this file, see the man pages
# ntp.conf(5),ntp_acc(5),ntp_auth(5),ntp_clock(5),ntp_misc(5),ntp_mon(5).

driftfile /var/lib/ntp/ntp.drift

# Permit time synchronization with our time source, but do not
# permit the source to query or modify the service on this system.
restrict default nomodify notrap nopeer noquery kod limited

# Permit all access over the loopback interface.  This could
# be tightened as well, but to do so would effect some of
# the administrative functions.
restrict 127.0.0.1
restrict ::1

server ntp_server_hostname_1 iburst
server ntp_server_hostname_2 iburst
server ntp_server_hostname_3 iburst
server ntp_server_hostname_4 iburst
server ntp_server_hostname_5 iburst
"""

# Seed 002, the distribution default it starts from.
CENTOS_DEFAULT = """\
driftfile /var/lib/ntp/drift
# Use public servers from the pool.ntp.org project.
# Please consider joining the pool(http://www.pool.ntp.org/join.html).
server 0.centos.pool.ntp.org iburst
server 1.centos.pool.ntp.org iburst
server 2.centos.pool.ntp.org iburst
server 3.centos.pool.ntp.org iburst
"""

# Seed 003 (Linux Home Networking): servers with trailing comments, restricts repaired
# to the form the text describes (single-host mask), plus localhost.
HOME_NETWORKING = """\
server  otherntp.server.org    # A stratum 1 server at server.org
server  ntp.research.gov       # A stratum 2 server at research.gov
restrict otherntp.server.org   mask 255.255.255.255 nomodify notrap noquery
restrict ntp.research.gov      mask 255.255.255.255 nomodify notrap noquery
restrict 192.168.1.0 mask 255.255.255.0 nomodify notrap
# -- CLIENT NETWORK -------
#restrict mask notrust nomodify notrap
restrict 127.0.0.1
"""

# Seed 001 (Chinese CentOS guide), with the dots the web page lost put back.
CHINESE_GUIDE = """\
#############################
server 210.72.145.44     #中国国家授时中心的IP
server 0.uk.pool.ntp.org
server 1.uk.pool.ntp.org
fudge 127.127.1.0 stratum 0
driftfile /var/lib/ntp/ntp.drift
##############################
restrict default kod nomodify notrap nopeer noquery
restrict 127.0.0.1
restrict 192.168.1.0 mask 255.255.255.0 nomodify
server 127.127.1.0
logfile /var/log/ntpd.log
server  1.cn.pool.ntp.org
server  2.asia.pool.ntp.org
server  3.asia.pool.ntp.org
"""

# Seed 000 (Ubuntu): "Server [ip or hostname] [PREFER]" and "Driftfile", capitalised.
UBUNTU = """\
Server ntp.ubuntu.com PREFER
Driftfile /var/lib/ntp/ntp.drift
"""


def test_centos_pool_config() -> None:
    result = parse_text(CENTOS_POOL, "ntp.conf", strict=True)
    config = result.config
    assert result.warnings == ()
    assert config.driftfile == "/var/lib/ntp/ntp.drift"
    assert [s.address for s in config.servers] == [f"ntp_server_hostname_{i}" for i in range(1, 6)]
    assert all(s.iburst and s.kind == "server" for s in config.servers)
    default, v4, v6 = config.restricts
    assert default.target == "default"
    assert default.networks == (ip_network("0.0.0.0/0"), ip_network("::/0"))
    assert default.flags == {"nomodify", "notrap", "nopeer", "noquery", "kod", "limited"}
    assert v4.networks == (ip_network("127.0.0.1/32"),) and v4.flags == frozenset()
    assert v6.networks == (ip_network("::1/128"),)


def test_centos_default_config() -> None:
    config = parse_text(CENTOS_DEFAULT, strict=True).config
    assert [s.address for s in config.servers] == [f"{i}.centos.pool.ntp.org" for i in range(4)]
    assert config.driftfile == "/var/lib/ntp/drift"


def test_home_networking_config() -> None:
    config = parse_text(HOME_NETWORKING, strict=True).config
    assert [s.address for s in config.servers] == ["otherntp.server.org", "ntp.research.gov"]
    host_rule = config.restricts[0]
    assert host_rule.target == "host" and host_rule.host == "otherntp.server.org"
    assert str(host_rule.mask) == "255.255.255.255"
    assert host_rule.flags == {"nomodify", "notrap", "noquery"}
    lan = config.restricts[2]
    assert lan.networks == (ip_network("192.168.1.0/24"),)


def test_chinese_guide_config() -> None:
    result = parse_text(CHINESE_GUIDE, strict=True)
    config = result.config
    assert [s.address for s in config.servers][:3] == [
        "210.72.145.44",
        "0.uk.pool.ntp.org",
        "1.uk.pool.ntp.org",
    ]
    (local,) = config.refclocks
    # The fudge line comes before the server line; they are still merged.
    assert local.is_local and local.stratum == 0 and local.refid == "LOCL"
    assert config.logfile == "/var/log/ntpd.log"


def test_ubuntu_capitalised_directives() -> None:
    config = parse_text(UBUNTU, strict=True).config
    (server,) = config.servers
    assert server.address == "ntp.ubuntu.com" and server.prefer
    assert config.driftfile == "/var/lib/ntp/ntp.drift"


GARBLED = [
    # (line as printed by the guide, words the error must contain)
    ("server 2107214544     #中国国家授时中心的IP", ["'2107214544'", "dots"]),
    ("fudge 12712710 stratum 0 ", ["'12712710'", "127.127.T.U"]),
    ("server 12712710", ["'12712710'", "dots"]),
    ("restrict 127001", ["'127001'", "dots"]),
    ("restrict 19216810 mask 2552552550 nomodify", ["'19216810'"]),
    ("restrict otherntp.server.org   mask nomodify notrap noquery", ["'mask'", "'nomodify'"]),
    ("restrict mask nomodify notrap", ["address", "'mask'"]),
    ("restrict mask", ["address", "'mask'"]),
    ("Server [ip or hostname] [PREFER]", ["'[ip'"]),
]


@pytest.mark.parametrize(("line", "words"), GARBLED)
def test_garbled_seed_lines_fail_at_their_line(line: str, words: list[str]) -> None:
    text = "driftfile /var/lib/ntp/drift\n# a comment\n" + line + "\nserver pool.ntp.org\n"
    with pytest.raises(ConfigError) as info:
        parse_text(text, "ntp.conf")
    error = info.value
    assert (error.filename, error.line) == ("ntp.conf", 3)
    assert str(error).startswith("ntp.conf:3: ")
    assert "(expected: " in error.message
    for word in words:
        assert word in error.message


def test_dotless_single_label_host_is_still_a_host_name() -> None:
    # "server 0oceaniapoolntporg" (seed 001) is a legal, if unlikely, DNS name; only DNS can
    # tell it is wrong, so the parser accepts it.
    (server,) = parse_text("server 0oceaniapoolntporg").config.servers
    assert server.address == "0oceaniapoolntporg"
