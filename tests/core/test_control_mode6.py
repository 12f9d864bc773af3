"""Mode 6 (ntpq) codec and responder: header rules, variables, fragments, errors, fuzz.

(Named test_control_mode6.py: tests/daemon/test_control.py already owns the basename.)
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import status_samples as samples
from ntpy.core import control as c
from ntpy.core.packet import refid_from_ipv4, refid_from_text
from ntpy.core.status import SourceStatus, SyncStatus, peer_status_word
from ntpy.core.timestamps import NS_PER_S, unix_ns_to_ntp

NOW = 1_790_000_000 * NS_PER_S
INFO = c.ControlInfo("ntpy 0.1.0", "x86_64", "Linux", "6.1")


def source(**kw: object) -> SourceStatus:
    """The shared system-peer sample as a server at 127.0.66.3 polled every 8 s, with the
    peer variables ntpq asks for (srcport, hpoll, ppoll, reftime, rec) filled in."""
    mode6: dict[str, object] = dict(
        name="127.0.66.3",
        address="127.0.66.3",
        when_s=3,
        poll_s=8,
        delay_ns=221_551,
        offset_ns=-1_234_567,
        jitter_ns=4_328,
        dispersion_ns=13_729,
        root_dispersion_ns=214_000,
        port=48044,
        hpoll=3,
        ppoll=3,
        reference_ns=NOW - 14 * NS_PER_S,
        received_ns=NOW - NS_PER_S,
        refid_raw=refid_from_text("GPS"),
    )
    return samples.source(**(mode6 | kw))


LOCAL = samples.local_source(refid_raw=0x7F7F0100)
"""ntpd's LOCAL driver; its refid on the wire is its address, 127.127.1.0."""


def status(*sources: SourceStatus, **kw: object) -> SyncStatus:
    """The shared synchronised sample following ``source()`` and with ``LOCAL`` configured."""
    mode6: dict[str, object] = dict(
        refid="127.0.66.3",
        system_peer="127.0.66.3",
        reference_ns=NOW - NS_PER_S,
        root_delay_ns=222_000,
        root_dispersion_ns=231_000,
        root_distance_ns=341_000,
        offset_ns=-2_647,
        frequency_ppb=-409.0,
        jitter_ns=4_328,
        poll_s=8,
        precision=-23,
        clock_jitter_ns=11_892_314,
        clock_wander_ppb=1548.945,
        time_constant=3,
        min_time_constant=3,
        refid_raw=refid_from_ipv4("127.0.66.3"),
        updates=5,
    )
    return samples.status(*(sources or (source(), LOCAL)), **(mode6 | kw))


def snap_of(st_: SyncStatus) -> Callable[[], c.ControlSnapshot]:
    return lambda: c.ControlSnapshot(st_, NOW)


def req(
    op: int,
    assoc: int = 0,
    data: bytes = b"",
    *,
    seq: int = 7,
    version: int = 2,
    flags: int = 0,
    offset: int = 0,
    count: int | None = None,
    mode: int = 6,
    pad: bool = True,
    trailer: bytes = b"",
) -> bytes:
    n = len(data) if count is None else count
    head = struct.pack("!BBHHHHH", (version << 3) | mode, flags | op, seq, 0, assoc, offset, n)
    body = data + (bytes(-(12 + len(data)) % 4) if pad else b"")
    return head + body + trailer


def ask(
    request: bytes, st_: SyncStatus | None = None, responder: c.ControlResponder | None = None
) -> list[bytes]:
    r = responder or c.ControlResponder(INFO)
    return r.handle(request, snap_of(st_ or status()))


def text_vars(replies: list[bytes]) -> tuple[c.ControlHeader, str, dict[str, str]]:
    head, data = c.reassemble(replies)
    text = data.decode("ascii")
    items = [p.strip() for p in text.split(",") if p.strip()]
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        out[name] = value
    return head, text, out


