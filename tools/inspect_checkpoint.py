"""Report what a checkpoint holds, without loading any tensor data.

    python tools/inspect_checkpoint.py --checkpoint runs/tiny                    # its latest complete checkpoint
    python tools/inspect_checkpoint.py --checkpoint runs/tiny/checkpoints/step_00000100 --json
    python tools/inspect_checkpoint.py --checkpoint runs/tiny/checkpoints/step_00000200.tmp --no-checksums

--checkpoint takes a checkpoint directory (complete, a partial `.tmp` one, or a damaged one) or a run
directory (its latest complete checkpoint). Reported: kind (sharded / weights-only), whether it is
complete (manifest, sizes, sha256 and dist metadata: `checkpoint.verify`) and if not why, step, tokens,
skipped and optimizer steps, the layout that wrote it, data-loader state, next-batch fingerprint, the
model config, every tensor's global shape and dtype (dist/ metadata or the model.safetensors header),
parameter count, size on disk per part and the number of ranks' RNG files. --json prints one object
with all of it (the full config too); --no-checksums skips the sha256 pass (sizes are still checked).

Exit status: 0 when the checkpoint could be inspected, complete or not (see "complete" and "reason");
2 with one line on stderr when the path does not exist or is not a checkpoint.
Nothing is unpickled except through the restricted loaders of tapa_scale.train.sharded.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from tapa_scale.train import checkpoint as ckpt  # noqa: E402
from tapa_scale.train.sharded import DIST, RNG, check_metadata_pickle, is_optimizer_key, iter_files  # noqa: E402

_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                       "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_MARKS = ("state.json", "manifest.json", ckpt.MARKER, DIST, "model.safetensors")


def _entry(name: str, shape, dtype: str) -> dict:
    known = getattr(torch, dtype, None)  # a safetensors dtype torch does not name: size unknown (None)
    return {"name": name, "shape": list(shape), "dtype": dtype,
            "bytes": math.prod(shape) * known.itemsize if isinstance(known, torch.dtype) else None}


def dist_metadata(dist_dir: Path):
    """dist/.metadata, its pickle replayed through an allow-list before torch reads it."""
    import torch.distributed.checkpoint as dcp

    check_metadata_pickle(dist_dir)
    return dcp.FileSystemReader(str(dist_dir)).read_metadata()


def dist_tensors(meta) -> list[dict]:
    """Global name, shape and dtype of every tensor in dist/ (from its metadata: no tensor data read)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    return [_entry(k, m.size, str(m.properties.dtype).removeprefix("torch."))
            for k, m in meta.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)]


def optimizer_bytes_per_rank(meta) -> dict[int, int]:
    """Bytes of optimizer state each rank wrote into dist/ (from the storage entries of the metadata:
    the writer's rank is the first number of its `__<rank>_<n>.distcp` file)."""
    out: dict[int, int] = {}
    for index, where in meta.storage_data.items():
        if is_optimizer_key(index.fqn):
            rank = int(where.relative_path.split("_")[2])
            out[rank] = out.get(rank, 0) + where.length
    return dict(sorted(out.items()))


def optimizer_sharding(layout: dict | None, per_rank: dict) -> dict:
    """How the AdamW state was held when it was written: the optimizer, over how many ranks one
    model-parallel rank's state was sharded, and what each rank wrote."""
    layout = layout or {}
    kind = layout.get("optimizer")
    shards = layout.get("dp", 1) * layout.get("cp", 1) if kind == "distributed" else 1
    return {"optimizer": kind, "sharded_over": shards, "bytes_per_rank": per_rank,
            "total_bytes": sum(per_rank.values())}


