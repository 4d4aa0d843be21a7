"""Retrieval samples generated offline, from a seed, at exact token lengths: passkey and six RULER-style
tasks.

Every sample is a prompt of exactly `length` tokens (context, then a question that ends where the
answer starts) and the answer's tokens; the scorer (retrieval.py) teacher-forces the answer after the
prompt. Samples are built from token pieces, and the tokenizer is byte-level (decode(encode(a) +
encode(b)) == a + b), so the decoded prompt is the text the model reads. No BOS token is added: windows
start as training samples do.

Tasks (the format strings of passkey are the landmark-attention ones; the others are written here):
    passkey          a 1..50,000 key in repeated filler ("The grass is green. The sky is blue. ..."), at a
                     controlled depth; "What is the pass key? The pass key is" -> " <key>"
    niah_single      one "special magic number" for a word, in held-out text, at the depth
    niah_multikey    the same with three distractor needles for other words at random depths
    niah_multivalue  four numbers for one word; the answer lists all four in order of appearance
    vt               variable tracking: a chain VAR A = value, VAR B = VAR A, ... in filler; the answer
                     names the chain in order
    cwe              common words extraction: a numbered word list where ten words occur 30 times (fewer,
                     but at least 5, where the length is short) and the rest 3 times; the answer lists
                     the ten in order of first appearance
    fwe              frequent words extraction: coded words with Zipf-like counts in filler; the answer
                     names the three most frequent, most frequent first (the counts differ by construction)
Haystacks: passkey and vt use the repeated filler (generated noise); the needle tasks use the embedded
held-out documents (tapa_scale.data.eval_documents), from a seeded offset; cwe and fwe are their own
context. The answer is stricter than RULER's recall score: the listed items in one defined order.
"""
from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

TASKS = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "vt", "cwe", "fwe")
RULER_TASKS = TASKS[1:]
DEPTH_TASKS = ("passkey", "niah_single", "niah_multikey", "niah_multivalue")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
Encode = Callable[[str], list]


@dataclass(frozen=True)
class Sample:
    task: str
    length: int                 # tokens of the prompt: what the model reads before the answer
    depth: Optional[float]      # where the needle sits in the haystack (0 = start, 1 = end); None: no needle
    trial: int
    prompt: list = field(repr=False)
    answer: list = field(repr=False)    # token ids teacher-forced after the prompt
    answer_text: str = ""
    needles: tuple = ()                 # texts the context must contain (the answer's evidence)


class _Builder:
    """Token pieces of one sample and the haystack filling the budget between them."""

    def __init__(self, encode: Encode, length: int, task: str):
        self.encode, self.length, self.task = encode, length, task

    def fit(self, head: str, needles: Sequence[str], question: str, haystack: list,
            depths: Sequence[float]) -> list:
        """head + haystack with each needle inserted at its depth + question, exactly `length` tokens."""
        h, q = self.encode(head), self.encode(question)
        ns = [self.encode(n) for n in needles]
        room = self.length - len(h) - len(q) - sum(len(n) for n in ns)
        if room < 0:
            raise ValueError(f"length {self.length} is too short for task {self.task}: its fixed text "
                             f"takes {self.length - room} tokens")
        if len(haystack) < room:
            raise ValueError(f"task {self.task}: the haystack has {len(haystack)} tokens, "
                             f"{room} needed for length {self.length}")
        hay = list(haystack[:room])
        for depth, needle in sorted(zip(depths, ns), key=lambda x: -x[0]):  # deepest first: offsets hold
            at = round(depth * room)
            hay[at:at] = needle
        out = h + hay + q
        assert len(out) == self.length
        return out


