"""The append-only JSONL cache the real pair's slow builds resume from (training/jsonl_cache.py)."""

from relayllm.training.jsonl_cache import JsonlCache


def test_rows_written_are_read_back_by_a_later_run(tmp_path):
    path = tmp_path / "cache.jsonl"
    with JsonlCache(path) as cache:
        cache.add({"key": "a", "ids": [1, 2]})
        cache.add({"key": "b", "ids": [3]})
        assert "a" in cache and cache["b"]["ids"] == [3]
    again = JsonlCache(path)
    assert set(again.rows) == {"a", "b"} and again["a"]["ids"] == [1, 2]
    assert path.read_text().count("\n") == 2  # one line per row


def test_a_row_is_on_disk_as_soon_as_it_is_added(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = JsonlCache(path)
    cache.add({"key": 1, "right": True})
    assert JsonlCache(path)[1]["right"] is True  # read before close: flushed, a kill now keeps it
    cache.close()


def test_a_write_cut_by_a_kill_is_skipped_and_the_next_row_starts_its_own_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a", "ids": [1]}\n{"key": "b", "id')  # killed in the middle of a write
    cache = JsonlCache(path)
    assert set(cache.rows) == {"a"}  # the cut row is done again, not read wrongly
    cache.add({"key": "b", "ids": [2]})
    cache.close()
    again = JsonlCache(path)
    assert set(again.rows) == {"a", "b"} and again["b"]["ids"] == [2]


def test_another_key_field_and_no_file(tmp_path):
    cache = JsonlCache(tmp_path / "reads.jsonl", key="question")
    cache.add({"question": 3, "t": None})
    cache.close()
    assert JsonlCache(tmp_path / "reads.jsonl", key="question")[3]["t"] is None
    memory = JsonlCache(None)  # no file: kept in memory only
    memory.add({"key": "x"})
    assert "x" in memory and [f.name for f in tmp_path.iterdir()] == ["reads.jsonl"]
