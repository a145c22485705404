"""GGUF in and out, on top of gguf-py's reader and writer.

Writing: the architecture plugin renames and re-lays-out tensors, :mod:`.types`
picks a type per tensor, and tensors are computed (cast or quantised) on worker
threads and streamed into gguf-py's writer one at a time. Reading: gguf-py's
memory-mapped reader gives descriptors; the architecture plugin maps names and
layouts back to Hugging Face's, and quantised tensors stay quantised until a
writer that cannot hold blocks asks for floats.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGUFValueType as T
from gguf.gguf_writer import WriterState

from lmconv import dtypes as dt
from lmconv.adapters import is_adapter
from lmconv.errors import InputError, UsageError
from lmconv.formats import Format, Plan, PlannedTensor, ReadOptions, WriteOptions, record_for_verify
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor, Tokenizer
from lmconv.memmap import drop_pages
from lmconv.options import GENERIC, Option
from lmconv.registry import get_registry
from lmconv.runtimes import Runtime
from lmconv.streaming import iter_pieces, write_array
from lmconv.bridges import TokenizerBridge
from lmconv.units import parse_size

from . import adapter as lora
from . import types as gtypes
from .checks import check_architecture, check_tokenizer, int_of, type_name
from .ggml_types import declare_block_types, dtype_of, ggml_type
from .reader import GGUFFile, UnknownTensorType
from .runtime import llamacpp_logits
from .tokenizer_bridge import gguf_to_hf, hf_to_gguf
from .tokenizer_keys import from_gguf_keys, to_gguf_keys

GGUF_MAGIC = b"GGUF"
HF_CONFIG_KEY = "lmconv.hf_config"
ALIASES_KEY = "lmconv.aliases"  # the source config.json, so GGUF → HF gives it back exactly
SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")
# general.* keys that describe the model rather than this file: carried from a GGUF source.
CARRIED_GENERAL = ("general.name", "general.author", "general.version", "general.organization", "general.basename",
                   "general.finetune", "general.description", "general.license", "general.license.name",
                   "general.license.link", "general.url", "general.repo_url", "general.size_label", "general.tags",
                   "general.languages")


# ----------------------------------------------------------------------------------- writing
def _kv_type(key: str, value: Any) -> tuple[Any, Any]:
    """The GGUF value type (and array element type) gguf-py and llama.cpp expect for a Python value."""
    if isinstance(value, bool):
        return T.BOOL, None
    if isinstance(value, (int, np.integer)):
        return (T.UINT32, None) if 0 <= value < 2**32 else (T.INT64, None) if value < 0 else (T.UINT64, None)
    if isinstance(value, (float, np.floating)):
        return T.FLOAT32, None
    if isinstance(value, str):
        return T.STRING, None
    if isinstance(value, (bytes, bytearray)):  # e.g. tokenizer.ggml.precompiled_charsmap
        return T.ARRAY, T.UINT8
    if isinstance(value, (list, tuple)):
        if key.endswith(".token_type"):
            return T.ARRAY, T.INT32
        if not value:
            return T.ARRAY, T.INT32
        first = value[0]
        if isinstance(first, str):
            return T.ARRAY, T.STRING
        if isinstance(first, bool):
            return T.ARRAY, T.BOOL
        if isinstance(first, (float, np.floating)):
            return T.ARRAY, T.FLOAT32
        if isinstance(first, (int, np.integer)):
            return T.ARRAY, T.INT32 if all(-(2**31) <= v < 2**31 for v in value) else T.INT64
    raise UsageError(f"metadata key {key!r} has a value lmconv cannot store in GGUF ({type(value).__name__})")


def _add_kv(writer: Any, key: str, value: Any, typed: dict[str, tuple[int, int | None]] | None = None) -> None:
    if isinstance(value, (list, tuple, bytes, bytearray)) and not value:
        return  # GGUF has no empty arrays; an absent key means the same to llama.cpp

    if typed and key in typed:
        vtype, sub = typed[key]
        vt = T(vtype)
        st = T(sub) if sub is not None else None
        if vt == T.ARRAY and st is None:
            vt, st = _kv_type(key, value)
    else:
        vt, st = _kv_type(key, value)
    if vt == T.ARRAY:
        value = list(value)  # bytes become a list of ints for a UINT8 array
    writer.add_key_value(key, value, vt, sub_type=st)


def _convert_fn(src: dt.DType, target: dt.DType, warn: Any, name: str) -> Any:
    """array of ``src`` → array of ``target`` (cast, dequantise, quantise), or None when equal."""
    if src == target:
        return None
    reg = get_registry()
    if src.is_quantized:
        warn(f"{name}: re-quantising {src.name} → {target.name} compounds quantisation error")
        to_f32 = reg.dequantizer(src.name).dequantize
    else:
        to_f32 = lambda a: a.astype(np.float32, copy=False)  # noqa: E731
    if target.is_quantized:
        q = reg.quantizer(target.name)
        quantize = q.quantize
        if quantize is None:
            raise UsageError(f"{name}: no installed quantiser produces {target.name} blocks")
        return lambda a: quantize(to_f32(a))
    if target.kind == "float":
        np_t = target.numpy

        def cast(a: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore"):  # a narrowing cast saturates to inf, as llama.cpp's does
                return to_f32(a).astype(np_t) if src.is_quantized else a.astype(np_t)

        return cast
    raise UsageError(f"{name}: cannot convert {src.name} to {target.name}")


def tokenizer_kv(model: Model, pre: str | None, warn: Any) -> dict[str, Any]:
    tok = model.tokenizer
    if tok.fields:
        fields = to_gguf_keys(tok.fields)
        if pre:
            fields["tokenizer.ggml.pre"] = pre
        return fields
    if tok.files:
        return hf_to_gguf(tok.files, model.config, pre_tokenizer=pre, path_for_errors=model.source)
    warn("the model has no tokenizer; llama.cpp needs one to run it (put tokenizer.json beside the weights)")
    return {}


@dataclass
class Planned:
    """What a GGUF of ``model`` will hold: the architecture's name, the tensors as written (names,
    layouts and types final; data still lazy), the architecture's keys, and ties kept as names."""

    arch_name: str
    tensors: list[Tensor]
    arch_kv: dict[str, Any]
    aliases: dict[str, str]
    types: dict[str, dt.DType]
    quant_kv: dict[str, Any] = dc_field(default_factory=dict)  # quantize.imatrix.* (llama-quantize's keys)
    weighted: dict[str, Any] = dc_field(default_factory=dict)  # name → importance weights, where no bound covers them


