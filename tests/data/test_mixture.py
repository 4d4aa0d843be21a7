"""Weighted mixtures: the loader's sample sequence against a sequential recomputation from the
documented rule, exact resume across a data-parallel change, per-source counts, and refusals."""
import itertools
import json

import numpy as np
import pytest

from tapa_scale.config import ConfigError, load_config
from tapa_scale.data import DataConfig, DataError, build_loader
from tapa_scale.data.config import SourceConfig
from tapa_scale.data.corpus import corpus_file, read_jsonl_gz
from tapa_scale.data.mixture import quotas
from tapa_scale.data.prepare import prepare_dataset

from tests.data.helpers import write_jsonl
from tests.data.test_packing import _documents
from tests.data.test_resume import take

SEQ, SEED, EOS, BLOCK = 24, 5, 0, 4096


@pytest.fixture(scope="module")
def second_dataset(tmp_path_factory):
    """Seven documents that tiny_dataset does not have (a smaller source: many more epochs)."""
    base = tmp_path_factory.mktemp("second")
    docs = [r["text"][:3000] for r in itertools.islice(read_jsonl_gz(corpus_file("train")), 7)]
    out = base / "prepared"
    prepare_dataset([write_jsonl(base / "train.jsonl", docs[:-2])], out,
                    val=[write_jsonl(base / "val.jsonl", docs[-2:])], progress=False)
    return out


def _cfg(roots, weights, **kw):
    limits = kw.pop("limits", [{}] * len(roots))
    return DataConfig(seq_len=SEQ, sources=[SourceConfig(path=str(r), weight=w, **lim)
                                            for r, w, lim in zip(roots, weights, limits)], **kw)


class SourceStream:
    """Packed samples of one source, epoch after epoch, written out from the rule in docs/data.md:
    epoch e = documents in the order permutation(default_rng([seed, source, e])), each + EOS."""

    def __init__(self, root, source, seed_words=None, min_doc=0, max_doc=0):
        docs = [d for d in _documents(root) if len(d) >= min_doc]  # shorter ones skipped
        if max_doc:  # longer ones cut into pieces of max_doc tokens, each its own document
            docs = [d[i:i + max_doc] for d in docs for i in range(0, len(d), max_doc)]
        self.docs, self.tokens, self.epoch = docs, [], -1
        self.seed_words = [SEED, source] if seed_words is None else seed_words

    def sample(self, j):
        per_epoch = (sum(len(d) + 1 for d in self.docs) - 1) // SEQ
        epoch, k = divmod(j, per_epoch)
        if epoch != self.epoch:
            order = np.random.default_rng([*self.seed_words, epoch]).permutation(len(self.docs))
            self.tokens = [t for i in order for t in (*self.docs[i], EOS)]
            self.epoch = epoch
        return self.tokens[k * SEQ:k * SEQ + SEQ]


