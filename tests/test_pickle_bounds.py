"""otcore.pickle_bounds and the safetensors header scan: what is refused, what honest files keep, and messages
that stay one short line whatever a file holds."""
from __future__ import annotations

import json
import pickle
import random
import struct

import numpy as np
import pytest

from otcore.checkpoint_scan import _json_depth
from otcore.checkpoints import CheckpointError, load_checkpoint
from otcore.cifar_pickle import read_batch
from otcore.datafiles import DataError
from otcore.pickle_bounds import brief, brief_text
from tests.faults.hostile_pickles import _dict_with, _get, _put, _text, as_torch_zip

P = pickle


@pytest.mark.parametrize("value, message", [
    (P.EMPTY_LIST + _put(0) + _get(0) + P.APPEND, "after placing it inside another (or inside itself)"),
    (P.EMPTY_SET + P.MARK + P.EMPTY_TUPLE + P.ADDITEMS, "uses a tuple as a dict key or set item"),
    (P.EMPTY_DICT + P.EMPTY_LIST + P.NONE + P.SETITEM, "uses a list as a dict key"),
    (P.EMPTY_DICT + P.MARK + P.LONG1 + bytes([9]) + (2**64).to_bytes(9, "little") + P.NONE + P.SETITEMS,
     "integer beyond 2^61"),
    (P.GLOBAL + b"builtins\nset\n" + P.EMPTY_LIST + P.MARK + P.EMPTY_TUPLE + P.APPENDS + P.TUPLE1 + P.REDUCE,
     "tuple as a dict key"),
    (P.GLOBAL + b"collections\nOrderedDict\n" + P.EMPTY_LIST + P.MARK + P.EMPTY_TUPLE + P.NONE + P.TUPLE2 + P.APPENDS
     + P.TUPLE1 + P.REDUCE, "tuple as a dict key"),
], ids=["a list inside itself", "a tuple in a set", "a list key", "a colliding int key", "set(tuples)",
        "OrderedDict(tuple keys)"])
def test_what_would_hash_or_grow_unseen_is_refused(value, message):
    with pytest.raises(CheckpointError, match="was refused: its pickle") as caught:
        load_checkpoint(as_torch_zip(_dict_with(_text("w"), value)))
    assert message in str(caught.value)


def test_build_never_writes_an_objects_attributes():
    """BUILD on an object without __setstate__ would update its __dict__ from the file (a placeholder's size)."""
    with pytest.raises(CheckpointError, match="sets attributes on a NoneType"):
        load_checkpoint(as_torch_zip(_dict_with(_text("w"), P.NONE + P.EMPTY_DICT + P.BUILD)))


def test_a_shape_just_inside_the_bounds_is_kept():
    """64 levels of nesting (the file's dict is one), and a DAG of 2^21 items, are within the bounds."""
    deep = _dict_with(_text("w"), P.EMPTY_TUPLE + P.TUPLE1 * 62)
    dag = _dict_with(_text("w"), P.EMPTY_TUPLE + _put(0) + b"".join(_get(i) + P.TUPLE2 + _put(i + 1) for i in range(20)))
    for pickled in (deep, dag):
        with pytest.raises(CheckpointError, match="holds no tensors"):
            load_checkpoint(as_torch_zip(pickled))


def test_a_cifar_batch_key_that_is_a_tuple_is_refused_before_it_is_hashed():
    raw = pickle.dumps({(1, 2): 0, "data": np.zeros((1, 3072), np.uint8), "labels": [0]}, protocol=2)
    with pytest.raises(DataError, match="uses a tuple as a dict key"):
        read_batch(raw, "labels", 10)


def test_brief_is_one_short_line_at_bounded_cost():
    assert brief(2**10_000) == "<an integer of 10,001 bits>"
    assert brief(tuple(range(10**6))) == "<1,000,000 items>"
    assert brief("a\nb" * 10**6, 20).count("\n") == 0 and len(brief("x" * 10**6)) <= 63
    assert brief_text("name\nwith\rcontrol" + "x" * 10**6) == "name?with?control" + "x" * 63 + "..."


def test_the_json_depth_scan_agrees_with_the_parser_on_strings_full_of_brackets_and_escapes():
    rng = random.Random(0)
    atoms = ["a\\", '"[', '\\"', '\\\\"]', "{", "]]", "x"]

    def document(level: int):
        if level == 0 or rng.random() < 0.3:
            return rng.choice(atoms)
        items = [document(level - 1) for _ in range(rng.randint(0, 3))]
        return items if rng.random() < 0.5 else {f"k{i}{rng.choice(atoms)}": v for i, v in enumerate(items)}

    def depth(value) -> int:
        if isinstance(value, (list, dict)):
            children = value.values() if isinstance(value, dict) else value
            return 1 + max((depth(v) for v in children), default=0)
        return 0

    for _ in range(500):
        value = document(6)
        assert _json_depth(json.dumps(value).encode()) == depth(value)


def _safetensors(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + body


def test_a_header_of_a_million_escaped_quotes_is_read_in_linear_time():
    """An unterminated string of escaped quotes: the old string-skipping regex failed at each one (minutes)."""
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(_safetensors(b'{"a' + b'\\"' * 1_000_000))


@pytest.mark.parametrize("entry, message", [
    ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, "has dtype <1 items>"),
    ({"dtype": "F32", "shape": list(range(10**5)), "data_offsets": [0, 4]}, "impossible shape or byte range (<100,000"),
])
def test_a_header_entry_of_the_wrong_type_is_one_short_line(entry, message):
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(_safetensors(json.dumps({"w\n" + "x" * 10**5: entry}).encode(), bytes(4)))
    text = str(caught.value)
    assert message in text and "\n" not in text and len(text) < 300


def test_json_metadata_nested_a_few_levels_is_kept_and_deeper_is_refused():
    import torch
    from otcore.checkpoints import checkpoint_bytes

    honest = checkpoint_bytes({"w": torch.ones(2)}, "safetensors", {"config": [[[1]]]})
    assert load_checkpoint(honest).meta == {"config": [[[1]]]}
    header = json.dumps({"__metadata__": {"config": "[" * 33 + "]" * 33},
                         "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    with pytest.raises(CheckpointError, match="'config' nests 33 levels deep, over the limit of 32"):
        load_checkpoint(_safetensors(header, bytes(4)))