def plan_gguf(model: Model, options: WriteOptions) -> Planned:
    """Names, layouts (through the model's family) and a type per tensor (the quantisation policy)."""
    reg = get_registry()
    warn = options.warn
    arch = reg.architecture_for(model.config)
    layout = arch.layout("gguf") if arch is not None else None
    aliases: dict[str, str] = {}
    src_kv = model.metadata.get("gguf") or {}
    if arch is not None and layout is not None:
        tensors, arch_kv = arch.to_target(model, "gguf", warn)
        arch_name = layout.arch
    else:
        arch_name = src_kv.get("general.architecture") or model.config.get("model_type") or "unknown"
        warn(f"architecture {model.architecture or arch_name!r} is not known to lmconv: tensors keep their names "
             f"in a generic GGUF that llama.cpp will not run")
        tensors = [t.replace(aliases=()) for t in model]
        aliases = {a: t.name for t in model for a in t.aliases}
        arch_kv = {k: v for k, v in src_kv.items() if k.startswith(f"{arch_name}.")}

    quant = reg.quant_policy(options.quant) if options.quant else None
    cfg = model.config
    context = {
        "arch": arch_name,
        "n_layer": int(arch_kv.get(gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch_name)) or 0),
        "n_head": int(arch_kv.get(gguf.Keys.Attention.HEAD_COUNT.format(arch=arch_name)) or 0),
        "n_head_kv": int(arch_kv.get(gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch_name))
                         or arch_kv.get(gguf.Keys.Attention.HEAD_COUNT.format(arch=arch_name)) or 0),
        "n_expert": int(arch_kv.get(gguf.Keys.LLM.EXPERT_COUNT.format(arch=arch_name)) or 0),
        **{k: options.extra[k] for k in ("pure", "output_tensor_type", "token_embedding_type", "leave_output_tensor",
                                         "tensor_type_overrides", "imatrix") if options.extra.get(k) not in (None, False, [])},
    }
    imatrix = context.get("imatrix")  # --imatrix: the quantisers plugin's parsed importance matrix
    plan = gtypes.plan_types(tensors, quant=quant, cast=options.dtype, context=context, warn=warn,
                             for_runtime=layout is not None)
    out: list[Tensor] = []
    lacking: list[str] = []
    unbounded: dict[str, Any] = {}
    for t in tensors:
        target = plan.get(t.name, t.dtype)
        fn = _convert_fn(t.dtype, target, warn, t.name)
        if fn is not None:
            note = f"quant:{target.name}" if target.is_quantized else f"cast:{target.name}"
            weighted = gtypes.imatrix_fn(t, target, imatrix) if imatrix is not None else None
            if imatrix is not None and target.is_quantized and t.name not in imatrix:
                lacking.append(t.name)
            fn, rows = weighted if weighted is not None else (fn, True)
            t = t.map(fn, dtype=target, note=note, rows=rows)  # casts and quantisers work row by row
            step = gtypes.imatrix_step(target) if weighted is not None else None
            if step is not None:  # its weighted search has an allowance of its own (verification adds it)
                t = t.replace(history=t.history + (step,))
            elif weighted is not None:  # no bound holds: verification re-quantises the source instead
                unbounded[t.name] = imatrix.weights_for(t.name, t.shape)
        if ggml_type(t.dtype) is None:
            raise UsageError(f"tensor {t.name!r} is {t.dtype.name}, which GGUF cannot store")
        out.append(t)
    lacking = [n for n in lacking if n not in gtypes.NEVER_NEEDS_IMATRIX]  # llama-imatrix never sees those
    if lacking:
        warn(f"the importance matrix has no data for {len(lacking)} tensor(s) ({', '.join(lacking[:3])}"
             f"{' …' if len(lacking) > 3 else ''}): quantised without it, as llama-quantize does")
    quant_kv = imatrix.metadata() if imatrix is not None else {}
    return Planned(arch_name, out, arch_kv, aliases, plan, quant_kv, unbounded)