def assert_well_formed(request: bytes, replies: list[bytes]) -> None:
    """What every reply must look like, whatever the request was."""
    for i, raw in enumerate(replies):
        h = c.decode_header(raw)
        assert h.mode == 6 and h.flags_op & c.FLAG_RESPONSE
        assert len(raw) % 4 == 0 and len(raw) >= 12
        assert h.count <= c.MAX_DATA_LEN and len(raw) == 12 + h.count + (-h.count % 4)
        assert h.version == (request[0] >> 3) & 7
        assert h.sequence == struct.unpack_from("!H", request, 2)[0]
        assert h.assoc_id == struct.unpack_from("!H", request, 6)[0]
        assert bool(h.flags_op & c.FLAG_MORE) == (i < len(replies) - 1)
        if h.flags_op & c.FLAG_ERROR:
            assert len(replies) == 1 and len(raw) == 12 <= len(request)
    if replies:
        c.reassemble(replies)


# ------------------------------------------------------------------ READSTAT


def test_readstat_lists_every_association_with_its_status_word() -> None:
    st_ = status()
    replies = ask(req(c.OP_READSTAT), st_)
    assert len(replies) == 1
    head, data = c.reassemble(replies)
    assert head.flags_op == c.FLAG_RESPONSE | c.OP_READSTAT
    assert head.sequence == 7 and head.version == 2 and head.assoc_id == 0
    pairs = [struct.unpack_from("!HH", data, i) for i in range(0, len(data), 4)]
    assert pairs == [(1, peer_status_word(source())), (c.LOCAL_ASSOC_ID, peer_status_word(LOCAL))]
    # leap none, source NTP, one event, clock_sync
    assert head.status == (0 << 14) | (c.SST_NTP << 8) | 0x10 | c.SYS_EVENT_CLOCK_SYNC
    assert (peer_status_word(source()) >> 8) & 7 == 6  # ntpq's '*'


def test_system_status_word_names_the_local_clock_and_unsynchronized_states() -> None:
    local_peer = status(
        source(tally=" ", reach=0), source(**{**_local_kw(), "tally": "*"}), system_peer_id=None
    )
    assert (c.system_status_word(local_peer) >> 8) & 0x3F == c.SST_LOCAL
    assert c.system_peer_assoc(local_peer) == c.LOCAL_ASSOC_ID
    unsynced = status(source(tally=" "), synchronized=False, leap=3, system_peer_id=None, updates=0)
    word = c.system_status_word(unsynced)
    assert word >> 14 == 3 and (word >> 8) & 0x3F == c.SST_UNSPEC
    assert word & 0xF == c.SYS_EVENT_RESTART
    assert c.system_peer_assoc(unsynced) == 0


def _local_kw() -> dict[str, object]:
    return {f: getattr(LOCAL, f) for f in LOCAL.__dataclass_fields__}


def test_readstat_and_readvar_of_an_unknown_association_get_badassoc() -> None:
    for op in (c.OP_READSTAT, c.OP_READVAR, c.OP_UNSPEC):
        (reply,) = ask(req(op, assoc=4242))
        h = c.decode_header(reply)
        assert h.flags_op == c.FLAG_RESPONSE | c.FLAG_ERROR | op
        assert h.status >> 8 == c.CERR_BADASSOC and h.count == 0 and h.assoc_id == 4242


def test_readstat_of_one_peer_returns_its_variables() -> None:
    head, _, values = text_vars(ask(req(c.OP_READSTAT, assoc=1)))
    assert head.status == peer_status_word(source())
    assert values["srcadr"] == "127.0.66.3" and values["reach"] == "0xff"


# ------------------------------------------------------------------ READVAR, system


def test_system_variables_formatted_as_ntpd_prints_them() -> None:
    head, text, v = text_vars(ask(req(c.OP_READVAR)))
    assert list(v) == list(c.SYSTEM_DEFAULTS)
    assert head.status == c.system_status_word(status())
    assert text.endswith("\r\n")
    assert all(len(line) <= c.MAX_LINE_LEN for line in text.split("\r\n"))
    assert v["leap"] == "0" and v["stratum"] == "2" and v["precision"] == "-23"
    assert v["rootdelay"] == "0.222" and v["rootdisp"] == "0.231" and v["rootdist"] == "0.341"
    assert v["refid"] == "127.0.66.3"
    assert v["peer"] == "1" and v["tc"] == "3" and v["mintc"] == "3"
    assert v["offset"] == "-0.002647" and v["sys_jitter"] == "0.004328"
    assert v["frequency"] == "-0.409" and v["clk_jitter"] == "11.892314"
    assert v["clk_wander"] == "1.548945"
    assert v["version"] == '"ntpy 0.1.0"' and v["system"] == '"Linux"'
    stamp = re.compile(r"^0x[0-9a-f]{8}\.[0-9a-f]{8}$")
    assert stamp.match(v["reftime"]) and stamp.match(v["clock"])
    assert int(v["clock"].replace(".", "")[2:], 16) == unix_ns_to_ntp(NOW)
    assert int(v["reftime"].replace(".", "")[2:], 16) == unix_ns_to_ntp(NOW - NS_PER_S)