def expected(roots, shares, n):
    """Global samples 0..n-1 and their sources, walking the blocks in order with one counter per
    source."""
    streams = [SourceStream(r, s) for s, r in enumerate(roots)]
    used, out, of = [0] * len(roots), [], []
    for t in range(-(-n // BLOCK)):
        kinds = np.repeat(np.arange(len(roots)), shares)
        for s in np.random.default_rng([SEED, 0x6D6978, t]).permutation(kinds):
            out.append(streams[s].sample(used[s]))
            of.append(int(s))
            used[s] += 1
    return out[:n], of[:n]


def test_quotas_by_largest_remainder():
    assert quotas([3, 1]).tolist() == [3072, 1024]
    assert quotas([1, 1, 1]).tolist() == [1366, 1365, 1365]
    assert quotas([0.5, 0.25, 0.25]).tolist() == [2048, 1024, 1024]


def test_sequence_matches_recomputation_and_resumes_across_dp(tiny_dataset, second_dataset):
    roots, n = [tiny_dataset, second_dataset], 4428  # into the second block
    ref, of = expected(roots, [3072, 1024], n)
    first = [build_loader(_cfg(roots, [3, 1]), "train", 50, dp_rank=r, dp_size=2, seed=SEED)
             for r in range(2)]
    got = take(first, 30)  # 3000 samples
    state = json.loads(json.dumps(first[0].state_dict()))
    later = [build_loader(_cfg(roots, [3, 1]), "train", 68, dp_rank=r, dp_size=3, seed=SEED)
             for r in range(3)]
    for loader in later:
        loader.load_state_dict(state)
    got.update(take(later, 7))  # 1428 more: 4428 in all
    assert sorted(got) == list(range(n))
    assert [got[g] for g in range(n)] == ref
    counts = np.bincount(of, minlength=2).tolist()
    assert [s["samples"] for s in later[0].state_dict()["sources"]] == counts
    assert later[0].source_tokens() == {str(tiny_dataset): counts[0] * SEQ,
                                        str(second_dataset): counts[1] * SEQ}


def test_changed_sources_or_weights_are_refused(tiny_dataset, second_dataset):
    roots = [tiny_dataset, second_dataset]
    state = build_loader(_cfg(roots, [3, 1]), "train", 2, seed=SEED).state_dict()
    build_loader(_cfg(roots, [6, 2]), "train", 2, seed=SEED).load_state_dict(state)  # same shares
    for other in (_cfg(roots, [1, 1]), _cfg(roots[::-1], [1, 3]), DataConfig(path=str(tiny_dataset), seq_len=SEQ)):
        with pytest.raises(DataError, match=r"^loader state was saved for sources \[.*\], this run has "
                                            r"\[.*\].*cannot change within a stage; start a new stage"):
            build_loader(other, "train", 2, seed=SEED).load_state_dict(state)


def test_config_rules_for_sources(tiny_dataset):
    with pytest.raises(ConfigError, match="data.path=.* and data.sources are both set"):
        load_config(None, [f"data.path={tiny_dataset}", f"data.sources=[{{path: {tiny_dataset}}}]"])
    with pytest.raises(ConfigError, match=r"data.sources\[1\].weight=0.0001: below 1/4096"):
        load_config(None, [f"data.sources=[{{path: {tiny_dataset}}}, {{path: {tiny_dataset}, weight: 0.0001}}]"])
    cfg = load_config(None, [f"data.sources=[{{path: {tiny_dataset}, weight: 2}}, {{path: {tiny_dataset}}}]"])
    assert [s.weight for s in cfg.data.sources] == [2.0, 1.0]


def test_document_length_limits_per_source(tiny_dataset):
    """One source, long documents only (min), cut into pieces (max): the samples follow the rule,
    a piece starts a new segment at position 0, and the limits are part of the resume identity."""
    lengths = sorted(len(d) for d in _documents(tiny_dataset))
    lo, hi = lengths[3], 600  # skip the 3 shortest documents, cut the rest into <= 600 tokens
    cfg = _cfg([tiny_dataset], [1], limits=[{"min_doc_tokens": lo, "max_doc_tokens": hi}])
    loader = build_loader(cfg, "train", 1, seed=SEED)
    stream = SourceStream(tiny_dataset, 0, seed_words=[SEED], min_doc=lo, max_doc=hi)
    assert len(stream.docs) > len(lengths) - 3  # something was cut
    n = 2 * loader.samples_per_epoch + 5
    rows = [b for b in itertools.islice(loader, n)]
    assert [r["input_ids"][0].tolist() for r in rows] == [stream.sample(j) for j in range(n)]
    for r in rows:  # after every EOS: a new segment whose positions start at 0
        ids, pos = r["input_ids"][0].numpy(), r["position_ids"][0].numpy()
        assert (pos[1:][ids[:-1] == EOS] == 0).all()
    plain = build_loader(DataConfig(path=str(tiny_dataset), seq_len=SEQ), "train", 1, seed=SEED)
    with pytest.raises(DataError, match=r"docs \d+\.\.600 tokens.*cannot change within a stage"):
        plain.load_state_dict(loader.state_dict())