def write_gguf(model: Model, path: Path, options: WriteOptions) -> list[Path]:
    planned = plan_gguf(model, options)
    arch_name, out, arch_kv, aliases, plan = planned.arch_name, planned.tensors, planned.arch_kv, planned.aliases, planned.types
    warn = options.warn
    cfg = model.config
    src_kv = model.metadata.get("gguf") or {}
    split = options.extra.get("split_max_size") or 0
    split = parse_size(split, option="--split-max-size") if split else 0
    writer = gguf.GGUFWriter(path, arch_name, split_max_size=split)
    typed = model.metadata.get("gguf.types") or {}
    for t in out:  # how the importance matrix was applied, for --verify
        w = planned.weighted.get(t.name)
        record_for_verify(model, path, (t.name, *t.aliases), steps=[h for h in t.history if h.startswith("imatrix:")],
                          requantize=None if w is None else (t.dtype.name, w if w.shape[0] > 1 else w[0]))
    for t in out:  # first: the parameter count (for general.size_label) comes from the tensor list
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=ggml_type(t.dtype))
    if src_kv:  # a GGUF source: its description of the model carries over
        name = src_kv.get("general.name") or Path(model.source.rstrip("/")).name.split(".")[0]
        writer.add_name(str(name) or "model")
        for key in CARRIED_GENERAL[1:]:
            if key in src_kv:
                _add_kv(writer, key, src_kv[key], typed)
    else:
        describe_model(writer, model, options.extra.get("metadata"))
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_file_type(gtypes.file_type(plan, options.quant))
    if any(d.is_quantized for d in plan.values()):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in planned.quant_kv.items():
        _add_kv(writer, key, value)
    # A family's layout may set tokenizer keys too (a flag llama.cpp reads for that family): they win.
    family_tok = {k: v for k, v in arch_kv.items() if k.startswith("tokenizer.")}
    for key, value in arch_kv.items():
        if key not in family_tok:
            _add_kv(writer, key, value, typed)
    if cfg:
        writer.add_string(HF_CONFIG_KEY, json.dumps(cfg, sort_keys=True, ensure_ascii=False))
    if aliases:  # ties of a model llama.cpp does not know: keep them for the way back
        writer.add_string(ALIASES_KEY, json.dumps(aliases, sort_keys=True))
    tok_kv = tokenizer_kv(model, options.extra.get("pre_tokenizer"), warn)
    if tok_kv:
        tok_kv.update(family_tok)
    for key, value in tok_kv.items():
        _add_kv(writer, key, value, typed)
    if options.extra.get("metadata"):
        override_keys(writer, Path(options.extra["metadata"]))

    if split and len(writer.tensors) == 1:
        warn(f"the whole model fits in one {options.extra['split_max_size']} split; writing one file")
    produced = writer.format_shard_names(path)
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_tensor_data(writer, out, options)
    finally:
        writer.close()
    return produced


