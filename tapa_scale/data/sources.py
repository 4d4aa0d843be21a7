"""Readers that turn the files of a few Debian packages into clean English documents.

Used only by ``tools/build_corpus.py`` to assemble the embedded corpus; nothing here runs during
training. Each reader takes the directory a ``.deb`` was extracted into and returns a list of
``(doc_id, text)`` pairs, in a fixed order, so the corpus build is reproducible.

Formats handled (all read without third-party code):
- SWORD ``zText`` / ``zCom`` / ``zCom4`` modules (Bible text and commentaries): a block index
  (``*.?zs``: offset, compressed size, size as three little-endian u32), zlib-compressed blocks
  (``*.?zz``) and a per-verse index (``*.?zv``: block u32, offset u32, size u16 — or u32 for the
  ``*4`` drivers), whose text is OSIS XML.
- R lazy-load databases (``Rdata.rdx`` / ``Rdata.rdb``) holding character vectors, decoded with a
  small reader of R's XDR serialization (only the types such data use; no R code is evaluated).
- dictd dictionaries (``.index`` + dictzip ``.dict.dz``), plain text and HTML pages.
"""
from __future__ import annotations

import gzip
import html
import html.parser
import re
import struct
import unicodedata
import zlib
from pathlib import Path

Doc = tuple[str, str]


# ----------------------------------------------------------------------------- text clean-up

def tidy(text: str) -> str:
    """NFC-normalise, strip trailing spaces, collapse runs of blank lines and spaces."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.replace("\u00a0", " ")
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def unwrap(text: str) -> str:
    """Join hard-wrapped lines into one line per paragraph (paragraphs are blank-line separated)."""
    paragraphs = re.split(r"\n\s*\n", text)
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


_OSIS_BREAKS = [
    (re.compile(r"<note\b.*?</note>", re.S), " "),  # footnotes would interrupt the prose
    (re.compile(r"<title\b[^>]*>(.*?)</title>", re.S), r"\n\n\1\n\n"),
    (re.compile(r"<(?:div|lg|chapter|list|table)\b[^>]*>"), "\n\n"),
    (re.compile(r"<(?:l|lb|item|row)\b[^>]*>"), "\n"),
    (re.compile(r"<cell\b[^>]*>"), " "),
    (re.compile(r"<[^>]+>"), ""),
]


def osis_to_text(osis: str) -> str:
    """Plain text of an OSIS fragment: paragraphs/lines kept as newlines, markup and notes dropped."""
    for pattern, repl in _OSIS_BREAKS:
        osis = pattern.sub(repl, osis)
    return tidy(html.unescape(osis))


# ----------------------------------------------------------------------------- SWORD modules

def _sword_blocks(prefix: Path) -> list[bytes]:
    """Decompressed blocks of one testament (prefix like ``.../ot.bz``)."""
    index = Path(str(prefix) + "s").read_bytes()
    data = Path(str(prefix) + "z").read_bytes()
    blocks = []
    for i in range(0, len(index), 12):
        offset, size, usize = struct.unpack("<III", index[i:i + 12])
        raw = zlib.decompress(data[offset:offset + size])
        if len(raw) != usize:
            raise ValueError(f"{prefix}z: block {i // 12} has {len(raw)} bytes, index says {usize}")
        blocks.append(raw)
    return blocks


def _parse_verse_index(raw: bytes, width: int, blocks: list[bytes]):
    """Entries of a verse index read with one entry width, or None if any entry is impossible."""
    if len(raw) % width:
        return None
    fmt = "<III" if width == 12 else "<IIH"
    entries = []
    for i in range(0, len(raw), width):
        block, offset, size = struct.unpack(fmt, raw[i:i + width])
        if size == 0:
            continue
        if block >= len(blocks) or offset + size > len(blocks[block]):
            return None
        entries.append((block, offset, size))
    return entries


def _sword_entries(prefix: Path, blocks: list[bytes]) -> list[tuple[int, int, int]]:
    """(block, offset, size) per verse entry, in canonical order, linked duplicates dropped.

    zCom4/zText4 store a u32 size (12-byte entries), the older drivers a u16 (10 bytes). The
    .conf's ModDrv is not reliable (mhcc says zCom4 but has 10-byte entries), so take the width
    under which every entry points inside its block.
    """
    raw = Path(str(prefix) + "v").read_bytes()
    for width in (12, 10):
        entries = _parse_verse_index(raw, width, blocks)
        if entries is not None:
            return list(dict.fromkeys(entries))
    raise ValueError(f"{prefix}v: not a SWORD verse index with 10- or 12-byte entries")


def read_sword(module_dir: Path, name: str) -> list[Doc]:
    """One document per compression block (a book, or a chapter for chapter-blocked modules)."""
    docs: list[Doc] = []
    for testament in ("ot", "nt"):
        matches = sorted(module_dir.glob(f"{testament}.?zs"))
        if not matches or matches[0].stat().st_size == 0:
            continue
        prefix = Path(str(matches[0])[:-1])
        blocks = _sword_blocks(prefix)
        entries = _sword_entries(prefix, blocks)
        parts: dict[int, list[str]] = {}
        for block, offset, size in entries:
            fragment = blocks[block][offset:offset + size].decode("utf-8", errors="replace")
            parts.setdefault(block, []).append(fragment)
        for block in sorted(parts):
            osis = " ".join(parts[block])
            found = re.search(r'<chapter[^>]*osisID="([^"]+)"', osis) or re.search(
                r'osisID="([^"]+)"', osis)
            label = found.group(1) if found else f"block{block}"
            text = osis_to_text(osis)
            if text:
                docs.append((f"{name}/{testament}-{block:03d}-{label}", text))
    return docs


# ----------------------------------------------------------------------------- R serialization

class _RReader:
    """Minimal reader of R's XDR serialization ("X\\n" format 2/3) for plain data objects."""

    def __init__(self, data: bytes):
        self.data, self.pos, self.refs = data, 0, []

    def int(self) -> int:
        (value,) = struct.unpack(">i", self.data[self.pos:self.pos + 4])
        self.pos += 4
        return value

    def read_header(self) -> None:
        if self.data[:2] != b"X\n":
            raise ValueError("not an XDR R serialization stream")
        self.pos = 2
        version = self.int()
        self.int(), self.int()
        if version == 3:
            size = self.int()  # native encoding name (read first: += would use the old pos)
            self.pos += size

    def length(self) -> int:
        n = self.int()
        return (self.int() << 32) + self.int() if n == -1 else n

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in (254, 242, 241, 253, 252, 251, 247):  # NULL and singleton environments
            return None
        if kind == 255:  # reference to an earlier symbol/environment
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == 1:  # symbol
            value = self.item()
            self.refs.append(value)
            return value
        if kind in (2, 6):  # pairlist / language object: attr, tag, car, cdr
            if has_attr:
                self.item()  # attributes of a pairlist node: not needed
            tag = self.item() if has_tag else None
            pairs = {tag: self.item()}
            rest = self.item()
            if isinstance(rest, dict):
                pairs.update(rest)
            return pairs
        if kind == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            value = self.data[self.pos:self.pos + n].decode("utf-8", errors="replace")
            self.pos += n
            return value
        value = self._vector(kind)
        if has_attr:  # keep only the names of a named list, as a dict
            names = (self.item() or {}).get("names")
            if kind == 19 and names is not None:
                value = dict(zip(names, value))
        return value

    def _vector(self, kind: int):
        n = self.length()
        if kind in (10, 13):  # logical / integer
            value = list(struct.unpack(f">{n}i", self.data[self.pos:self.pos + 4 * n]))
            self.pos += 4 * n
            return value
        if kind == 14:  # double
            value = list(struct.unpack(f">{n}d", self.data[self.pos:self.pos + 8 * n]))
            self.pos += 8 * n
            return value
        if kind in (16, 19, 20):  # character vector, list, expression list
            return [self.item() for _ in range(n)]
        raise ValueError(f"unsupported R object type {kind} at byte {self.pos}")


