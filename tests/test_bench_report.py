"""Benchmark figures computed from hand-made records: speedup, tokens per forward, exactness."""

from __future__ import annotations

import json
import random

import pytest

from paradec.bench import report
from paradec.bench.runner import resolve_methods, default_methods
from paradec.errors import ParadecError


def rec(method, prompt, seconds, ids, forwards, accepted, category="qa", turn=0, repeat=0, kind="paradec"):
    return {"prompt_id": prompt, "category": category, "turn": turn, "repeat": repeat, "method": method, "kind": kind,
            "prompt_tokens": 10, "seconds": seconds, "new_tokens": len(ids), "forward_passes": forwards,
            "accepted_tokens": accepted, "token_ids": ids}


A, B = [1, 2, 3, 4, 5, 6], [7, 8, 9, 10]


def records():
    return [
        rec("plain", "qa-1", 2.0, A, 5, 0), rec("ngram", "qa-1", 1.0, A, 2, 3),
        rec("hf-generate", "qa-1", 2.2, A, 5, 0, kind="peer"),
        rec("plain", "code-1", 4.0, B, 3, 0, "code"), rec("ngram", "code-1", 1.0, [7, 8, 0, 10], 1, 2, "code"),
        rec("hf-generate", "code-1", 4.4, B, 3, 0, "code", kind="peer"),
    ]


def test_first_divergence():
    assert report.first_divergence(A, A) is None
    assert report.first_divergence(A, [1, 2, 0, 4, 5, 6]) == 2
    assert report.first_divergence(A, A[:4]) == 4  # a shorter output differs where it ends
    assert report.first_divergence([], []) is None


def test_speedup_is_total_plain_time_over_total_method_time():
    s = report.summarize(records(), ["plain", "ngram", "hf-generate"])
    assert s["ngram"]["overall"]["speedup"] == pytest.approx((2.0 + 4.0) / (1.0 + 1.0))  # not the mean of 2x and 4x
    assert s["ngram"]["qa"]["speedup"] == pytest.approx(2.0)
    assert s["ngram"]["code"]["speedup"] == pytest.approx(4.0)
    assert s["plain"]["overall"]["speedup"] == pytest.approx(1.0)
    assert s["hf-generate"]["overall"]["speedup"] == pytest.approx(6.0 / 6.6)
    assert s["ngram"]["overall"]["tokens_per_second"] == pytest.approx(10 / 2.0)


def test_tokens_per_forward_counts_accepted_drafts_plus_the_bonus():
    s = report.summarize(records(), ["plain", "ngram"])
    assert s["ngram"]["overall"]["tokens_per_forward"] == pytest.approx((3 + 2 + 2 + 1) / (2 + 1))
    assert s["plain"]["overall"]["tokens_per_forward"] == pytest.approx(1.0)
    assert s["ngram"]["overall"]["forward_passes"] == 3


def test_exactness_reports_the_mismatch_and_its_first_position():
    s = report.summarize(records(), ["plain", "ngram", "hf-generate"])
    e = s["ngram"]["overall"]["exact_plain"]
    assert (e["checked"], e["mismatches"], e["first_divergence"]) == (2, 1, [["code-1", 0, 0, 2]])
    assert s["ngram"]["qa"]["exact_plain"]["mismatches"] == 0
    assert s["ngram"]["overall"]["exact_hf"]["mismatches"] == 1
    assert s["plain"]["overall"]["exact_hf"] == {"checked": 2, "mismatches": 0, "first_divergence": []}
    header, rows = report.table_rows(s, ["qa", "code"])
    ngram = dict(zip(header, rows[1]))
    assert ngram["exact vs plain"] == "1/2 (first diff: code-1#1@2)"


def test_repeats_take_medians_and_bound_the_interval():
    rs = []
    for rep, (tp, tm) in enumerate([(2.0, 1.0), (3.0, 1.0), (2.0, 2.0)]):
        rs += [rec("plain", "qa-1", tp, A, 5, 0, repeat=rep), rec("ngram", "qa-1", tm, A, 2, 3, repeat=rep)]
    o = report.summarize(rs, ["plain", "ngram"])["ngram"]["overall"]
    assert o["speedup"] == pytest.approx(2.0 / 1.0)  # median plain 2.0 / median ngram 1.0
    # one prompt: only the repeats are resampled; a median of 3 resampled pairs lies within their range
    assert 1.0 <= o["speedup_low"] < o["speedup"] < o["speedup_high"] <= 3.0
    assert o["exact_plain"]["checked"] == 3


def timed(method: str, factor: float, noise: float, prompts: int = 12, repeats: int = 3, seed: int = 0) -> list[dict]:
    """Synthetic records: plain and ``method`` on prompts of different lengths (a few with two
    turns), the method ``factor`` times faster, each time off by a random factor of ±``noise``."""
    rng = random.Random(seed)
    rs = []
    for p in range(prompts):
        category = ["qa", "code", "multi_turn"][p % 3]
        for turn in range(2 if category == "multi_turn" else 1):
            base = rng.uniform(2.0, 8.0)
            for rep in range(repeats):
                jitter = lambda: rng.uniform(1 - noise, 1 + noise)  # noqa: E731
                rs.append(rec("plain", f"{category}-{p}", base * jitter(), A, 5, 0, category, turn, rep))
                rs.append(rec(method, f"{category}-{p}", base / factor * jitter(), A, 3, 2, category, turn, rep))
    return rs