def describe_model(writer: Any, model: Model, override: Any) -> None:
    """``general.*`` as llama.cpp's converter writes them: name, size label, licence, base models, tags …
    from the config, generation config and model card (README.md front matter) beside the source, by
    gguf-py's own ``Metadata``; ``--metadata FILE`` (a JSON of ``general.*`` keys) overrides any."""
    src = Path(model.source.rstrip("/")) if model.source else None
    folder = src if src is not None and src.is_dir() else (src.parent if src is not None else None)
    total, shared, expert, count = writer.get_total_parameter_count()
    try:
        meta = gguf.Metadata.load(Path(override) if override else None, folder, None, total)
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # a broken card or override file
        raise InputError(f"cannot read the model card or --metadata: {' '.join(str(exc).split())[:160]}",
                         path=override or folder) from None
    if meta.name is None:
        meta.name = folder.name if folder is not None else "model"
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, count)
    meta.set_gguf_meta_model(writer)


def override_keys(writer: Any, path: Path) -> None:
    """``--metadata FILE``: every key of the JSON object replaces (or adds) that key, whatever it is;
    a replaced key keeps the GGUF type it had."""
    try:
        override = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"is not a readable JSON file ({' '.join(str(exc).split())[:120]})", path=path) from None
    if not isinstance(override, dict):
        raise InputError("must be a JSON object of GGUF keys", path=path)
    kv = writer.kv_data[0]
    for key, value in override.items():
        if key in ("general.base_models", "general.datasets"):
            continue  # gguf-py's Metadata turned these lists into general.base_model.N.* keys already
        known = kv.get(key)
        vtype, sub = (known.type, known.sub_type) if known is not None else _kv_type(key, value)
        if vtype == T.ARRAY and sub is None:
            vtype, sub = _kv_type(key, value)
        kv[key] = gguf.GGUFValue(value=list(value) if vtype == T.ARRAY else value, type=vtype, sub_type=sub)


def _write_tensor_data(writer: Any, tensors: list[Tensor], options: WriteOptions) -> None:
    """Tensor data after the header, streamed piece by piece (see ``lmconv.streaming.iter_pieces``).

    gguf-py's ``write_tensor_data`` wants each tensor as one array; this does what it does
    (the next file of a split that still expects tensors, alignment padding before and after)
    for a tensor that arrives in pieces, so no tensor-sized result is ever held.
    """
    fout = None
    done = 0
    for t, piece, last in iter_pieces(tensors):
        if fout is None:  # first piece of a tensor
            file_id = next(i for i, tis in enumerate(writer.tensors) if tis)
            fout = writer.fout[file_id]
            ti = writer.tensors[file_id].pop(next(iter(writer.tensors[file_id])))
            if ti.nbytes != t.nbytes:
                raise InputError(f"tensor {t.name!r}: {t.nbytes} bytes planned, {ti.nbytes} declared", path=t.origin or None)
            writer.write_padding(fout, fout.tell())
        n = write_array(fout, piece)
        del piece
        done += n
        options.progress(n)
        if last:
            if done != t.nbytes:
                raise InputError(f"tensor {t.name!r} produced {done} bytes, not the {t.nbytes} declared", path=t.origin or None)
            writer.write_padding(fout, done)
            writer.state = WriterState.WEIGHTS
            t.release()
            fout, done = None, 0


# ----------------------------------------------------------------------------------- reading
def _open_reader(path: Path) -> Any:
    """The parsed header (see :mod:`.reader`); whatever it refuses becomes one line naming the file."""
    try:
        return GGUFFile(path)
    except UnknownTensorType as exc:
        raise InputError(str(exc), path=path) from None
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", path=path) from None
    except ValueError as exc:  # the parser's own one-line account of what is wrong
        raise InputError(str(exc), path=path) from None
    except (IndexError, KeyError, TypeError, OverflowError, struct.error) as exc:  # a bound the parser missed
        if isinstance(exc, UnicodeDecodeError):
            raise InputError(f"metadata is not valid UTF-8 ({exc})", path=path) from None
        raise InputError(f"is not a valid GGUF file ({' '.join(str(exc).split())[:160]})", path=path) from None


