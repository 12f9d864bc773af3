"""``includefile``: relative paths, errors reported in the included file, cycles, depth."""

from __future__ import annotations

from pathlib import Path

import pytest

from ntpy.config import ConfigError, load, parse_text


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_relative_include_is_relative_to_the_including_file(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "servers.conf", "server a.example\nincludefile more.conf\n")
    write(tmp_path / "conf.d" / "more.conf", "server b.example\n")
    main = write(tmp_path / "ntp.conf", "driftfile /d\nincludefile conf.d/servers.conf\n")
    result = load(str(main))
    config = result.config
    assert [s.address for s in config.servers] == ["a.example", "b.example"]
    assert config.includes == (
        str(main),
        str(tmp_path / "conf.d" / "servers.conf"),
        str(tmp_path / "conf.d" / "more.conf"),
    )
    location = config.servers[1].location
    assert location is not None and location.filename.endswith("more.conf")


def test_parse_text_uses_base_dir(tmp_path: Path) -> None:
    write(tmp_path / "inc.conf", "pool pool.example\n")
    config = parse_text("includefile inc.conf", base_dir=str(tmp_path)).config
    assert config.servers[0].kind == "pool"


def test_absolute_include(tmp_path: Path) -> None:
    inc = write(tmp_path / "abs.conf", "server a.example\n")
    assert parse_text(f'includefile "{inc}"').config.servers[0].address == "a.example"


def test_error_in_included_file_names_that_file_and_line(tmp_path: Path) -> None:
    inc = write(tmp_path / "bad.conf", "# ok\nserver a.example\nserver a.example minpoll 99\n")
    main = write(tmp_path / "ntp.conf", "includefile bad.conf\n")
    with pytest.raises(ConfigError) as info:
        load(str(main))
    assert (info.value.filename, info.value.line) == (str(inc), 3)
    assert "'minpoll'" in info.value.message


def test_warning_in_included_file_names_that_file(tmp_path: Path) -> None:
    inc = write(tmp_path / "w.conf", "\nfrobnicate\n")
    result = parse_text("includefile w.conf", "main.conf", base_dir=str(tmp_path))
    (warning,) = result.warnings
    assert (warning.filename, warning.line) == (str(inc), 2)


def test_missing_include_is_an_error_at_the_includefile_line(tmp_path: Path) -> None:
    main = write(tmp_path / "ntp.conf", "server a.example\nincludefile nope.conf\n")
    with pytest.raises(ConfigError) as info:
        load(str(main))
    error = info.value
    assert (error.filename, error.line) == (str(main), 2)
    assert "cannot read include file 'nope.conf'" in error.message
    assert "No such file" in error.message


def test_include_of_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        parse_text("includefile d", base_dir=str(tmp_path))


def test_include_needs_exactly_one_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a path") as info:
        parse_text("\nincludefile", "m.conf", base_dir=str(tmp_path))
    assert info.value.line == 2
    with pytest.raises(ConfigError, match="unexpected 'b'"):
        parse_text("includefile a b", base_dir=str(tmp_path))


def test_self_include_cycle(tmp_path: Path) -> None:
    main = write(tmp_path / "ntp.conf", "server a.example\nincludefile ntp.conf\n")
    with pytest.raises(ConfigError) as info:
        load(str(main))
    assert (info.value.filename, info.value.line) == (str(main), 2)
    assert "cycle" in info.value.message


def test_indirect_cycle(tmp_path: Path) -> None:
    write(tmp_path / "a.conf", "includefile b.conf\n")
    b = write(tmp_path / "b.conf", "# b\nincludefile a.conf\n")
    main = write(tmp_path / "ntp.conf", "includefile a.conf\n")
    with pytest.raises(ConfigError) as info:
        load(str(main))
    assert (info.value.filename, info.value.line) == (str(b), 2)
    assert "cycle" in info.value.message and "a.conf" in info.value.message


def test_depth_limit(tmp_path: Path) -> None:
    for i in range(7):
        write(tmp_path / f"l{i}.conf", f"includefile l{i + 1}.conf\n")
    write(tmp_path / "l7.conf", "server deep.example\n")
    # ntpd allows include files nested five deep: ntp.conf -> l3 -> l4 -> l5 -> l6 -> l7.
    main = write(tmp_path / "ntp.conf", "includefile l3.conf\n")
    assert load(str(main)).config.servers[0].address == "deep.example"
    too_deep = write(tmp_path / "deep.conf", "includefile l2.conf\n")  # six deep
    with pytest.raises(ConfigError, match="nested deeper than 5"):
        load(str(too_deep))


def test_load_missing_top_level_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "absent.conf"))
    assert info.value.line == 0
    assert "cannot read configuration file" in str(info.value)


def test_load_non_utf8_comment_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"# caf\xe9\nserver a.example\n")
    assert load(str(path)).config.servers[0].address == "a.example"


def _fan_out(tmp_path: Path, levels: int, width: int) -> Path:
    """f0 includes f1 `width` times, f1 includes f2 `width` times, ...: width**levels files."""
    for level in range(levels):
        body = f"includefile f{level + 1}.conf\n" * width
        write(tmp_path / f"f{level}.conf", body)
    write(tmp_path / f"f{levels}.conf", "server a.example\n")
    return tmp_path / "f0.conf"


def test_include_fan_out_is_capped_with_file_and_line(tmp_path: Path) -> None:
    """Issue 11: 5 files of 25 includefile lines expanded to 390k lines; SIGHUP then blocked
    the main loop for 18 s. Now the 101st include file stops the parse at its own line."""
    from ntpy.config.parser import MAX_INCLUDED_FILES

    with pytest.raises(ConfigError) as info:
        load(str(_fan_out(tmp_path, levels=3, width=25)))
    error = info.value
    assert f"more than {MAX_INCLUDED_FILES} include files" in error.message
    assert error.filename.endswith(".conf") and error.line >= 1
    assert "(expected: includefile" in error.message


def test_include_line_total_is_capped(tmp_path: Path) -> None:
    from ntpy.config.parser import MAX_TOTAL_LINES

    write(tmp_path / "big.conf", "# comment\n" * MAX_TOTAL_LINES)
    main = write(tmp_path / "ntp.conf", "server a.example\nincludefile big.conf\n")
    with pytest.raises(ConfigError) as info:
        load(str(main))
    assert (info.value.filename, info.value.line) == (str(main), 2)
    assert f"exceeds {MAX_TOTAL_LINES} lines in total" in info.value.message


def test_a_reasonable_number_of_includes_still_works(tmp_path: Path) -> None:
    config = load(str(_fan_out(tmp_path, levels=2, width=9))).config  # 9 + 81 = 90 files
    assert len(config.includes) == 91