def test_unsynchronized_system_shows_text_refid_and_zero_reftime() -> None:
    st_ = status(
        source(tally=" "),
        synchronized=False,
        leap=3,
        stratum=16,
        refid="INIT",
        refid_raw=refid_from_text("INIT"),
        reference_ns=None,
        system_peer_id=None,
    )
    _, _, v = text_vars(ask(req(c.OP_READVAR), st_))
    assert v["refid"] == "INIT" and v["leap"] == "3" and v["stratum"] == "16"
    assert v["reftime"] == "0x00000000.00000000" and v["peer"] == "0"


def test_requested_variables_only_in_request_order_once_each() -> None:
    _, _, v = text_vars(ask(req(c.OP_READVAR, data=b"stratum,offset")))
    assert list(v) == ["stratum", "offset"]
    _, _, v = text_vars(ask(req(c.OP_READVAR, data=b"offset, stratum=5,,offset")))
    assert list(v) == ["offset", "stratum"] and v["stratum"] == "2"  # a read ignores values


def test_duplicated_names_do_not_amplify() -> None:
    once = sum(map(len, ask(req(c.OP_READVAR, data=b"clock"))))
    many = sum(map(len, ask(req(c.OP_READVAR, data=b",".join([b"clock"] * 70)))))
    assert many == once


def test_unknown_variable_is_refused_as_ntpd_does() -> None:
    (reply,) = ask(req(c.OP_READVAR, data=b"stratum,nosuch"))
    h = c.decode_header(reply)
    assert h.flags_op & c.FLAG_ERROR and h.status >> 8 == c.CERR_UNKNOWNVAR and len(reply) == 12
    (reply,) = ask(req(c.OP_READVAR, assoc=1, data=b"xmt"))
    assert c.decode_header(reply).status >> 8 == c.CERR_UNKNOWNVAR


# ------------------------------------------------------------------ READVAR, peers


def test_upstream_peer_variables() -> None:
    head, _, v = text_vars(ask(req(c.OP_READVAR, assoc=1)))
    assert head.status == peer_status_word(source()) and head.assoc_id == 1
    assert list(v) == [n for n in c.PEER_ORDER if n != "srchost"]
    assert v["srcadr"] == "127.0.66.3" and v["srcport"] == "48044"
    assert v["refid"] == "GPS" and v["stratum"] == "1" and v["hmode"] == "3"
    assert v["hpoll"] == "3" and v["ppoll"] == "3" and v["precision"] == "-20"
    assert v["delay"] == "0.221551" and v["offset"] == "-1.234567"
    assert v["jitter"] == "0.004328" and v["dispersion"] == "0.013729"
    assert v["rootdelay"] == "0.000" and v["rootdisp"] == "0.214"
    assert v["reach"] == "0xff" and v["flash"] == "0x0" and v["leap"] == "0"
    assert int(v["rec"].replace(".", "")[2:], 16) == unix_ns_to_ntp(NOW - NS_PER_S)


def test_stratum_two_refid_is_a_dotted_quad_and_named_sources_have_srchost() -> None:
    src = source(
        stratum=2, refid_raw=refid_from_ipv4("192.0.2.7"), refid="192.0.2.7", name="ntp.example"
    )
    _, _, v = text_vars(ask(req(c.OP_READVAR, assoc=1), status(src, LOCAL)))
    assert v["refid"] == "192.0.2.7" and v["srchost"] == '"ntp.example"'