def _field_values(reader: Any, path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, int | None]]]:
    return dict(reader.kv), dict(reader.types)


def _split_info(kv: dict[str, Any], types: dict[str, tuple[int, int | None]], path: Path) -> tuple[int, int, int | None]:
    count = int_of(kv, types, "split.count", path) or 1
    no = int_of(kv, types, "split.no", path) or 0
    n_tensors = int_of(kv, types, "split.tensors.count", path)
    return count, no, n_tensors


def _split_paths(path: Path, kv: dict[str, Any], types: dict[str, tuple[int, int | None]]) -> list[Path]:
    count, no, _ = _split_info(kv, types, path)
    if count <= 1:
        return [path]
    m = SPLIT_RE.match(path.name)
    if not m:
        raise InputError(f"is split {count} ways (split.count) but its name does not follow NAME-0000i-of-0000n.gguf",
                         path=path)
    if int(m["n"]) != count:
        raise InputError(f"split.count is {count} but the file name says {int(m['n'])} parts", path=path)
    if int(m["i"]) != no + 1:
        raise InputError(f"split.no is {no} but the file name says part {int(m['i'])}", path=path)
    if no != 0:
        first = f"{m['stem']}-00001-of-{count:05d}.gguf"
        raise InputError(f"is part {no + 1} of {count} of a split model; give the first part, {first}", path=path)
    paths = [path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    for p in paths:
        if not p.is_file():
            raise InputError(f"split part {p.name} is missing", path=path)
    return paths


def _check_parts(readers: list[Any], parts: list[Path]) -> None:
    """Every part of a split says it is that part of the same split, and the tensor counts add up."""
    count, _, total = _split_info(dict(readers[0].kv), dict(readers[0].types), parts[0])
    for i, (reader, p) in enumerate(zip(readers, parts)):
        c, no, n = _split_info(dict(reader.kv), dict(reader.types), p)
        if c != count:
            raise InputError(f"split.count is {c} but the first part says {count}", path=p)
        if no != i:
            raise InputError(f"split.no is {no} but the file name says part {i + 1}: not part of this split", path=p)
        if n != total:
            raise InputError(f"split.tensors.count is {n} but the first part says {total}: a part of another split",
                             path=p)
    held = sum(len(r.tensors) for r in readers)
    if total is not None and held != total:
        raise InputError(f"split.tensors.count is {total} but the {count} parts hold {held} tensors", path=parts[0])


def _tensor_of(rt: Any, path: Path, mm: Any) -> Tensor:
    try:
        d = dtype_of(int(rt.tensor_type))
    except (KeyError, ValueError):
        raise InputError(f"tensor {rt.name!r} has unknown GGML type {int(rt.tensor_type)}", path=path) from None
    shape = tuple(int(x) for x in reversed(list(rt.shape)))
    data = rt.data

    def load() -> np.ndarray:
        arr = data
        if d.numpy is not None and arr.dtype != d.numpy:
            arr = arr.view(d.numpy)
        return arr.reshape(d.storage_shape(shape))

    offset, nbytes = int(rt.data_offset), int(rt.n_bytes)
    release = (lambda: drop_pages(mm, offset, nbytes)) if mm is not None else None
    return Tensor(str(rt.name), shape, d, load, origin=str(path), release=release)


def _naming(exc: InputError, path: Path) -> InputError:
    """A family's error about this file's metadata or tensors, naming the file when it does not yet."""
    return exc if exc.path is not None else InputError(str(exc), path=path)


def read_gguf(path: Path, options: ReadOptions) -> Model:
    first = _open_reader(path)
    kv, types = _field_values(first, path)
    parts = _split_paths(path, kv, types)
    readers = [first] + [_open_reader(p) for p in parts[1:]]
    if len(parts) > 1:
        _check_parts(readers, parts)
    check_tokenizer(kv, types, path)
    raw: list[Tensor] = []
    seen: set[str] = set()
    for reader, p in zip(readers, parts):
        for rt in reader.tensors:
            if rt.name in seen:
                raise InputError(f"tensor name {rt.name!r} appears twice (in two parts of the split)", path=p)
            seen.add(rt.name)
            raw.append(_tensor_of(rt, p, reader.mm))
    if lora.is_adapter_file(kv):  # a LoRA adapter (general.type = adapter): see adapter.py
        return lora.read_adapter(path, kv, types, raw, options)

    reg = get_registry()
    arch_name = kv.get("general.architecture")
    if arch_name is not None and types["general.architecture"][0] != 8:
        raise InputError(f"general.architecture is {type_name(types, 'general.architecture')}; it must be a string",
                         path=path)
    arch = reg.architecture_in("gguf", arch_name) if isinstance(arch_name, str) else None
    tok_fields = {k: v for k, v in kv.items() if k.startswith("tokenizer.")}
    config: dict[str, Any] = {}
    stored = kv.get(HF_CONFIG_KEY)
    if stored is not None and not isinstance(stored, str):
        raise InputError(f"metadata {HF_CONFIG_KEY!r} is {type_name(types, HF_CONFIG_KEY)}; it must be a JSON string",
                         path=path)
    if isinstance(stored, str):
        try:
            config = json.loads(stored)
        except ValueError:
            config = {}
        if not isinstance(config, dict):
            raise InputError(f"metadata {HF_CONFIG_KEY!r} is not a JSON object", path=path)
    model = Model(source=str(path), format="gguf", tokenizer=Tokenizer(fields=from_gguf_keys(tok_fields)))
    if arch is not None:
        check_architecture(arch_name, kv, types, raw, path)
        try:
            derived = arch.layout("gguf").config_from_meta(kv, str(path))
        except InputError as exc:
            raise _naming(exc, path) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"metadata lacks or garbles {exc} needed for a {arch_name} model", path=path) from None
        tokens = tok_fields.get("tokenizer.ggml.tokens")
        derived.setdefault("vocab_size", len(tokens) if isinstance(tokens, list) else None)
        for key, field in (("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id"),
                           ("pad_token_id", "tokenizer.ggml.padding_token_id")):
            if field in tok_fields:
                derived[key] = int(tok_fields[field])
        derived["torch_dtype"] = "float32"
        stored_family = reg.architecture_for(config)
        layout = stored_family.layout("gguf") if stored_family is not None else None
        if layout is not None and layout.arch == arch_name:
            arch = stored_family  # the config lmconv stored names the family (several can share an arch name)
        else:
            config = derived  # no stored config, or one of another family: the keys rule
        try:
            tensors, config = arch.from_target(raw, config, "gguf", str(path))
        except InputError as exc:
            raise _naming(exc, path) from None
        except KeyError as exc:
            raise InputError(f"metadata lacks {exc} needed for a {arch_name} model", path=path) from None
    else:
        # No warning: a generic container keeps the GGUF names as they are; what needs a family (an HF
        # folder transformers loads, a forward pass) says so itself, from this note.
        model.metadata["unknown_architecture"] = {"format": "gguf", "name": arch_name,
                                                  "known": reg.target_names("gguf")}
        tensors = raw
        stored_aliases = kv.get(ALIASES_KEY)
        if isinstance(stored_aliases, str):
            try:
                pairs = json.loads(stored_aliases)
            except ValueError:
                raise InputError(f"metadata {ALIASES_KEY!r} is not JSON", path=path) from None
            if not isinstance(pairs, dict) or not all(isinstance(v, str) for v in pairs.values()):
                raise InputError(f"metadata {ALIASES_KEY!r} is not a JSON object of names", path=path)
            by_name = {t.name: t for t in tensors}
            for alias, target in sorted(pairs.items()):
                if target in by_name and alias not in by_name:
                    by_name[target] = by_name[target].replace(aliases=by_name[target].aliases + (alias,))
            tensors = list(by_name.values())
    for t in tensors:
        model.add(t)
    model.config = config
    model.metadata["gguf"] = {k: v for k, v in kv.items() if not k.startswith("tokenizer.") and k not in (HF_CONFIG_KEY, ALIASES_KEY)}
    model.metadata["gguf.types"] = types
    if len(parts) > 1:
        model.metadata["gguf.splits"] = [str(p) for p in parts]
    return model