def read_r_lazyload(prefix: Path) -> dict[str, object]:
    """Objects of an R lazy-load database ``prefix.rdx`` / ``prefix.rdb`` (zlib-compressed)."""
    reader = _RReader(gzip.decompress(Path(str(prefix) + ".rdx").read_bytes()))
    reader.read_header()
    variables = reader.item()["variables"]  # list(variables=, references=, compressed=)
    db = Path(str(prefix) + ".rdb").read_bytes()
    out = {}
    for name, (offset, size) in variables.items():
        chunk = db[offset:offset + size]
        obj = _RReader(zlib.decompress(chunk[4:]))  # 4-byte big-endian length, then zlib
        obj.read_header()
        out[name] = obj.item()
    return out


# ----------------------------------------------------------------------------- other formats

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dict_b64(value: str) -> int:
    number = 0
    for char in value:
        number = number * 64 + _B64.index(char)
    return number


def read_dictd(index_path: Path, dict_path: Path) -> list[tuple[str, str]]:
    """(headword, definition) pairs of a dictd dictionary, metadata entries dropped."""
    body = gzip.decompress(dict_path.read_bytes())
    entries = []
    for line in index_path.read_text(encoding="utf-8").splitlines():
        word, offset, size = line.split("\t")[:3]
        if word.startswith("00database"):
            continue
        start = _dict_b64(offset)
        entries.append((start, word, body[start:start + _dict_b64(size)].decode("utf-8")))
    return [(word, text) for _, word, text in sorted(entries)]


class _HTMLText(html.parser.HTMLParser):
    """Visible text of an HTML page; block elements become line breaks."""

    BLOCKS = {"p", "br", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data.replace("\n", " "))


def html_to_text(page: str) -> str:
    parser = _HTMLText()
    parser.feed(page)
    return tidy("".join(parser.parts))


def split_paragraphs(text: str, target_chars: int) -> list[str]:
    """Cut a long text at paragraph boundaries into pieces of about ``target_chars``."""
    pieces, current, size = [], [], 0
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= target_chars:
            pieces.append("\n\n".join(current))
            current, size = [], 0
    if current:
        pieces.append("\n\n".join(current))
    return pieces