def test_never_reached_source_reads_init_with_zero_times() -> None:
    src = source(
        tally=" ", reach=0, stratum=16, refid=".INIT.", refid_raw=0, received_ns=None, leap=3
    )
    src = source(**{**{f: getattr(src, f) for f in src.__dataclass_fields__}, "reference_ns": None})
    _, _, v = text_vars(ask(req(c.OP_READVAR, assoc=1), status(src, LOCAL)))
    assert v["refid"] == "INIT" and v["reach"] == "0x0"
    assert v["rec"] == v["reftime"] == "0x00000000.00000000"


def test_local_clock_looks_like_ntpds_local_refclock() -> None:
    head, _, v = text_vars(ask(req(c.OP_READVAR, assoc=c.LOCAL_ASSOC_ID)))
    assert head.status == peer_status_word(LOCAL)
    assert v["srcadr"] == "127.127.1.0" and v["srchost"] == '"LOCAL(0)"'
    assert v["refid"] == "LOCL" and v["stratum"] == "10"


def test_requested_peer_variables_come_in_table_order() -> None:
    _, _, v = text_vars(ask(req(c.OP_READVAR, assoc=1, data=b"offset,srcadr,offset")))
    assert list(v) == ["srcadr", "offset"]


def test_assoc_ids_are_nonzero_sixteen_bit_and_stable() -> None:
    assert c.wire_assoc_id(LOCAL) == c.LOCAL_ASSOC_ID
    assert c.wire_assoc_id(source(id=1)) == 1
    assert c.wire_assoc_id(source(id=0xFFFE)) == 0xFFFE
    assert c.wire_assoc_id(source(id=0xFFFF)) == 1
    assert all(1 <= c.wire_assoc_id(source(id=i)) < 0xFFFF for i in range(1, 200_000, 997))


# ------------------------------------------------------------------ fragments


def test_large_replies_fragment_at_468_bytes_with_more_bits_and_offsets() -> None:
    many = tuple(source(id=i, tally=" ") for i in range(1, 301))
    replies = ask(req(c.OP_READSTAT), status(*many))
    assert len(replies) == 3  # 1200 bytes of pairs
    assert_well_formed(req(c.OP_READSTAT), replies)
    heads = [c.decode_header(r) for r in replies]
    assert [h.count for h in heads] == [468, 468, 264]
    assert [h.offset for h in heads] == [0, 468, 936]
    _, data = c.reassemble(list(reversed(replies)))
    assert len(data) == 1200


def test_long_text_splits_across_fragments_and_reassembles() -> None:
    info = c.ControlInfo("v" * 250, "p" * 250, "s" * 250, "r" * 250)
    request = req(c.OP_READVAR)
    replies = ask(request, responder=c.ControlResponder(info))
    assert len(replies) >= 3
    assert_well_formed(request, replies)
    _, _, v = text_vars(replies)
    assert v["version"] == '"' + "v" * 250 + '"' and v["mintc"] == "3"


def test_strings_cannot_break_the_text_format() -> None:
    info = c.ControlInfo('bad"name,\r\n\x00', "x", "y", "z")
    _, _, v = text_vars(ask(req(c.OP_READVAR, data=b"version"), responder=c.ControlResponder(info)))
    assert v == {"version": '"bad?name????"'}


# ------------------------------------------------------------------ refusals and drops


@pytest.mark.parametrize(
    "op", [c.OP_WRITEVAR, c.OP_WRITECLOCK, c.OP_CONFIGURE, c.OP_READ_ORDLIST_A]
)
def test_writes_and_configuration_are_refused(op: int) -> None:
    r = c.ControlResponder(INFO)
    called: list[int] = []

    def snap() -> c.ControlSnapshot:
        called.append(1)
        return c.ControlSnapshot(status(), NOW)

    (reply,) = r.handle(req(op, data=b"stratum=1"), snap)
    h = c.decode_header(reply)
    assert h.flags_op == c.FLAG_RESPONSE | c.FLAG_ERROR | op
    assert h.status >> 8 == c.CERR_PERMISSION and called == []
    assert r.counters["error_permission"] == 1