def dead_end(model: Model) -> str | None:
    """Why llama.cpp could not run the GGUF of ``model``, and how to give what is missing; None if it could."""
    reg = get_registry()
    arch = reg.architecture_for(model.config)
    generic = "or --generic to write a GGUF llama.cpp cannot run"
    if arch is None or arch.layout("gguf") is None:
        seen = model.metadata.get("recognized")
        if not model.config and isinstance(seen, dict):
            return (f"{seen['description']}; a config.json is needed for {', '.join(seen['missing'])}: "
                    f"give one with --config PATH ({generic})")
        if not model.config:
            return (f"has no config.json and its tensors are not those of a family lmconv knows: give a config with "
                    f"--config PATH ({generic})")
        what = model.architecture or model.config.get("model_type") or "unnamed"
        return (f"architecture {what!r} is not one lmconv knows (known: {', '.join(reg.target_names('gguf'))}); "
                f"pass --generic to write a GGUF llama.cpp cannot run")
    if not model.tokenizer:
        return (f"has no tokenizer, which llama.cpp needs to run it: give its files with --tokenizer PATH "
                f"(a folder with tokenizer.json …) ({generic})")
    return None


# ----------------------------------------------------------------------------------- the format
class GGUFFormat(Format):
    name = "gguf"
    extensions = (".gguf",)
    description = "GGUF for llama.cpp (f32/f16/bf16 and quantised blocks; split files)"
    stores_quantized = True
    stores_dtypes = frozenset({"f64", "f32", "f16", "bf16", "i8", "i16", "i32", "i64"})
    self_describing = True
    stores_adapters = True  # llama.cpp's LoRA adapters (adapter.py)

    def sniff(self, path: Path) -> bool:
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC

    def read(self, path: Path, options: ReadOptions) -> Model:
        return read_gguf(path, options)

    def prepare(self, model: Model, options: WriteOptions) -> Model:
        """Stop before writing a GGUF llama.cpp cannot run, saying what is missing (``--generic`` writes
        it anyway). The writer picks a type per tensor itself (see types.py)."""
        if is_adapter(model):
            return model
        if not options.extra.get("generic"):
            problem = dead_end(model)
            if problem:
                raise UsageError(problem, path=model.source or None)
        return model

    def write(self, model: Model, path: Path, options: WriteOptions) -> list[Path]:
        if is_adapter(model):
            return lora.write_adapter(model, path, options)
        return write_gguf(model, path, options)

    def plan(self, model: Model, path: Path, options: WriteOptions) -> Plan:
        if is_adapter(model):
            return lora.plan_adapter(model, path, options)
        planned = plan_gguf(model, options)
        tensors = [PlannedTensor(t.name, t.shape, t.dtype.name, t.nbytes) for t in planned.tensors]
        notes = [f"general.architecture = {planned.arch_name}"]
        if planned.aliases:
            notes.append("ties kept as names: " + ", ".join(f"{a} = {n}" for a, n in planned.aliases.items()))
        return Plan(self.name, [str(path)], tensors, notes)


