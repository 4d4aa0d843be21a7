"""Byte-level BPE tokenizer: training, saving in Hugging Face layout, loading, fingerprinting.

The embedded tokenizer lives in ``data/tokenizer/`` (``tokenizer.json`` plus the two small config
files ``transformers`` wants), so ``AutoTokenizer.from_pretrained("data/tokenizer")`` works. The
tokenizer has no normaliser and no added prefix space, so ``decode(encode(text)) == text`` exactly.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from .corpus import DATA_DIR
from .errors import DataError

EOS = "<|endoftext|>"
TOKENIZER_DIR = DATA_DIR / "tokenizer"


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path) -> Path:
    """Train byte-level BPE on ``texts`` and save it under ``out_dir``; returns tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=True,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # every byte encodable
    tok.train_from_iterator(texts, trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    write_hf_configs(out_dir)
    return out_dir / "tokenizer.json"


def write_hf_configs(out_dir: Path) -> None:
    """The two JSON files ``PreTrainedTokenizerFast.from_pretrained`` reads beside tokenizer.json."""
    special = {"eos_token": EOS, "bos_token": EOS, "unk_token": EOS}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": 1_000_000_000,
        "clean_up_tokenization_spaces": False,  # keep decode exact
        "add_prefix_space": False,
    }
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (out_dir / name).write_text(json.dumps(obj, indent=2) + "\n")


def resolve_tokenizer(path: str | Path = "") -> Path:
    """tokenizer.json of a tokenizer directory (or the file itself); "" = the embedded one."""
    p = Path(path) if str(path) else TOKENIZER_DIR
    file = p if p.suffix == ".json" else p / "tokenizer.json"
    if not file.is_file():
        raise DataError(f"{file}: tokenizer not found; expected a directory containing "
                        "tokenizer.json (a Hugging Face fast tokenizer)")
    return file


def tokenizer_sha256(path: str | Path = "") -> str:
    return hashlib.sha256(resolve_tokenizer(path).read_bytes()).hexdigest()


def load_tokenizer(path: str = ""):
    """A ``transformers.PreTrainedTokenizerFast`` for ``path`` ("" = the embedded tokenizer)."""
    from transformers import PreTrainedTokenizerFast

    file = resolve_tokenizer(path)
    if (file.parent / "tokenizer_config.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(file.parent))
    return PreTrainedTokenizerFast(tokenizer_file=str(file), eos_token=EOS,
                                   clean_up_tokenization_spaces=False)


def eos_id(tokenizer) -> int:
    """Id of the end-of-document token; a tokenizer without one cannot separate documents."""
    ident = tokenizer.convert_tokens_to_ids(EOS)
    if ident is None or ident == tokenizer.unk_token_id and tokenizer.unk_token != EOS:
        raise DataError(f"tokenizer has no {EOS} token; expected it as the end-of-document token")
    return int(ident)