def safetensors_tensors(path: Path) -> list[dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return [_entry(k, f.get_slice(k).get_shape(), _SAFETENSORS_DTYPES.get(f.get_slice(k).get_dtype(), f.get_slice(k).get_dtype()))
                for k in f.keys()]


def inspect(path: Path, checksums: bool = True) -> dict:
    """Everything reported about checkpoint directory `path`; problems reading a part go to "problems"."""
    problems, out = [], {"path": str(path)}
    out["kind"] = "sharded" if (path / DIST).is_dir() or (path / RNG).is_dir() else (
        "weights-only" if (path / "model.safetensors").is_file() else "unknown")
    try:
        ckpt.verify(path, checksums)
        out.update(complete=True, reason=None)
    except Exception as e:  # CorruptCheckpoint, or a manifest that is not what publish writes
        out.update(complete=False, reason=str(e) if isinstance(e, ckpt.CorruptCheckpoint)
                   else f"{path}: {ckpt.MANIFEST} malformed ({type(e).__name__}: {e})")
    out["checksums_checked"] = checksums

    def attempt(what, fn, default=None):
        try:
            return fn()
        except Exception as e:  # a damaged part is reported, the rest is still shown
            problems.append(f"{what}: {type(e).__name__}: {e}".splitlines()[0])
            return default

    state = attempt("state.json", lambda: ckpt.read_state(path), {}) if (path / "state.json").exists() else {}
    for key in ("step", "tokens", "skipped_steps", "optimizer_steps", "layout", "data", "next_batch"):
        out[key] = state.get(key)
    config = attempt("config.yaml", lambda: yaml.safe_load((path / "config.yaml").read_text()), None) \
        if (path / "config.yaml").exists() else None
    out["model_config"] = (config or {}).get("model")
    out["config"] = config

    tensors, source, per_rank = [], None, {}
    if (path / DIST).is_dir():
        source, meta = DIST, attempt(DIST, lambda: dist_metadata(path / DIST))
        if meta is not None:
            tensors, per_rank = dist_tensors(meta), optimizer_bytes_per_rank(meta)
    elif (path / "model.safetensors").is_file():
        source = "model.safetensors"
        tensors = attempt(source, lambda: safetensors_tensors(path / source), [])
    out["tensor_source"] = source
    out["tensors"] = [t for t in tensors if not is_optimizer_key(t["name"])]
    out["optimizer_tensors"] = [t for t in tensors if is_optimizer_key(t["name"])]
    out["parameters"] = sum(math.prod(t["shape"]) for t in out["tensors"])
    out["optimizer_state"] = optimizer_sharding(out["layout"], per_rank)

    sizes = {"total": 0, DIST: 0, RNG: 0, "model.safetensors": 0, "tokenizer": 0, "other": 0}
    for f in iter_files(path):
        part = f.relative_to(path).parts[0]
        sizes[part if part in sizes else "other"] += f.stat().st_size
        sizes["total"] += f.stat().st_size
    out["size_bytes"] = sizes
    out["rng_ranks"] = len(list((path / RNG).glob("rank_*.safetensors"))) if (path / RNG).is_dir() else 0
    out["problems"] = problems
    return out


def _human(n) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _flat(d: dict, prefix: str = "") -> list[str]:
    return [item for k, v in d.items()
            for item in (_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}={v}"])]


def text(r: dict) -> str:
    status = "complete" if r["complete"] else f"INCOMPLETE: {r['reason']}"
    lines = [f"checkpoint   {r['path']}", f"kind         {r['kind']}, {status}",
             f"step         {r['step']}   tokens {r['tokens']}   optimizer steps {r['optimizer_steps']}"
             f"   skipped steps {r['skipped_steps']}"]
    for label, key in (("layout", "layout"), ("data", "data"), ("next batch", "next_batch"), ("model", "model_config")):
        if r[key]:
            lines.append(textwrap.fill(" ".join(_flat(r[key])), 110, initial_indent=f"{label:<13}",
                                       subsequent_indent=" " * 13, break_on_hyphens=False))
    sizes = r["size_bytes"]
    parts = ", ".join(f"{k} {_human(v)}" for k, v in sizes.items() if k != "total" and v)
    lines.append(f"parameters   {r['parameters']:,} in {len(r['tensors'])} tensors ({r['tensor_source']})")
    lines.append(f"size         {_human(sizes['total'])}: {parts}   rng files of {r['rng_ranks']} rank(s)")
    o = r["optimizer_state"]
    if o["bytes_per_rank"]:
        ranks = ", ".join(f"rank {k} {_human(v)}" for k, v in o["bytes_per_rank"].items())
        how = f"sharded over {o['sharded_over']} data x context ranks" if o["sharded_over"] > 1 else "not sharded"
        lines.append(textwrap.fill(f"{o['optimizer']} optimizer, {how}; {_human(o['total_bytes'])} written: "
                                   f"{ranks}", 110, initial_indent=f"{'optimizer':<13}",
                                   subsequent_indent=" " * 13))
    lines += [f"problem      {p}" for p in r["problems"]]
    if r["tensors"]:
        width = max(len(t["name"]) for t in r["tensors"]) + 2
        lines.append(f"\n{'tensor':<{width}}{'shape':<18}{'dtype':<10}size")
        lines += [f"{t['name']:<{width}}{'x'.join(map(str, t['shape'])):<18}{t['dtype']:<10}{_human(t['bytes'])}"
                  for t in r["tensors"]]
        for kind in sorted({_optimizer_group(t["name"]) for t in r["optimizer_tensors"]}):
            group = [t for t in r["optimizer_tensors"] if _optimizer_group(t["name"]) == kind]
            lines.append(f"{kind + '.*':<{width}}{f'{len(group)} tensors':<18}{group[0]['dtype']:<10}"
                         f"{_human(sum(t['bytes'] or 0 for t in group))}")
    return "\n".join(lines)


def _optimizer_group(name: str) -> str:
    """`optim.exp_avg.<parameter key>` -> `optim.exp_avg`."""
    return ".".join(name.split(".")[:2])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-checksums", action="store_true", help="skip the sha256 pass over every file")
    args = p.parse_args(argv)
    if hasattr(signal, "SIGPIPE"):  # `... | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    path = Path(args.checkpoint)
    try:
        path = ckpt.resolve_checkpoint(path)
    except FileNotFoundError as e:  # a partial or damaged checkpoint directory is still inspected
        if not (path.is_dir() and any((path / m).exists() for m in _MARKS)):
            print(f"error: {e}", file=sys.stderr)
            return 2
    report = inspect(path, checksums=not args.no_checksums)
    print(json.dumps(report, indent=1) if args.json else text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