def _filler(encode: Encode, tokens: int) -> list:
    unit = encode(" " + FILLER)
    return (unit * (tokens // len(unit) + 1))[:tokens]


def haystack_tokens(encode: Encode, texts: Sequence[str], tokens: int) -> list:
    """The held-out texts' tokens, concatenated, at least `tokens` of them (repeated if they are fewer):
    tokenised once per run, cut per sample."""
    ids: list = []
    for text in texts:
        for start in range(0, len(text), 200_000):  # pieces: stop as soon as there is enough
            ids += encode(text[start:start + 200_000])
            if len(ids) >= tokens:
                return ids
    if not ids:
        raise ValueError("the haystack texts are empty")
    return ids * (tokens // len(ids) + 1)


def _text_haystack(haystack: Sequence[int], tokens: int, rng: random.Random) -> list:
    start = rng.randrange(0, len(haystack) - tokens + 1)
    return list(haystack[start:start + tokens])


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _word(rng: random.Random, words: Sequence[str], used: set) -> str:
    if len(used) >= len(words):
        raise ValueError(f"the word pool has only {len(words)} words; a sample needs more")
    while True:
        w = rng.choice(words)
        if w not in used:
            used.add(w)
            return w


def _code(rng: random.Random, used: set) -> str:
    while True:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(5))
        if w not in used:
            used.add(w)
            return w


def make_sample(task: str, encode: Encode, length: int, *, seed: int, trial: int, depth: Optional[float] = None,
                haystack: Sequence[int] = (), words: Sequence[str] = ()) -> Sample:
    """One sample; the same (task, length, seed, trial, depth, haystack) gives the same sample on every
    machine. haystack: held-out text tokens (haystack_tokens), at least `length` of them, for the
    needle tasks; words: the word pool (vocabulary) for needle keys and cwe."""
    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    if task in DEPTH_TASKS and (depth is None or not 0.0 <= depth <= 1.0):
        raise ValueError(f"task {task}: depth {depth!r} must lie in [0, 1]")
    rng = random.Random(f"{seed}/{task}/{length}/{depth}/{trial}")  # str seeds hash with sha512: stable
    b = _Builder(encode, length, task)
    used: set = set()
    if task == "passkey":
        key = str(rng.randint(1, 50_000))
        head = ("There is an important piece of information hidden inside a lot of irrelevant text. "
                "Find it and memorize it. I will quiz you about it.")
        needle = f" The pass key is {key}. Remember it. {key} is the pass key."
        prompt = b.fit(head, [needle], " What is the pass key? The pass key is", _filler(encode, length), [depth])
        return Sample(task, length, depth, trial, prompt, encode(f" {key}"), f" {key}", (needle,))
    if task.startswith("niah"):
        key = _word(rng, words, used)
        n_needles, values = 4, [_number(rng) for _ in range(4)]
        if task == "niah_single":
            pairs, depths = [(key, values[0])], [depth]
        elif task == "niah_multikey":
            pairs = [(key, values[0])] + [(_word(rng, words, used), v) for v in values[1:n_needles]]
            depths = [depth] + [rng.random() for _ in range(n_needles - 1)]
        else:
            pairs = [(key, v) for v in values]
            depths = sorted([depth] + [rng.random() for _ in range(n_needles - 1)])
        needles = [f" One of the special magic numbers for {k} is: {v}." for k, v in pairs]
        head = "Some special magic numbers are hidden inside the following text. Remember them."
        if task == "niah_multivalue":
            question = (f" What are all the special magic numbers for {key} in the text above? The special "
                        f"magic numbers for {key} in the text above are")
            answer = " " + ", ".join(values)
        else:
            question = (f" What is the special magic number for {key} in the text above? The special magic "
                        f"number for {key} in the text above is")
            answer = f" {values[0]}"
        prompt = b.fit(head, needles, question, _text_haystack(haystack, length, rng), depths)
        return Sample(task, length, depth, trial, prompt, encode(answer), answer, tuple(needles))
    if task == "vt":
        value, names = _number(rng)[:5], ["".join(rng.choice(string.ascii_uppercase) for _ in range(5))
                                         for _ in range(5)]
        chain = [f" VAR {names[0]} = {value}."] + [f" VAR {n} = VAR {p}." for p, n in zip(names, names[1:])]
        head = "Memorize and track the chain of variable assignments hidden in the following text."
        question = (f" Which variables are assigned the value {value} in the text above? Answer: the chain "
                    f"of assignments gives these {len(names)} variables:")
        answer = " " + " ".join(names)
        depths = sorted(rng.random() for _ in chain)
        prompt = b.fit(head, chain, question, _filler(encode, length), depths)
        return Sample(task, length, None, trial, prompt, encode(answer), answer, tuple(chain))
    return (_cwe if task == "cwe" else _fwe)(b, encode, rng, trial, words)


def _pad_list(b: _Builder, encode: Encode, head: str, items: list, question: str) -> list:
    """head + filler + items + question at exactly b.length tokens (items dropped from the end, and the
    gap filled with filler, until it fits)."""
    h, q = encode(head), encode(question)
    ids = [encode(x) for x in items]
    room = b.length - len(h) - len(q) - sum(map(len, ids))
    if room < 0:
        raise ValueError(f"length {b.length} is too short for task {b.task}")
    body = [t for x in ids for t in x]
    return h + _filler(encode, room) + body + q


def _cwe(b: _Builder, encode: Encode, rng: random.Random, trial: int, words: Sequence[str]) -> Sample:
    used: set = set()
    common = [_word(rng, words, used) for _ in range(10)]
    head = ("Below is a numbered list of words. In it, some words appear more often than others. "
            "Memorize the ones that appear most often.")
    question = (" What are the 10 most common words in the list above? Answer: the 10 words that appear "
                "most often in the list are:")
    budget = b.length - len(encode(head)) - len(encode(question))
    # the pre-tokenizer splits " 12", ".", " word": an entry costs its number's tokens plus its word's
    number = lambda i: len(encode(f" {i}."))  # noqa: E731
    entry = number(100) + sum(len(encode(f" {w}")) for w in common) / 10
    # the ten frequent words take at most half the list: 30 times each at long lengths (RULER's count),
    # fewer at short ones, never under 5 (the rare words appear 3 times)
    reps = max(5, min(30, int(budget / 2 / (10 * entry))))
    pool = common * reps
    total = sum(number(i + 1) for i in range(len(pool))) + reps * sum(len(encode(f" {w}")) for w in common)
    if total > budget:
        raise ValueError(f"length {b.length} is too short for task cwe: its {len(pool)} frequent entries "
                         f"take {total} tokens, {budget} available")
    while len(used) < len(words):  # rare words, 3 times each, while the list fits
        extra = _word(rng, words, used)
        add = sum(number(len(pool) + k + 1) for k in range(3)) + 3 * len(encode(f" {extra}"))
        if total + add > budget:
            break
        pool, total = pool + [extra] * 3, total + add
    rng.shuffle(pool)
    prompt = _pad_list(b, encode, head, [f" {i + 1}. {w}" for i, w in enumerate(pool)], question)
    answer = " " + ", ".join(sorted(common, key=pool.index))
    return Sample("cwe", b.length, None, trial, prompt, encode(answer), answer, tuple(common))


def _fwe(b: _Builder, encode: Encode, rng: random.Random, trial: int, words: Sequence[str]) -> Sample:
    used: set = set()
    head = "Read the following coded text and track how often each coded word appears."
    question = (" What are the 3 most frequent coded words in the text above? Answer: the three most "
                "frequent coded words are:")
    budget = b.length - len(encode(head)) - len(encode(question))
    codes = [_code(rng, used) for _ in range(20)]
    cost = [len(encode(f" {c}")) for c in codes]
    weights = [1.0 / (r + 1) ** 1.5 for r in range(len(codes))]  # Zipf-like over 20 coded words
    scale = budget / sum(w * c for w, c in zip(weights, cost))
    counts = [max(1, math.floor(scale * w)) for w in weights]
    while sum(n * c for n, c in zip(counts, cost)) > budget and counts[0] > 1:
        counts = [max(1, n - 1) for n in counts]
    if sum(n * c for n, c in zip(counts, cost)) > budget or not counts[0] > counts[1] > counts[2] > counts[3]:
        raise ValueError(f"length {b.length} is too short for task fwe: the three most frequent coded words "
                         f"need distinct counts")
    stream = [c for c, n in zip(codes, counts) for _ in range(n)]
    rng.shuffle(stream)
    prompt = _pad_list(b, encode, head, [f" {w}" for w in stream], question)
    answer = " " + ", ".join(codes[:3])
    return Sample("fwe", b.length, None, trial, prompt, encode(answer), answer, tuple(codes[:3]))


def vocabulary(texts: Sequence[str], limit: int = 2000) -> list:
    """Distinct lowercase alphabetic words of 4-10 letters from the texts, in first-seen order: the word
    pool of the needle keys and of cwe (so the words are in the tokenizer's language)."""
    seen: dict = {}
    for text in texts:
        for w in text.split():
            if w.isalpha() and w.islower() and 4 <= len(w) <= 10:
                seen.setdefault(w, None)
                if len(seen) >= limit:
                    return list(seen)
    return list(seen)
