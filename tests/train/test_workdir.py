"""Files replaced whole (`vhjax.atomic_files`): a reader never sees half of one."""

import json
import threading

import pytest

from vhjax.atomic_files import write_text_atomically


def test_a_reader_never_sees_a_half_written_file(tmp_path):
    path = tmp_path / "members.json"
    texts = [json.dumps([{"member": i, "pad": "x" * 400_000}]) for i in range(2)]
    write_text_atomically(path, texts[0])
    done = threading.Event()
    seen = []

    def read_until_done():
        while not done.is_set():
            seen.append(json.loads(path.read_text())[0]["member"])  # raises on a partial file

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for round_ in range(60):
            write_text_atomically(path, texts[round_ % 2])
    finally:
        done.set()
        reader.join()
    assert seen and set(seen) <= {0, 1}
    assert [p.name for p in tmp_path.iterdir()] == ["members.json"]  # no temporary left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "config.json"
    write_text_atomically(path, '{"steps": 10}')
    with pytest.raises(TypeError):
        write_text_atomically(path, b"not text")  # type: ignore[arg-type]
    assert json.loads(path.read_text()) == {"steps": 10}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
