"""Hostile pickle shapes at any size, written opcode by opcode (Python's pickler cannot even write most of them),
and the three files that carry a pickle: a torch zip checkpoint, a legacy torch checkpoint, a CIFAR batch.

Every generator returns the bytes of one pickle whose top object is a dict, as a checkpoint's or a batch's is:
- `deep_tuple_key(n)`: a key nested n deep (hashing it recursed n deep in C: SIGSEGV at 300,000);
- `deep_list_value(n)`: a value nested n deep, built bottom-up with APPEND (printing or comparing it recursed);
- `shared_key(levels)` / `shared_value(levels)` / `shared_lists(levels)`: each level holds the level below twice
  through memo gets, 2^levels items once expanded in a few hundred bytes (hashing or printing never ends);
- `grown_after_sharing(levels)`: a list shared by a 2^levels DAG, then appended to (the DAG grows unseen);
- `memo_index(i)`: one memo put at index i (a 9-byte file made the C unpickler allocate 4.6 GB);
- `colliding_int_keys(n)`: integer keys that differ by multiples of 2^61 - 1, all with one hash (hash flooding).
"""
from __future__ import annotations

import io
import pickle
import pickletools
import struct

from tests.faults.hostile_files import Entry, zip_archive

PIXELS = 3072
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_CIFAR_OPS_PER_IMAGE = 16  # otcore.cifar_pickle's budget: 4,096 operations + 16 per 3,072 bytes of file


def _put(index: int) -> bytes:
    return pickle.BINPUT + bytes([index]) if index < 256 else pickle.LONG_BINPUT + struct.pack("<I", index)


def _get(index: int) -> bytes:
    return pickle.BINGET + bytes([index]) if index < 256 else pickle.LONG_BINGET + struct.pack("<I", index)


def _text(value: str) -> bytes:
    raw = value.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def _dict_with(key: bytes, value: bytes) -> bytes:
    """A protocol-2 pickle of {key: value}, key and value given as the opcodes that push them."""
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + key + value + pickle.SETITEM + pickle.STOP


def deep_tuple_key(depth: int) -> bytes:
    """{((((),),),): 0}, the key nested `depth` deep."""
    return _dict_with(pickle.EMPTY_TUPLE + pickle.TUPLE1 * (depth - 1), pickle.BININT1 + b"\x00")


def deep_list_value(depth: int) -> bytes:
    """{'w': [[[...]]]}, nested `depth` deep: `depth` empty lists pushed, then each appended to the one below."""
    return _dict_with(_text("w"), pickle.EMPTY_LIST * depth + pickle.APPEND * (depth - 1))


def _shared_tuples(levels: int) -> bytes:
    """Level 0 is (); level i + 1 is (level i, level i), the second fetched from the memo: 2^levels items."""
    return pickle.EMPTY_TUPLE + _put(0) + b"".join(_get(i) + pickle.TUPLE2 + _put(i + 1) for i in range(levels))


def shared_key(levels: int) -> bytes:
    return _dict_with(_shared_tuples(levels), pickle.BININT1 + b"\x00")


def shared_value(levels: int) -> bytes:
    """{'test_accuracy': DAG}: a paper checkpoint's meta, printed where a number is expected."""
    return _dict_with(_text("test_accuracy"), _shared_tuples(levels))


def shared_lists(levels: int) -> bytes:
    """The same doubling with lists (unhashable, but printed and compared), built bottom-up as a pickler would:
    empty lists for the levels pushed first, then each level appended twice to the list of the level above."""
    empties = b"".join(pickle.EMPTY_LIST + _put(k) for k in range(levels, 0, -1))
    levels_up = b"".join(pickle.APPEND + _get(i) + pickle.APPEND for i in range(levels))
    return _dict_with(_text("w"), empties + pickle.EMPTY_LIST + _put(0) + levels_up)


def grown_after_sharing(count: int) -> bytes:
    """{'w': [L] * count}, then `count` items appended to L: small while it is built, count^2 items after."""
    shared = pickle.EMPTY_LIST + pickle.MARK + pickle.EMPTY_LIST + _put(0) + _get(0) * (count - 1) + pickle.APPENDS
    grow = _get(0) + pickle.MARK + pickle.NONE * count + pickle.APPENDS  # refused here; the dict is never returned
    return _dict_with(_text("w"), shared)[:-1] + grow + pickle.STOP


def memo_index(index: int = 250_000_000) -> bytes:
    """None put at memo index `index`: 9 bytes."""
    return pickle.PROTO + b"\x02" + pickle.NONE + pickle.LONG_BINPUT + struct.pack("<I", index) + pickle.STOP


def colliding_int_keys(count: int) -> bytes:
    """{2^61 + k (2^61 - 1): 0 for k < count}: every key hashes alike, so each insertion compares with all before."""
    out = [pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK]
    for k in range(count):
        out.append(pickle.LONG1 + bytes([16]) + (2**61 + k * (2**61 - 1)).to_bytes(16, "little") + pickle.BININT1 + b"\0")
    return b"".join(out) + pickle.SETITEMS + pickle.STOP


# ---------------------------------------------------------------------------- the files that carry a pickle
def as_torch_zip(pickled: bytes) -> bytes:
    """A torch zip checkpoint whose data.pkl is `pickled` (no storages)."""
    return zip_archive([Entry("archive/data.pkl", pickled), Entry("archive/byteorder", b"little"),
                        Entry("archive/version", b"3\n")])


def as_legacy(pickled: bytes) -> bytes:
    """torch's pre-zip format: magic, protocol and sys_info pickles, then `pickled`, then an empty key list."""
    buffer = io.BytesIO()
    for head in (_LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(head, buffer, protocol=2)
    buffer.write(pickled)
    pickle.dump([], buffer, protocol=2)
    return buffer.getvalue()


def as_cifar_batch(pickled: bytes) -> bytes:
    """`pickled` followed by padding after STOP, so that the reader's budget admits every operation it holds:
    the shape, not the operation count, is what must refuse it."""
    operations = sum(1 for _ in pickletools.genops(pickled))
    return pickled + bytes(max(0, (operations - 4096) // _CIFAR_OPS_PER_IMAGE + 1) * PIXELS)


CARRIERS = {"torch zip": as_torch_zip, "legacy torch": as_legacy, "CIFAR batch": as_cifar_batch}
# name -> (generator, sizes to try (growing), fragments of which the one-line refusal names one). Below the
# bounds a structure is harmless and may be refused for another reason (a tuple key; not a dict of tensors).
SHAPES = {
    "deep tuple key": (deep_tuple_key, [1_000, 10_000, 100_000, 300_000], ["levels deep"]),
    "deep list value": (deep_list_value, [1_000, 30_000, 300_000], ["levels deep"]),
    "shared key": (shared_key, [20, 30, 40, 60], ["shared references", "as a dict key"]),
    "shared value": (shared_value, [20, 40, 60], ["shared references", "holds no tensors"]),
    "shared lists": (shared_lists, [20, 40, 60], ["shared references", "holds no tensors"]),
    "grown after sharing": (grown_after_sharing, [1_000, 100_000], ["after placing it inside another"]),
    "memo index": (memo_index, [2**16, 250_000_000, 2**32 - 1], ["not a dict of tensors", "not a CIFAR batch"]),
    "colliding int keys": (colliding_int_keys, [1_000, 50_000], ["as a dict key"]),
}