@hookimpl
def register_formats(register: Any) -> None:
    declare_block_types()
    register(GGUFFormat())


@hookimpl
def register_options(register: Any) -> None:
    register(GENERIC)
    register(lora.BASE)
    register(Option("--split-max-size", str, "GGUF: split the output into files of at most this size (e.g. 2G, 500M).",
                    metavar="SIZE", parse=lambda v: parse_size(v, option="--split-max-size")))
    register(Option("--pre-tokenizer", str, "GGUF: llama.cpp's pre-tokenizer name, when lmconv cannot identify it.",
                    metavar="NAME"))
    register(Option("--metadata", str, "GGUF: a JSON file of general.* keys (as llama.cpp's --metadata) that override "
                    "what the model card and config say.", metavar="FILE"))


@hookimpl
def register_runtimes(register: Any) -> None:
    register(Runtime("llama.cpp", ("gguf",), llamacpp_logits, "llama.cpp through llama-cpp-python, f32 KV cache"))


def _to_fields(files: Any, config: Any) -> dict[str, Any]:
    return from_gguf_keys(hf_to_gguf(files, config))


def _to_files(fields: Any) -> dict[str, bytes]:
    return gguf_to_hf(to_gguf_keys(fields))


@hookimpl
def register_tokenizer_bridges(register: Any) -> None:
    register(TokenizerBridge("gguf", _to_fields, _to_files))
