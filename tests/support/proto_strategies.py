"""Hypothesis strategies for arbitrary protobuf messages, built from their descriptors:
ordinary and boundary values for every field (empty, huge, negative, out-of-range enums,
control characters, oversized maps, long repeated fields and one value repeated many times),
nested messages to a small depth; and arbitrary bytes sent as a message of a type, most of
which do not parse."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

INT32 = (0, 1, -1, 2, 10, 11, 2**31 - 1, -(2**31))
INT64 = (0, 1, -1, 2**31, 2**53, 2**62, 2**63 - 1, -(2**63), 1_800_000_000_000_000_000)

_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "a" * 129, "a" * 5000, "\x00", "x\ny", "../../etc", "é" * 300]),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
)
_bytes = st.one_of(st.binary(max_size=64), st.just(b"\x00" * 70_000))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return _text
    if t == FieldDescriptor.TYPE_BYTES:
        return _bytes
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from(INT32))
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from(INT64))
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if t == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 100))
    raise NotImplementedError(f"field type {t}")


def _repeated(field: FieldDescriptor) -> st.SearchStrategy[list[Any]]:
    # Beyond a few values: more than a store's IN filter takes (Firestore: 30), and one valid
    # value repeated, which a service must accept as well as the value once.
    return st.one_of(
        st.lists(_scalar(field), max_size=5),
        st.lists(_scalar(field), min_size=31, max_size=60),
        st.builds(lambda value, times: [value] * times, _scalar(field), st.integers(31, 60)),
    )


def messages(descriptor: Descriptor, depth: int = 2) -> st.SearchStrategy[Message]:
    """Arbitrary instances of the message type `descriptor` describes."""
    cls = GetMessageClass(descriptor)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in descriptor.fields:
            if not draw(st.booleans()):
                continue  # leave it unset
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_field = field.message_type.fields_by_name["key"]
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    continue
                size = draw(st.one_of(st.integers(0, 4), st.just(150)))
                entries = draw(
                    st.dictionaries(
                        _scalar(key_field), _scalar(value_field), min_size=0, max_size=size
                    )
                )
                getattr(message, field.name).update(entries)
            elif field.message_type is not None:
                if depth <= 0 or field.message_type.full_name.startswith("google.protobuf"):
                    continue
                value = draw(messages(field.message_type, depth - 1))
                if field.is_repeated:
                    getattr(message, field.name).append(value)
                else:
                    getattr(message, field.name).CopyFrom(value)
            elif field.is_repeated:
                getattr(message, field.name).extend(draw(_repeated(field)))
            else:
                setattr(message, field.name, draw(_scalar(field)))
        return message

    return build()


def wire_bytes(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Bytes sent as a message of the type `descriptor` describes: arbitrary bytes, and valid
    encodings truncated, with one byte changed or with bytes appended. Most do not parse as
    that type; some do (empty bytes, unknown fields), and must then be served as usual."""
    encoded = messages(descriptor).map(lambda message: message.SerializeToString())

    @st.composite
    def damaged(draw: st.DrawFn) -> bytes:
        data = draw(encoded)
        how = draw(st.sampled_from(["truncate", "change", "append"]))
        if how == "truncate" and data:
            return data[: draw(st.integers(0, len(data) - 1))]
        if how == "change" and data:
            at = draw(st.integers(0, len(data) - 1))
            return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
        return data + draw(st.binary(min_size=1, max_size=16))

    return st.one_of(st.binary(max_size=256), damaged())