def test_an_obviously_faster_method_has_an_interval_above_one():
    s = report.summarize(timed("fast", 1.5, 0.15), ["plain", "fast"])["fast"]
    for cell in s.values():
        assert 1.0 < cell["speedup_low"] < 1.5 < cell["speedup_high"]
        assert not report.similar_to_plain(cell)
    assert "≈" not in "".join(report.table_rows({"fast": s}, ["qa", "code", "multi_turn"])[1][0])


def test_a_method_as_fast_as_plain_has_an_interval_around_one_and_is_marked():
    s = report.summarize(timed("same", 1.0, 0.15), ["plain", "same"])
    for cell in s["same"].values():
        assert cell["speedup_low"] < 1.0 < cell["speedup_high"] and report.similar_to_plain(cell)
    header, rows = report.table_rows(s, ["qa", "code", "multi_turn"])
    same = dict(zip(header, rows[1]))
    assert same["overall"].startswith("≈") and "(" in same["overall"]
    assert dict(zip(header, rows[0]))["overall"] == "1.00×"  # plain itself: no interval, no mark


def test_the_interval_is_seeded_and_narrows_with_more_prompts():
    few, many = (report.summarize(timed("fast", 1.2, 0.3, prompts=n), ["plain", "fast"])["fast"]["overall"] for n in (6, 60))
    again = report.summarize(timed("fast", 1.2, 0.3, prompts=6), ["plain", "fast"])["fast"]["overall"]
    assert (few["speedup_low"], few["speedup_high"]) == (again["speedup_low"], again["speedup_high"])
    assert many["speedup_high"] - many["speedup_low"] < few["speedup_high"] - few["speedup_low"]


def test_no_interval_from_one_prompt_and_one_repeat():
    o = report.summarize(records()[:2], ["plain", "ngram"])["ngram"]["overall"]
    assert o["speedup_low"] is None and o["speedup_high"] is None and not report.similar_to_plain(o)
    assert report.table_rows({"ngram": {"overall": o}}, [])[1][0][1] == "2.00×"


def test_failed_turns_are_counted_and_left_out_of_the_ratio():
    rs = records()[:2] + [{"prompt_id": "code-1", "category": "code", "turn": 0, "repeat": 0, "method": "ngram",
                           "kind": "paradec", "error": "RuntimeError: boom"}] + [records()[3]]
    o = report.summarize(rs, ["plain", "ngram"])["ngram"]["overall"]
    assert o["errors"] == 1 and o["turns"] == 1 and o["speedup"] == pytest.approx(2.0)


def test_files_are_written_and_agree(tmp_path):
    meta = {"model": "m", "dtype": "float32", "command": "paradec bench", "load_before": [0.1, 0.1, 0.1],
            "warnings": ["busy"]}
    summary, paths = report.write_all(tmp_path, records(), ["plain", "ngram", "hf-generate"], ["qa", "code"], meta,
                                      {"lade": "not installed"})
    saved = json.loads(paths["json"].read_text())
    assert saved["summary"] == json.loads(json.dumps(summary)) and len(saved["records"]) == 6
    assert report.summarize(saved["records"], ["plain", "ngram"])["ngram"]["overall"]["speedup"] == pytest.approx(3.0)
    md = paths["markdown"].read_text()
    assert "| ngram | 2.00× | 4.00× | 3.00× (2.00–4.00) |" in md and "`lade`: unavailable: not installed" in md and "busy" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_method_lists_resolve_at_run_time():
    names = default_methods()
    assert names[0] == "plain"
    assert "auto" in names and "draft" not in names  # auto takes a draft model only when given one
    assert "draft" in resolve_methods("default", draft="some-model")
    assert resolve_methods(None) == names
    assert resolve_methods("ngram") == ["plain", "ngram"]  # the baseline is always added, first
    assert resolve_methods("default,plain") == names
    with pytest.raises(ParadecError, match="unknown method"):
        resolve_methods("plain,nope")


@pytest.mark.parametrize("width", [80, 120, 160])
def test_the_terminal_table_has_one_line_per_method_at_common_widths(width):
    """Review II item 12: the exactness columns (with first differences) wrapped every row into five
    lines at 80-160 columns. The terminal shows speedup, interval, tok/s, tokens per forward and
    exact n/N, one line a method; first differences stay in report.md."""
    from rich.console import Console

    names = ["plain", "ngram", "hf-prompt-lookup", "recycling", "lookahead", "auto", "jacobi", "hf-generate"]
    rs = [r for i, m in enumerate(names[1:]) for r in timed(m, 1.0 + 0.1 * i, 0.1, prompts=6, repeats=2)
          if r["method"] == m or i == 0]  # plain's records once
    for r in rs:  # two methods part from plain on every first repeat: long first-difference lists
        if r["method"] in ("jacobi", "lookahead") and r["repeat"] == 0:
            r["token_ids"] = [99] + r["token_ids"][1:]
    summary = report.summarize(rs, names)
    console = Console(width=width, record=True, color_system=None)
    console.print(report.rich_table(summary, "smollm2-135m bfloat16: speedup over plain decoding, same prompts, same run"))
    text = console.export_text()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split() and line.split()[0] in names}
    assert list(rows) == names  # one line per method, in order
    assert len(rows["jacobi"]) == 7 and rows["jacobi"][1].endswith("×") and rows["jacobi"][-2:] == ["8/16", "8/16"]
    assert rows["plain"][1:3] == ["1.00×", "–"]
    assert "@" not in text and "report.md" in text  # no prompt#turn@position
    assert "first diff" in report.markdown(summary, ["qa", "code", "multi_turn"], {"model": "m"}, {})  # kept there
