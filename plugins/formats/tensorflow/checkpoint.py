"""TensorFlow checkpoints: TF1 name-based and TF2 object-based, read and written.

A checkpoint is a prefix (``model.ckpt``) with ``model.ckpt.index`` and one or more
``model.ckpt.data-0000i-of-0000n`` files; lmconv accepts the prefix, the ``.index``
file or the folder holding a ``checkpoint`` state file. Names become HF names by the
rules in :mod:`tf_names`; optimiser slots, step counters and the object graph are left
out. TensorFlow is imported only when a checkpoint is actually read or written
(``pip install 'lmconv[tf]'``); sniffing looks at file names and the table magic only.

Writing makes a TF2 object-based checkpoint (what ``tf.train.Checkpoint(model=m).write``
makes: keys ``model/<path>/.ATTRIBUTES/VARIABLE_VALUE`` and a ``_CHECKPOINTABLE_OBJECT_GRAPH``)
with HF-TF variable names, plus a ``_lmconv_metadata`` string that gives the exact HF names back.
Tensors are saved a shard at a time, so memory is bounded by ``--max-shard-size`` (default 1GB),
not by the model. A model whose family lays itself out for TensorFlow (:mod:`families`) is written in
that layout (a Keras model's object-based keys, or a TF1 variant's names, name-based), and a
checkpoint in such a layout is read back through the family that claims it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from lmconv import dtypes as dt
from lmconv.errors import InputError, MissingDependencyError
from lmconv.formats import Format, Plan, ReadOptions, WriteOptions
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model
from lmconv.sharding import MAX_SHARD_SIZE, shard_tensors
from lmconv.streaming import iter_loaded
from lmconv.units import parse_size

from . import families
from . import names as tn
from .index import TABLE_MAGIC, TF_TYPE_NAMES, check_index

DEFAULT_SHARD = "1GB"
_DATA_RE = r"\.data-(\d{5})-of-(\d{5})"


def _tf() -> Any:
    if "tensorflow" not in sys.modules:
        # TensorFlow's C++ logging writes to file descriptor 2 directly, past any redirection of
        # sys.stderr, and would break lmconv's one-line stderr: level 3 silences ERROR lines too
        # (every failure reaches lmconv as an exception, which it reports itself). lmconv computes
        # nothing in TF, so oneDNN's numerics switch (which prints the loudest line) is moot.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf
    except ImportError:
        raise MissingDependencyError(
            "reading or writing TensorFlow checkpoints needs TensorFlow: pip install 'lmconv[tf]' "
            "(Keras .h5 files need only h5py)"
        ) from None
    return tf


def resolve_prefix(path: Path) -> Path | None:
    """The checkpoint prefix ``path`` names (prefix, .index, a .data shard, .meta, or the folder)."""
    text = os.fspath(path)
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            try:
                m = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text("utf-8", "replace"), re.M)
            except OSError:
                m = None
            if m:
                # Always the checkpoint beside the state file: a TF1 Saver writes absolute paths, which
                # after a copy or move name the original (or nothing), never what this folder holds.
                return path / Path(m.group(1)).name
        indexes = sorted(path.glob("*.index"))
        return Path(str(indexes[0])[: -len(".index")]) if len(indexes) == 1 else None
    if text.endswith(".index") and path.is_file():
        return Path(text[: -len(".index")])
    m = re.fullmatch(r"(.*)" + _DATA_RE, text)
    if m and Path(m.group(1) + ".index").is_file():
        return Path(m.group(1))
    if text.endswith(".meta") and Path(text[: -len(".meta")] + ".index").is_file():
        return Path(text[: -len(".meta")])
    if Path(text + ".index").is_file():
        return path
    return None


def _has_table_magic(index: Path) -> bool:
    try:
        with open(index, "rb") as fh:
            size = fh.seek(0, 2)
            if size < 48:
                return False
            fh.seek(size - 8)
            return fh.read(8) == TABLE_MAGIC
    except OSError:
        return False


def check_data_files(prefix: Path, index: Path) -> list[Path]:
    """Every ``.data`` shard the prefix needs is there (the index itself is read by TensorFlow)."""
    pat = re.compile(re.escape(prefix.name) + _DATA_RE + "$")
    by_total: dict[int, set[int]] = {}
    try:
        entries = list(prefix.parent.iterdir())
    except OSError as exc:
        raise InputError(f"cannot list the checkpoint's folder: {exc.strerror}", path=index) from None
    for p in entries:
        m = pat.match(p.name)
        if m:
            by_total.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    for total, have in sorted(by_total.items(), reverse=True):
        if have >= set(range(total)):
            return [Path(f"{prefix}.data-{i:05d}-of-{total:05d}") for i in range(total)]
    if not by_total:
        raise InputError(f"has no data file beside it ({prefix.name}.data-00000-of-NNNNN is missing)", path=index)
    total, have = max(by_total.items())
    missing = min(set(range(total)) - have)
    raise InputError(f"data shard {prefix.name}.data-{missing:05d}-of-{total:05d} is missing", path=index)


def _dtype_of(tf_dtype: Any) -> dt.DType | None:
    try:
        return dt.from_numpy(np.dtype(tf_dtype.as_numpy_dtype))
    except (KeyError, TypeError, AttributeError):
        return None


def read_checkpoint(path: Path, options: ReadOptions) -> Model:
    prefix = resolve_prefix(path)
    if prefix is None:
        raise InputError("is not a TensorFlow checkpoint (no .index file found)", path=path)
    index = Path(f"{prefix}.index")
    if not index.is_file():
        raise InputError(f"the checkpoint state names {prefix.name}, but {index.name} does not exist", path=path)
    if not _has_table_magic(index):
        raise InputError("is not a TensorFlow checkpoint index (bad table magic or truncated)", path=index)
    check_data_files(prefix, index)
    tf = _tf()
    declared = check_index(prefix, index)
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError) as exc:  # DataLossError & co. for corrupt or truncated tables
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"is not a readable TensorFlow checkpoint: {msg}", path=index) from None
    lock = threading.Lock()

    def raw(key: str) -> np.ndarray:
        with lock:
            return reader.get_tensor(key)

    load = tn.safe_loader(raw, str(index), (tf.errors.OpError, ValueError, OSError))
    meta = None
    if tn.META_KEY in shapes:
        if declared.get(tn.META_KEY, (7, ()))[0] != 7:
            raise InputError(f"{tn.META_KEY} is not a string", path=index)
        meta = tn.parse_meta(load(tn.META_KEY), index)
    variables = []
    for key in sorted(shapes):
        if key in (tn.META_KEY, tn.OBJECT_GRAPH_KEY):
            continue
        d = _dtype_of(dtypes[key])
        if d is None:
            if not tn.is_bookkeeping(tn.strip_var(key)):
                code = declared.get(key, (0, ()))[0]
                kind = TF_TYPE_NAMES.get(code, getattr(dtypes[key], "name", str(dtypes[key])))
                raise InputError(f"variable {key!r} has dtype {kind}, not a tensor of numbers lmconv converts", path=index)
            continue
        variables.append(tn.Var(key, tuple(int(s) for s in shapes[key]), d))
    model = Model(source=str(path), format="tf")
    tn.attach_tf_companions(model, prefix.parent, options.config_path, [v.var for v in variables])
    entries, scheme = tn.plan_read(variables, config=model.config, meta=meta, path=index, warn=options.warn)
    if not entries:
        raise InputError("holds no weights (only bookkeeping variables)", path=index)
    for t in tn.build_tensors(entries, load, str(index)):
        model.add(t)
    model.metadata["tensorflow"] = {"naming": scheme, "prefix": prefix.name}
    if scheme == "verbatim" or (scheme == "lmconv" and meta and meta.get("family")):
        key = families.claim(model, "tf", meta=meta, ordered=False, options=options, origin=str(index), remember=True)
        if key is not None:
            model.metadata["tensorflow"]["naming"] = f"{key} layout of {model.architecture or 'a family'}"
    return model


# ---- writing ---------------------------------------------------------------------------------
SAVE_COUNTER = "save_counter"


def object_graph(plan: tn.WritePlan) -> bytes:
    """The ``_CHECKPOINTABLE_OBJECT_GRAPH`` proto ``tf.train.Checkpoint(model=...).save`` would write."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2 as pb

    graph = pb.TrackableObjectGraph()
    graph.nodes.add()
    ids: dict[tuple[str, ...], int] = {(): 0}
    leaves = [(o.ckpt_key, o.var_name) for o in plan.outs]
    leaves.append((SAVE_COUNTER + tn.OBJECT_SUFFIX, SAVE_COUNTER))
    for key, full_name in leaves:
        comps = key[: -len(tn.OBJECT_SUFFIX)].split("/")
        parent: tuple[str, ...] = ()
        for c in comps:
            cur = parent + (c,)
            if cur not in ids:
                ids[cur] = len(graph.nodes)
                graph.nodes.add()
                ref = graph.nodes[ids[parent]].children.add()
                ref.node_id, ref.local_name = ids[cur], c
            parent = cur
        attr = graph.nodes[ids[parent]].attributes.add()
        attr.name, attr.full_name, attr.checkpoint_key = "VARIABLE_VALUE", full_name, key
    for node in graph.nodes:
        node.has_checkpoint_values.value = True
    return graph.SerializeToString()


