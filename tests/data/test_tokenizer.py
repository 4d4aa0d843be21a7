"""The embedded tokenizer: loads through transformers, round-trips text exactly, has the EOS."""
import hashlib

from transformers import AutoTokenizer

from tapa_scale.data import EOS, load_tokenizer
from tapa_scale.data.tokenizer import TOKENIZER_DIR, train_tokenizer

from tests.data.helpers import small_docs

SAMPLES = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "  leading spaces,\ttabs\n\nand blank lines\n",
    "“Curly quotes” — dashes… café naïve Ελληνικά 中文 emoji 🙂",
    "",
]


def test_round_trip_is_exact():
    tok = load_tokenizer()
    for text in SAMPLES + small_docs(2, 3000):
        assert tok.decode(tok.encode(text)) == text


def test_eos_token_and_vocab():
    tok = load_tokenizer()
    assert len(tok) == 8192
    assert tok.eos_token == EOS
    eos = tok.convert_tokens_to_ids(EOS)
    assert tok.encode(EOS) == [eos]  # one special token, never split into bytes
    assert tok.decode([eos]) == EOS


def test_auto_tokenizer_loads_the_directory():
    auto = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    assert auto.encode(SAMPLES[0]) == load_tokenizer().encode(SAMPLES[0])


def test_training_is_reproducible(tmp_path):
    docs = small_docs(4, 20000)
    a = train_tokenizer(iter(docs), 400, tmp_path / "a")
    b = train_tokenizer(iter(docs), 400, tmp_path / "b")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    tok = load_tokenizer(str(tmp_path / "a"))
    assert len(tok) == 400 and tok.decode(tok.encode(docs[0])) == docs[0]
