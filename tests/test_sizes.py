"""Sizes are read one way everywhere (manifests' shard sizes, `--headroom`), with the same units they are shown in."""

from __future__ import annotations

import pytest

from modelrig.convert.shards import parse_size as shard_size
from modelrig.errors import ConversionError, UsageError
from modelrig.fetch.sources import parse_size as option_size
from modelrig.humansize import format_size, parse_size


@pytest.mark.parametrize("text,expected", [
    ("5GB", 5_000_000_000), ("500MB", 500_000_000), ("1kB", 1000), ("2.5 GB", 2_500_000_000), ("0", 0),
    ("512MiB", 512 << 20), ("1GiB", 1 << 30), ("100", 100), (7, 7),
])
def test_sizes_parse_in_decimal_units_unless_written_binary(text, expected):
    assert parse_size(text) == expected
    assert shard_size(text) == expected
    if isinstance(text, str):
        assert option_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "5XB", "-1GB", "five", "nanGB"])
def test_a_bad_size_is_an_error_naming_it(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)
    with pytest.raises(ConversionError, match="invalid size"):
        shard_size(text)
    with pytest.raises(UsageError, match="not a size"):
        option_size(text)


@pytest.mark.parametrize("n", [999, 1500, 25_213_000_000, 117e9, 5 * 10**15])
def test_what_is_shown_reads_back_as_about_the_same_count(n):
    shown = format_size(n).replace(" ", "")
    assert abs(parse_size(shown) - n) <= 0.005 * n