@pytest.mark.parametrize("op", [c.OP_READCLOCK, 6, 7, 9, c.OP_READ_MRU, c.OP_REQ_NONCE, 31])
def test_unsupported_opcodes_get_badop(op: int) -> None:
    (reply,) = ask(req(op))
    assert c.decode_header(reply).status >> 8 == c.CERR_BADOP


def test_unspec_answers_with_status_and_no_data() -> None:
    (reply,) = ask(req(c.OP_UNSPEC))
    h = c.decode_header(reply)
    assert h.count == 0 and len(reply) == 12 and h.status == c.system_status_word(status())


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (b"", "drop_too_short"),
        (req(c.OP_READVAR)[:11], "drop_too_short"),
        (req(c.OP_READVAR, mode=3), "drop_bad_mode"),
        (req(c.OP_READVAR, flags=c.FLAG_RESPONSE), "drop_response"),
        (req(c.OP_READVAR, flags=c.FLAG_ERROR), "drop_error_bit"),
        (req(c.OP_READVAR, flags=c.FLAG_MORE), "drop_fragment"),
        (req(c.OP_READVAR, offset=4), "drop_bad_offset"),
        (req(c.OP_READVAR, version=0), "drop_bad_version"),
        (req(c.OP_READVAR, version=5), "drop_bad_version"),
    ],
)
def test_malformed_requests_are_dropped_and_counted(request_: bytes, reason: str) -> None:
    r = c.ControlResponder(INFO)
    assert ask(request_, responder=r) == []
    assert r.counters == {reason: 1}


@pytest.mark.parametrize(
    "request_",
    [
        req(c.OP_READVAR, data=b"stratum", pad=False),  # 19 bytes: not a multiple of 4
        req(c.OP_READVAR, data=b"stratum", count=40),  # count beyond the data
        req(c.OP_READVAR, data=bytes(472), count=472),  # count beyond 468
    ],
)
def test_bad_lengths_get_badfmt(request_: bytes) -> None:
    r = c.ControlResponder(INFO)
    (reply,) = ask(request_, responder=r)
    assert c.decode_header(reply).status >> 8 == c.CERR_BADFMT and len(reply) == 12
    assert r.counters == {"error_badfmt": 1}


def test_a_trailing_mac_is_tolerated_and_grants_nothing() -> None:
    mac = struct.pack("!I", 1) + bytes(16)
    _, _, v = text_vars(ask(req(c.OP_READVAR, data=b"stratum", trailer=mac)))
    assert v == {"stratum": "2"}
    (reply,) = ask(req(c.OP_WRITEVAR, data=b"stratum=1", trailer=mac))
    assert c.decode_header(reply).status >> 8 == c.CERR_PERMISSION


def test_all_versions_one_to_four_are_echoed() -> None:
    for version in (1, 2, 3, 4):
        (reply,) = ask(req(c.OP_READVAR, data=b"leap", version=version))
        assert (reply[0] >> 3) & 7 == version and reply[0] & 7 == 6


# ------------------------------------------------------------------ fuzz


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_give_nothing_or_well_formed_replies(data: bytes) -> None:
    replies = ask(data)
    assert isinstance(replies, list)
    if replies:
        assert_well_formed(data, replies)


@settings(max_examples=400, deadline=None)
@given(
    version=st.integers(1, 4),
    op=st.integers(0, 31),
    assoc=st.sampled_from([0, 1, c.LOCAL_ASSOC_ID, 2, 0xFFFE]),
    names=st.lists(
        st.sampled_from([*c.SYSTEM_DEFAULTS, *c.PEER_ORDER, "nosuch", "", " ", "a=b"]),
        max_size=40,
    ),
    junk=st.binary(max_size=8),
    seq=st.integers(0, 0xFFFF),
)
def test_valid_headers_with_any_names_always_answer_well_formed(
    version: int, op: int, assoc: int, names: list[str], junk: bytes, seq: int
) -> None:
    data = ",".join(names).encode()[: c.MAX_DATA_LEN] + junk
    data = data[: c.MAX_DATA_LEN]
    request = req(op, assoc, data, seq=seq, version=version)
    replies = ask(request)
    assert replies, "a well-formed request always gets an answer or an error"
    assert_well_formed(request, replies)
    total = sum(map(len, replies))
    assert total <= 2 * 1024  # bounded: no request can make the reply grow without limit