def _stored_dtype(d: dt.DType) -> dt.DType:
    return dt.F32 if d.name.startswith("f8_") else d  # TF variables hold no fp8: widen, exactly


def write_checkpoint(model: Model, path: Path, options: WriteOptions) -> list[Path]:
    tf = _tf()
    prefix = Path(str(path)[: -len(".index")]) if str(path).endswith(".index") else path
    family = families.checkpoint_layout(model)
    name_based = False
    if family is not None:
        # A family's own layout: object-based keys of a Keras model (``tf``) or, for a variant such as
        # ``tf.v1``, TF1 variable names written name-based (what a tf.compat.v1 Saver restores).
        arch, key = family
        name_based = key != "tf"
        tensors = families.target_tensors(model, arch, key, options.warn)
        plan = families.plan(model, tensors, key_of=(lambda n: n) if name_based else (lambda n: n + tn.OBJECT_SUFFIX),
                             h5_of=lambda n: f"{n}:0")
        extra = families.meta_extra(model, arch, key)
    else:
        plan = tn.plan_write(model)
        extra = None
    for o in plan.outs:
        o.stored_dtype = _stored_dtype(o.tensor.dtype)
    by_tensor = {id(o.tensor): o for o in plan.outs}
    bookkeeping = [] if name_based else [(tn.OBJECT_GRAPH_KEY, object_graph(plan))]
    bookkeeping.append((tn.META_KEY, tn.meta_record(plan, lambda o: o.ckpt_key, extra)))
    if not name_based:
        # tf.train.Checkpoint.save() writes one; with it, restore(...).assert_existing_objects_matched() passes
        bookkeeping.append((SAVE_COUNTER + tn.OBJECT_SUFFIX, np.int64(1)))
    max_bytes = parse_size(options.extra.get("max_shard_size") or DEFAULT_SHARD, option="--max-shard-size")
    groups = shard_tensors([o.tensor for o in plan.outs], max_bytes) if plan.outs else [[]]

    def save(target: Path, tensors: list[Any], extra: list[tuple[str, Any]]) -> None:
        names, values = [k for k, _ in extra], [tf.constant(v) for _, v in extra]
        for t, arr in iter_loaded(tensors):
            o = by_tensor[id(t)]
            names.append(o.ckpt_key)
            values.append(tf.constant(tn.tf_array(o, arr)))
            options.progress(t.nbytes)
            del arr
            t.release()
        tf.raw_ops.SaveV2(prefix=str(target), tensor_names=names, shape_and_slices=[""] * len(names), tensors=values)

    if len(groups) == 1:
        save(prefix, groups[0], bookkeeping)
    else:
        parts_dir = prefix.parent / f".{prefix.name}.parts"
        parts_dir.mkdir()
        parts = []
        for i, group in enumerate(groups):
            part = parts_dir / f"part-{i:05d}"
            save(part, group, bookkeeping if i == 0 else [])
            parts.append(str(part))
        tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=str(prefix), delete_old_dirs=True)
        shutil.rmtree(parts_dir, ignore_errors=True)
    data = sorted(prefix.parent.glob(f"{glob_escape(prefix.name)}.data-*-of-*"))
    return [Path(f"{prefix}.index"), *data]


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


