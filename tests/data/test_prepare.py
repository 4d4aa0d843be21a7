"""prepare_dataset: formats, token counts, entropy, worker-independence and idempotence."""
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from streaming.base.format import reader_from_json

from tapa_scale.data import load_tokenizer
from tapa_scale.data.prepare import prepare_dataset

from tests.data.helpers import small_docs, write_jsonl


def _read_split(root, split):
    index = json.loads((root / split / "index.json").read_text())
    out = []
    for shard in index["shards"]:
        reader = reader_from_json(str(root), split, shard)
        out += [reader.get_item(i)["tokens"] for i in range(reader.samples)]
    return out


def test_shards_hold_the_tokenized_documents(tiny_dataset):
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    tok = load_tokenizer()
    docs = small_docs(13)
    stored = _read_split(tiny_dataset, "train")
    assert all(s.dtype == np.uint16 for s in stored)
    assert [list(s) for s in stored] == [tok.encode(d) for d in docs[:10]]
    train = manifest["splits"]["train"]
    assert train["documents"] == 10 and train["tokens"] == sum(len(s) for s in stored)
    counts = np.bincount(np.concatenate(stored + [np.zeros(10, np.uint16)]), minlength=8192)
    p = counts[counts > 0] / counts.sum()  # the stream the loader sees: one EOS (id 0) per doc
    assert math.isclose(train["unigram_entropy_nats"], float(-(p * np.log(p)).sum()), rel_tol=1e-9)
    assert manifest["request"]["tokenizer_sha256"] == manifest["tokenizer"]["sha256"]
    assert {f["path"].split("/")[-1] for f in manifest["request"]["inputs"]["train"]} == {"train.jsonl"}


def test_txt_parquet_and_val_fraction(tmp_path):
    docs = small_docs(6, 2000)
    for i, d in enumerate(docs[:3]):
        (tmp_path / "txt" / f"{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "txt" / f"{i}.txt").write_text(d)
    pq.write_table(pa.table({"body": docs[3:]}), tmp_path / "d.parquet")
    m = prepare_dataset([tmp_path / "txt", tmp_path / "d.parquet"], tmp_path / "out",
                        field="body", val_fraction=0.5, progress=False)
    # documents 1, 3, 5 (1-based) are held out: the split is by document, in input order
    assert m["splits"]["val"]["documents"] == 3 and m["splits"]["train"]["documents"] == 3
    tok = load_tokenizer()
    assert [list(s) for s in _read_split(tmp_path / "out", "val")] == \
        [tok.encode(docs[i]) for i in (0, 2, 4)]


def test_long_documents_are_chunked(tmp_path):
    doc = small_docs(1, 20000)[0]
    src = write_jsonl(tmp_path / "in.jsonl", [doc, doc[:500]])
    prepare_dataset([src], tmp_path / "out", val=[src], max_chunk_tokens=1000, progress=False)
    table = np.load(tmp_path / "out" / "train" / "samples.npy")
    n = len(load_tokenizer().encode(doc))
    assert table[:, 0].tolist() == [0] * math.ceil(n / 1000) + [1]
    assert table[table[:, 0] == 0, 1].sum() == n and table[:, 1].max() == 1000


def test_rerun_is_a_no_op_and_input_change_rebuilds(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", small_docs(4, 3000))
    out = tmp_path / "out"
    first = prepare_dataset([src], out, val=[src], progress=False)
    shard = next((out / "train").glob("*.mds"))
    stamp = (shard.stat().st_mtime_ns, (out / "manifest.json").stat().st_mtime_ns)
    assert prepare_dataset([src], out, val=[src], progress=False) == first
    assert (shard.stat().st_mtime_ns, (out / "manifest.json").stat().st_mtime_ns) == stamp
    write_jsonl(src, small_docs(5, 3000))
    second = prepare_dataset([src], out, val=[src], progress=False)
    assert second["splits"]["train"]["documents"] == 5
    assert second["fingerprint"] != first["fingerprint"]


def test_workers_do_not_change_the_output(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", small_docs(8, 4000))
    a = prepare_dataset([src], tmp_path / "a", val=[src], workers=1, progress=False)
    b = prepare_dataset([src], tmp_path / "b", val=[src], workers=2, progress=False)
    assert a["splits"] == b["splits"]
    assert (tmp_path / "a/train/shard.00000.mds").read_bytes() == \
        (tmp_path / "b/train/shard.00000.mds").read_bytes()
