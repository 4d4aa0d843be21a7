"""Tables and figures of a study, regenerated from its raw results JSON alone (docs/study.md).

Rows: each pretrained variant, and for a RoPE pretraining each rule as `<variant>+<rule>`; values are the
mean over the seeds done so far (with half their range, where there are several; the seeds column says
how many). The headline comparison uses the
variants named `tapa`, `rope` and `nope`: TAPA's 1x gap in nats (mean NLL at the pretraining length,
TAPA minus the other), the first multiple at which TAPA's perplexity is below RoPE's, and a least-squares
line of the gap against log10 of the non-embedding parameter count, with its standard error.
"""
from __future__ import annotations

import math
from collections import defaultdict

from .grid import NONE


def _rows(runs: dict, section: str) -> dict:
    """{size: {row: {multiple: [values over seeds]}}} of ppl (section zero_shot or extended)."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in runs.values():
        info = r.get("info")
        if not info or section not in r:
            continue
        for rule, rec in r[section].items():
            ppl = rec["ppl"] if section == "zero_shot" else rec["eval"]["ppl"]
            row = info["variant"] if rule == NONE else f"{info['variant']}+{rule}"
            for m, v in ppl.items():
                out[info["size"]][row][m].append(v)
    return out


def _mean(xs):
    return sum(xs) / len(xs)


def _cell(xs) -> str:
    return f"{_mean(xs):.2f}" + (f" ± {(max(xs) - min(xs)) / 2:.2f}" if len(xs) > 1 else "")


def _sizes(runs: dict) -> list:
    """Sizes by non-embedding parameter count."""
    params = {r["info"]["size"]: r["info"]["non_embedding_params"] for r in runs.values() if "info" in r}
    return sorted(params, key=params.get), params


def table(runs: dict, section: str, title: str) -> str:
    rows, (sizes, params) = _rows(runs, section), _sizes(runs)
    out = []
    for size in (s for s in sizes if s in rows):
        cols = sorted({m for row in rows[size].values() for m in row}, key=int)
        lines = [f"**{title}, size {size} ({params[size]:,} non-embedding parameters)**", "",
                 "| model | seeds | " + " | ".join(f"{m}×" for m in cols) + " |", "|---" * (len(cols) + 2) + "|"]
        lines += [f"| {name} | {max(map(len, row.values()))} | "
                  + " | ".join(_cell(row[m]) if m in row else "–" for m in cols) + " |"
                  for name, row in sorted(rows[size].items())]
        out.append("\n".join(lines))
    return "\n\n".join(out)


def passkey_table(runs: dict) -> str:
    """Passkey accuracy after extension (mean over depths and seeds), by multiple."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in runs.values():
        for rule, rec in r.get("extended", {}).items():
            row = f"{r['info']['size']} {r['info']['variant']}" + ("" if rule == NONE else f"+{rule}")
            for m, by_depth in rec["eval"].get("passkey", {}).items():
                accs = [v for d, v in by_depth.items() if not d.endswith("_ci")]
                acc[row][m].append(_mean(accs))
    if not acc:
        return ""
    cols = sorted({m for row in acc.values() for m in row}, key=int)
    lines = ["**passkey accuracy after extension (mean over depths)**", "",
             "| size model | seeds | " + " | ".join(f"{m}×" for m in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    lines += [f"| {name} | {max(map(len, row.values()))} | "
              + " | ".join(_cell(row[m]) if m in row else "–" for m in cols) + " |"
              for name, row in sorted(acc.items())]
    return "\n".join(lines)


def headline(runs: dict) -> dict:
    """Per size: TAPA's 1x gap (nats) to RoPE and NoPE, the first multiple where TAPA beats RoPE, and the
    fit of the gap against log10(non-embedding parameters)."""
    sizes, params = _sizes(runs)
    nll: dict = defaultdict(lambda: defaultdict(list))
    for r in runs.values():
        if "zero_shot" in r:
            nll[r["info"]["size"]][r["info"]["variant"]].append(r["zero_shot"][NONE]["nll"]["1"])
    zs, ext = _rows(runs, "zero_shot"), _rows(runs, "extended")
    out = {"sizes": {}}
    for size in sizes:
        n = nll[size]
        row = {"non_embedding_params": params[size]}
        for other in ("rope", "nope"):
            if n.get("tapa") and n.get(other):
                row[f"gap_to_{other}_nats"] = round(_mean(n["tapa"]) - _mean(n[other]), 4)
        for name, rows in (("zero_shot", zs), ("extended", ext)):
            t, r = rows[size].get("tapa"), rows[size].get("rope")
            if t and r:
                below = [m for m in sorted(t, key=int) if m in r and _mean(t[m]) < _mean(r[m])]
                row[f"first_multiple_tapa_below_rope_{name}"] = int(below[0]) if below else None
        out["sizes"][size] = row
    for other in ("rope", "nope"):
        pts = [(math.log10(v["non_embedding_params"]), v[f"gap_to_{other}_nats"])
               for v in out["sizes"].values() if f"gap_to_{other}_nats" in v]
        out[f"trend_gap_to_{other}"] = fit_line(pts)
    return out


def fit_line(pts) -> dict | None:
    """Least squares y = a + b x with the standard error of b (None below 2 points; no error below 3)."""
    if len(pts) < 2:
        return None
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    b = sum((x - mx) * (y - my) for x, y in pts) / sxx
    a = my - b * mx
    resid = sum((y - a - b * x) ** 2 for x, y in pts)
    se = math.sqrt(resid / (n - 2) / sxx) if n > 2 else None
    return {"slope_nats_per_decade": round(b, 4), "intercept": round(a, 4),
            "slope_stderr": None if se is None else round(se, 4), "points": n}


def same_tokens(runs: dict) -> list:
    """Runs of one size and seed that should have read the same tokens: their final data state and
    next-batch fingerprint, and whether they agree."""
    groups: dict = defaultdict(list)
    for name, r in runs.items():
        if "pretrain" in r:
            p = r["pretrain"]
            groups[(r["info"]["size"], r["info"]["seed"])].append(
                (name, p["tokens"], json_key(p.get("data")), json_key(p.get("next_batch"))))
    out = []
    for (size, seed), members in sorted(groups.items()):
        agree = len({m[1:] for m in members}) == 1
        out.append({"size": size, "seed": seed, "runs": [m[0] for m in members], "tokens": members[0][1],
                    "same_tokens": agree})
    return out


def json_key(v) -> str:
    import json

    return json.dumps(v, sort_keys=True)