class TFCheckpointFormat(Format):
    name = "tf"
    extensions = (".index", ".ckpt")  # .index first: a prefix is no file, and tools that damage or list "the file" need one
    description = "TensorFlow checkpoint (TF1 name-based or TF2 object-based; prefix, .index or folder); needs lmconv[tf]"
    stores_dtypes = frozenset(d.name for d in dt.PLAIN_DTYPES)

    def sniff(self, path: Path) -> bool:
        if path.is_dir() and (path / "checkpoint").is_file():
            return True  # a checkpoint folder, even one whose files are missing (read() says which)
        prefix = resolve_prefix(path)
        if prefix is None:
            # a bare prefix whose data files are here but whose index is not: read() says so
            return not path.exists() and any(path.parent.glob(f"{glob_escape(path.name)}.data-*-of-*"))
        # a bare prefix names a checkpoint by its .index alone: read() says what is wrong with it
        return _has_table_magic(Path(f"{prefix}.index")) or not path.exists()

    def read(self, path: Path, options: ReadOptions) -> Model:
        return read_checkpoint(path, options)

    def output_paths(self, path: Path, options: WriteOptions) -> list[Path]:
        prefix = Path(str(path)[: -len(".index")]) if str(path).endswith(".index") else path
        data = sorted(prefix.parent.glob(f"{glob_escape(prefix.name)}.data-*-of-*")) if prefix.parent.is_dir() else []
        return [Path(f"{prefix}.index"), *data]

    def write(self, model: Model, path: Path, options: WriteOptions) -> list[Path]:
        return write_checkpoint(model, path, options)

    def plan(self, model: Model, path: Path, options: WriteOptions) -> Plan:
        family = families.checkpoint_layout(model)
        if family is None:
            return super().plan(model, path, options)
        return Plan(self.name, [str(p) for p in self.output_paths(path, options)], families.planned(model, *family, options.warn))


@hookimpl
def register_formats(register: Any) -> None:
    register(TFCheckpointFormat())


@hookimpl
def register_options(register: Any) -> None:
    register(MAX_SHARD_SIZE)
