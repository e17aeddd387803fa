"""Untrusted pickles bounded by the shape of what they build: depth, expanded size, hashable keys.

Counting opcodes does not bound what CPython later does to the objects: it hashes, compares, prints
and walks containers by recursing in C. A tuple nested 300,000 deep used as a dict key overflows the
C stack (SIGSEGV); a tuple whose every level holds the level below twice (memo gets, 60 levels in
672 bytes) has 2^60 elements once expanded, so hashing or printing it never ends. `BoundedUnpickler`
is the pure-Python unpickler with the container opcodes re-written to record, for every container as
it is built, its depth and its expanded size (shared references counted as often as they are reached),
and to refuse the pickle the moment either passes its bound, before any dict insertion hashes a key.
Dict keys and set items must be atoms whose hash is cheap and cannot be made to collide at will; a
container changed after it was placed inside another (which would grow its ancestors behind the
bookkeeping) is refused; the memo is a dict, so a memo index of 250,000,000 costs one entry.
"""
from __future__ import annotations

import pickle
import pickletools
from typing import Any

# Honest files nest shallowly: a state_dict 5 levels (file dict > OrderedDict > tensor rebuild args >
# size tuple), a Lightning checkpoint under 15, a CIFAR batch 4. 64 leaves room for unusual but honest
# files while keeping every C recursion over the result (hash, ==, repr, deallocation) tiny.
MAX_DEPTH = 64
TEXT_UNIT = 64  # a string or byte string counts one item per 64 characters: what printing it costs
_HASH_MODULUS = 2**61 - 1  # CPython hashes ints modulo this prime: larger ones collide at will (hash flooding)
_MUTABLE = (list, dict, set)
_CONTAINERS = (tuple, list, dict, set, frozenset)


class PickleRefused(ValueError):
    """A pickle whose shape is refused; the message completes '<file> was refused: '."""


def brief_text(text: str, limit: int = 80) -> str:
    """A name from a file, cut to `limit` characters and kept on one line."""
    shown = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return shown + "..." if len(text) > limit else shown


def brief(value: Any, limit: int = 60) -> str:
    """A short text for an untrusted value, at bounded cost: containers by type and length, text cut."""
    if isinstance(value, (str, bytes, bytearray)):
        text = repr(value[:limit])
    elif type(value) is int:
        text = str(value) if value.bit_length() <= 128 else f"<an integer of {value.bit_length():,} bits>"
    elif isinstance(value, (float, bool)) or value is None:
        text = repr(value)
    elif isinstance(value, (tuple, list, dict, set, frozenset)):
        text = f"<{len(value):,} items>"
    else:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _key_problem(key: Any) -> str | None:
    """Why `key` may not be hashed into a dict or set (None: it may): only atoms with cheap, fair hashes."""
    if type(key) in (str, bytes, float, bool) or key is None:
        return None
    if type(key) is int:
        return None if -_HASH_MODULUS < key < _HASH_MODULUS else "an integer beyond 2^61 (whose hash collides at will)"
    for kind in (tuple, frozenset, list, dict, set):
        if isinstance(key, kind):
            return f"a {kind.__name__}"
    return None if type(key).__hash__ is object.__hash__ else f"a {type(key).__name__}"  # hashed by identity


def check_key(key: Any) -> None:
    """Refuse a dict key or set item that is not a string, a number, None or an identity-hashed placeholder."""
    problem = _key_problem(key)
    if problem is not None:
        raise PickleRefused(f"its pickle uses {problem} as a dict key or set item; keys are names and numbers")


class BoundedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]  # the pure-Python one: every opcode ours
    """pickle's pure-Python unpickler that bounds each container's depth and expanded size as it builds it.

    Subclasses set `opcodes` (the opcodes their files use) and may override `count_op` (an operation budget)."""

    opcodes: frozenset[bytes] = frozenset()
    dispatch: dict[int, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.opcodes & _UNBOUNDED:
            raise TypeError(f"{cls.__name__} lists opcodes whose objects are not bounded: {sorted(cls.opcodes & _UNBOUNDED)}")
        table = {**pickle._Unpickler.dispatch, **_BOUNDED}  # type: ignore[attr-defined]
        cls.dispatch = _Dispatch({op[0]: _counted(table[op[0]]) for op in cls.opcodes})

    def __init__(self, file: Any, max_size: int, encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self.max_size, self.ops, self.work = max_size, 0, 0
        # id -> [the container (kept alive so that its id stays its own), depth, expanded size, sealed]
        self._shapes: dict[int, list[Any]] = {}

    def count_op(self) -> None:
        """Called before every opcode; raise to refuse a pickle that runs too many."""
        self.ops += 1

    # ---------------------------------------------------------------- bookkeeping
    def _shape(self, obj: Any) -> tuple[int, int]:
        entry = self._shapes.get(id(obj))
        if entry is not None:
            return entry[1], entry[2]
        if isinstance(obj, (str, bytes, bytearray)):
            return 0, 1 + len(obj) // TEXT_UNIT
        if isinstance(obj, _CONTAINERS):  # containers are recorded once they hold something or are placed
            if len(obj):
                raise pickle.UnpicklingError("the pickle holds a container built outside its opcodes")
            return 1, 1
        return 0, 1

    def _entry(self, obj: Any) -> list[Any]:
        """The record of a container, made on first use (an empty one costs nothing until then)."""
        entry = self._shapes.get(id(obj))
        if entry is None:
            depth, size = self._shape(obj)
            entry = self._shapes[id(obj)] = [obj, depth, size, False]
        return entry

    def _children(self, items: Any, copied: int | None = None) -> tuple[int, int]:
        """(depth, size) of a new container holding `items`; seals the mutable ones, refuses past the bounds.

        `copied`: the items this step allocates (default: len(items))."""
        depth, size, shapes = 0, 1, self._shapes
        for item in items:
            entry = shapes.get(id(item))
            if entry is None:
                kind = type(item)
                if kind is str or kind is bytes or kind is bytearray:
                    size += 1 + len(item) // TEXT_UNIT
                    continue
                if not isinstance(item, _MUTABLE):
                    item_depth, item_size = self._shape(item)
                    depth, size = max(depth, item_depth), size + item_size
                    continue
                entry = self._entry(item)
            if entry[3] is False and isinstance(item, _MUTABLE):
                entry[3] = True  # placed inside another: changing it now would grow this one unseen
            if entry[1] > depth:
                depth = entry[1]
            size += entry[2]
        return self._bounded(depth + 1, size, len(items) if copied is None else copied)

    def _bounded(self, depth: int, size: int, copied: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            raise PickleRefused(f"its pickle nests containers over {MAX_DEPTH} levels deep; honest files nest "
                                "a few levels")
        if size > self.max_size:
            raise PickleRefused(f"its pickle builds a structure of over {self.max_size:,} items once shared "
                                "references are counted as often as they are reached")
        self.work += copied
        if self.work > 4 * self.max_size:  # copies (tuple(list), set(list)) repeated: memory without depth
            raise PickleRefused(f"its pickle builds containers of over {4 * self.max_size:,} items in all")
        return depth, size

    def _new(self, obj: Any, shape: tuple[int, int]) -> Any:
        if id(obj) not in self._shapes:  # a callee may return one of its arguments, unchanged
            self._shapes[id(obj)] = [obj, shape[0], shape[1], False]
        return obj

    def _grow(self, target: Any, items: Any, kind: type) -> None:
        """Account for `items` added to the container `target`, before they are added."""
        if not isinstance(target, kind):
            raise pickle.UnpicklingError(f"the pickle adds items to a {type(target).__name__}")
        depth, size = self._children(items)
        entry = self._entry(target)
        if entry[3]:
            raise PickleRefused("its pickle changes a container after placing it inside another (or inside "
                                "itself), which no honest file does")
        entry[1], entry[2] = self._bounded(max(entry[1], depth), entry[2] + size - 1, 0)

    def _keys(self, keys: Any) -> None:
        for key in keys:
            check_key(key)


class _Dispatch(dict):
    """Opcode -> loader; an opcode the files never use gets a loader that names it and stops."""

    def __missing__(self, code: int) -> Any:
        name = _OPCODE_NAMES.get(code, f"0x{code:02x}")

        def refuse(self: BoundedUnpickler) -> None:
            raise pickle.UnpicklingError(f"pickle opcode {name} is not one these files use")
        return refuse


_OPCODE_NAMES = {ord(op.code.encode("latin1")): op.name for op in pickletools.opcodes}


def _counted(op: Any) -> Any:
    def run(self: BoundedUnpickler) -> None:
        self.count_op()
        op(self)
    return run


# ---------------------------------------------------------------- the opcodes that build or change containers
def _empty(factory: type) -> Any:
    def load(self: BoundedUnpickler) -> None:
        self.append(factory())
    return load


def _tuple_of(count: int) -> Any:
    def load(self: BoundedUnpickler) -> None:
        items = self.stack[-count:]
        if len(items) < count:
            raise pickle.UnpicklingError("the pickle's stack is too short")
        shape = self._children(items)
        self.stack[-count:] = [self._new(tuple(items), shape)]
    return load


def _load_tuple(self: BoundedUnpickler) -> None:
    items = self.pop_mark()
    self.append(self._new(tuple(items), self._children(items)))


def _load_list(self: BoundedUnpickler) -> None:
    items = self.pop_mark()
    self.append(self._new(items, self._children(items)))


def _pairs(items: list[Any]) -> list[Any]:
    if len(items) % 2:
        raise pickle.UnpicklingError("the pickle's dict items are not key-value pairs")
    return items


def _load_dict(self: BoundedUnpickler) -> None:
    items = _pairs(self.pop_mark())
    shape = self._children(items)
    self._keys(items[0::2])
    self.append(self._new(dict(zip(items[0::2], items[1::2])), shape))


def _load_frozenset(self: BoundedUnpickler) -> None:
    items = self.pop_mark()
    shape = self._children(items)
    self._keys(items)
    self.append(self._new(frozenset(items), shape))


def _load_append(self: BoundedUnpickler) -> None:
    value = self.stack.pop()
    self._grow(self.stack[-1], [value], list)
    self.stack[-1].append(value)


def _load_appends(self: BoundedUnpickler) -> None:
    items = self.pop_mark()
    self._grow(self.stack[-1], items, list)
    self.stack[-1].extend(items)


def _load_setitem(self: BoundedUnpickler) -> None:
    value = self.stack.pop()
    key = self.stack.pop()
    self._grow(self.stack[-1], [key, value], dict)
    check_key(key)
    self.stack[-1][key] = value


def _load_setitems(self: BoundedUnpickler) -> None:
    items = _pairs(self.pop_mark())
    self._grow(self.stack[-1], items, dict)
    self._keys(items[0::2])
    target = self.stack[-1]
    for i in range(0, len(items), 2):
        target[items[i]] = items[i + 1]


def _load_additems(self: BoundedUnpickler) -> None:
    items = self.pop_mark()
    self._grow(self.stack[-1], items, set)
    self._keys(items)
    self.stack[-1].update(items)


def _load_reduce(self: BoundedUnpickler) -> None:
    args = self.stack.pop()
    if type(args) is not tuple:
        raise pickle.UnpicklingError("REDUCE arguments are not a tuple")
    shape = self._children([args], self._shape(args)[1])  # the callee builds at most what its arguments hold
    self.stack[-1] = self._new(self.stack[-1](*args), shape)


def _load_newobj(self: BoundedUnpickler) -> None:
    args = self.stack.pop()
    cls = self.stack.pop()
    if type(args) is not tuple or not isinstance(cls, type):
        raise pickle.UnpicklingError("NEWOBJ of something other than a class")
    shape = self._children([args], self._shape(args)[1])
    self.append(self._new(cls.__new__(cls, *args), shape))


def _load_build(self: BoundedUnpickler) -> None:
    state = self.stack.pop()
    setstate = getattr(self.stack[-1], "__setstate__", None)
    if setstate is None:  # pickle would write the state into the object's __dict__: no file of ours needs that
        raise PickleRefused(f"its pickle sets attributes on a {type(self.stack[-1]).__name__}")
    self._children([state])  # bounds what the object may keep of its state
    setstate(state)


_BOUNDED = {
    pickle.EMPTY_TUPLE[0]: _empty(tuple), pickle.EMPTY_LIST[0]: _empty(list), pickle.EMPTY_DICT[0]: _empty(dict),
    pickle.EMPTY_SET[0]: _empty(set), pickle.TUPLE1[0]: _tuple_of(1), pickle.TUPLE2[0]: _tuple_of(2),
    pickle.TUPLE3[0]: _tuple_of(3), pickle.TUPLE[0]: _load_tuple, pickle.LIST[0]: _load_list,
    pickle.DICT[0]: _load_dict, pickle.FROZENSET[0]: _load_frozenset, pickle.APPEND[0]: _load_append,
    pickle.APPENDS[0]: _load_appends, pickle.SETITEM[0]: _load_setitem, pickle.SETITEMS[0]: _load_setitems,
    pickle.ADDITEMS[0]: _load_additems, pickle.REDUCE[0]: _load_reduce, pickle.NEWOBJ[0]: _load_newobj,
    pickle.BUILD[0]: _load_build,
}
# Opcodes that build objects in ways the bookkeeping above does not follow (INST/OBJ call classes with any
# arguments, NEWOBJ_EX with keyword arguments, EXT* fetch registry entries); no file of ours needs them.
_UNBOUNDED = frozenset((pickle.INST, pickle.OBJ, pickle.NEWOBJ_EX, pickle.EXT1, pickle.EXT2, pickle.EXT4))
