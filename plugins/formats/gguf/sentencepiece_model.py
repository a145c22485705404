"""A SentencePiece ``tokenizer.model`` (a ``ModelProto``) written without sentencepiece's protobuf classes.

Only what a runtime reads is written (field numbers from sentencepiece_model.proto):

* ``pieces`` (1), each a ``SentencePiece``: ``piece`` (1), ``score`` (2, float32), ``type`` (3);
* ``trainer_spec`` (2): ``model_type`` (3; UNIGRAM 1, BPE 2), ``vocab_size`` (4), ``byte_fallback``
  (35), ``unk_id`` … ``pad_id`` (40-43, -1 for none) and ``unk_piece`` … ``pad_piece`` (45-48);
* ``normalizer_spec`` (3): ``name`` (1), ``precompiled_charsmap`` (2), ``add_dummy_prefix`` (3),
  ``remove_extra_whitespaces`` (4), ``escape_whitespaces`` (5).

Every field is written explicitly (proto2 defaults such as ``remove_extra_whitespaces = true`` and
``bos_id = 1`` would otherwise apply), in field-number order, as protobuf's own serialiser does:
the same pieces and settings always give the same bytes, and parsing them with sentencepiece's
``ModelProto`` and serialising again gives those bytes back.

:func:`problem` says why a vocabulary cannot be a model sentencepiece loads (it refuses a model
without exactly one UNKNOWN piece, with an empty or repeated piece, with a BYTE piece that is not
``<0xXX>`` or without byte fallback, and byte fallback without all 256 byte pieces).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence

__all__ = ["BPE", "UNIGRAM", "model_proto", "problem"]

UNIGRAM, BPE = 1, 2  # TrainerSpec.ModelType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # SentencePiece.Type
_TYPES = (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")  # what sentencepiece's PieceToByte accepts
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5  # wire types
_F32 = struct.Struct("<f")
_SMALL = [bytes((n,)) for n in range(0x80)]


# ----------------------------------------------------------------------- wire format
def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    if n < 0:
        n += 1 << 64  # int32/int64 fields: two's complement in ten bytes
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, value: int) -> bytes:
    return _tag(field, _VARINT) + _varint(int(value))


def _bool(field: int, value: bool) -> bytes:
    return _tag(field, _VARINT) + (b"\x01" if value else b"\x00")


def _bytes(field: int, data: bytes) -> bytes:
    return _tag(field, _LEN) + _varint(len(data)) + data


def _str(field: int, text: str) -> bytes:
    return _bytes(field, text.encode("utf-8"))


def _float(field: int, value: float) -> bytes:
    try:
        packed = _F32.pack(value)
    except OverflowError:  # a finite double beyond float32's range: what a float32 cast gives
        packed = _F32.pack(math.copysign(math.inf, value))
    return _tag(field, _I32) + packed


# ----------------------------------------------------------------------- ModelProto
def problem(pieces: Sequence[tuple[str, float, int]], *, byte_fallback: bool) -> str | None:
    """Why sentencepiece would refuse a model of these ``(piece, score, type)``, or None."""
    seen: set[str] = set()
    unknown = 0
    byte_pieces = 0
    for piece, _, typ in pieces:
        if not piece:
            return "an empty piece"
        if piece in seen:
            return f"piece {piece!r} appears twice"
        seen.add(piece)
        if typ not in _TYPES:
            return f"piece {piece!r} has type {typ}"
        if typ == UNKNOWN:
            unknown += 1
        elif typ == BYTE:
            if not byte_fallback or not _BYTE_PIECE.fullmatch(piece):
                return f"byte piece {piece!r} is not <0xXX> with byte fallback"
            byte_pieces += 1
    if unknown != 1:
        return f"{unknown} UNKNOWN pieces (sentencepiece needs exactly one)"
    if byte_fallback and byte_pieces != 256:
        return f"{byte_pieces} byte pieces (byte fallback needs all 256)"
    return None


def model_proto(pieces: Sequence[tuple[str, float, int]], *, model_type: int, byte_fallback: bool,
                unk_id: int, bos_id: int = -1, eos_id: int = -1, pad_id: int = -1,
                add_dummy_prefix: bool, remove_extra_whitespaces: bool, precompiled_charsmap: bytes = b"",
                normalizer_name: str | None = None) -> bytes:
    """The serialised ``ModelProto`` of ``pieces`` (``(piece, score, type)`` in id order).

    Special ids are -1 when the vocabulary has none; a special's piece is written for ids in range.
    ``normalizer_name`` defaults to ``"identity"`` without a charsmap and ``"user_defined"`` with one
    (the name is informational: sentencepiece normalises by the charsmap alone).
    """
    out: list[bytes] = []
    tag_piece, tag_type = _tag(1, _LEN), _tag(3, _VARINT)
    for piece, score, typ in pieces:  # _bytes(1, _str(1, piece) + _float(2, score) + _int(3, typ)), inlined
        text = piece.encode("utf-8")
        body = b"".join((tag_piece, _varint(len(text)), text, _float(2, score), tag_type, _varint(typ)))
        out.append(b"".join((tag_piece, _varint(len(body)), body)))
    n = len(pieces)
    trainer = [_int(3, model_type), _int(4, n), _bool(35, byte_fallback)]
    trainer += [_int(field, idx if 0 <= idx < n else -1) for field, idx in ((40, unk_id), (41, bos_id),
                                                                           (42, eos_id), (43, pad_id))]
    trainer += [_str(field, pieces[idx][0]) for field, idx in ((45, unk_id), (46, bos_id), (47, eos_id), (48, pad_id))
                if 0 <= idx < n]
    out.append(_bytes(2, b"".join(trainer)))
    if normalizer_name is None:
        normalizer_name = "user_defined" if precompiled_charsmap else "identity"
    normalizer = [_str(1, normalizer_name)]
    if precompiled_charsmap:
        normalizer.append(_bytes(2, bytes(precompiled_charsmap)))
    normalizer += [_bool(3, add_dummy_prefix), _bool(4, remove_extra_whitespaces), _bool(5, True)]
    out.append(_bytes(3, b"".join(normalizer)))
    return b"".join(out)
