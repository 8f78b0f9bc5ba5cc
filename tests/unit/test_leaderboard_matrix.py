"""The matrix view (leaderboard/matrix.py): strategies grouped by survey family × dataset · backbone,
Δ vs baseline with its spread and mark, incompatible cells as footnoted dashes, not rows."""

from __future__ import annotations

import pandas as pd

from dkbench.leaderboard import matrix
from dkbench.strategies.base import FAMILIES

SUITE = {"name": "s", "datasets": ["d1", "d2"], "backbones": ["b"], "seeds": [0, 1, 2],
         "strategies": ["baseline", "anatomical_postprocess", "curriculum", "multiview", "transfer_natural"]}


def _agg(rows):
    cols = ["dataset", "backbone", "strategy", "metric", "mean", "std", "n_done", "n_incompatible", "reasons"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


def _deltas(rows):
    cols = ["dataset", "backbone", "strategy", "metric", "n_pairs", "delta", "delta_std", "significant"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


AGG = _agg([
    ("d1", "b", "baseline", "test/dice", 0.70, 0.01, 3, 0, ""), ("d2", "b", "baseline", "test/dice", 0.60, 0.02, 3, 0, ""),
    ("d1", "b", "curriculum", "test/dice", 0.75, 0.01, 3, 0, ""), ("d2", "b", "curriculum", "test/dice", 0.58, 0.02, 2, 0, ""),
    ("d1", "b", "anatomical_postprocess", "test/dice", 0.69, 0.01, 3, 0, ""),
    ("d2", "b", "anatomical_postprocess", "test/dice", float("nan"), float("nan"), 0, 3, "needs masks"),
    ("d1", "b", "multiview", "test/dice", float("nan"), float("nan"), 0, 3, "needs views"),
    ("d2", "b", "multiview", "test/dice", float("nan"), float("nan"), 0, 3, "needs views"),
])
DELTAS = _deltas([
    ("d1", "b", "curriculum", "test/dice", 3, 0.05, 0.01, True), ("d2", "b", "curriculum", "test/dice", 2, -0.02, 0.01, True),
    ("d1", "b", "anatomical_postprocess", "test/dice", 3, -0.01, 0.004, False),
])


def build():
    return matrix.build_matrix(AGG, DELTAS, SUITE, "test/dice", "baseline")


def test_rows_follow_the_survey_families_and_say_what_knowledge_they_use():
    m = build()
    assert [r.strategy for r in m.rows] == ["transfer_natural", "curriculum", "anatomical_postprocess"]
    assert [r.family for r in m.rows] == ["A", "B", "G"] and all(r.family in FAMILIES for r in m.rows)
    assert "(training)" in m.rows[1].knowledge and "test" in m.rows[2].knowledge
    assert [c.text for c in m.rows[0].cells] == ["not run", "not run"]  # no folder at all: said, not hidden
    assert m.baseline == ["0.700 ± 0.010 (n=3)", "0.600 ± 0.020 (n=3)"]


def test_a_mark_needs_three_paired_seeds_and_a_significant_test():
    curriculum = build().rows[1].cells
    assert curriculum[0].text == "+0.050 ± 0.010* (n=3)" and curriculum[0].kind == "better*"
    assert "*" not in curriculum[1].text and curriculum[1].kind == "worse"  # flagged, but only 2 pairs


def test_incompatible_cells_are_footnoted_dashes_and_a_strategy_that_applies_nowhere_leaves_the_rows():
    m = build()
    post = m.rows[2].cells
    assert post[1].text == "—" and m.notes[post[1].note - 1] == "needs masks"
    assert "multiview" in m.inapplicable and m.inapplicable["multiview"] == "needs views"
    assert all(r.strategy != "multiview" for r in m.rows)
    assert post[0].kind == "worse"
    md = matrix.render_markdown(m, SUITE, "baseline", 0.05)
    assert "**B · doctors' training pattern**" in md and "— [1]" in md and "1. needs masks" in md


def test_latex_and_html_carry_the_same_cells_caption_and_reasons():
    m = build()
    tex = matrix.render_latex(m, SUITE, "baseline", 0.05)
    assert r"\toprule" in tex and r"\multicolumn{4}{l}{\emph{G · anatomical priors}}" in tex
    assert "Holm-adjusted" in tex and r"+0.050 $\pm$ 0.010* (n=3)" in tex and "$^{1}$" in tex
    page = matrix.render_html(m, SUITE, "baseline", 0.05)
    assert "title='needs masks'" in page and "rgba(26,127,55" in page and "rgba(207,34,46" in page


def test_every_strategy_config_declares_its_family_and_the_knowledge_it_uses():
    from dkbench.config import group_files

    for name in group_files("strategy"):
        family, knowledge = matrix.strategy_facts(name)
        assert family in FAMILIES, name
        assert knowledge and ("training" in knowledge or "test" in knowledge or name == "baseline"), name
    assert "predicted" in matrix.strategy_facts("roi_input_predicted")[1]
    assert "**test**" in matrix.strategy_facts("roi_input")[1]
    assert "**" not in matrix.strategy_facts("handcrafted_feature_nomask")[1]


def test_html_cells_carry_delta_and_absolute_texts_sort_keys_and_links():
    m = build()
    curriculum = m.rows[1].cells
    assert curriculum[0].abs_text == "0.750 ± 0.010 (n=3)" and curriculum[0].abs_key == 0.75
    links = lambda d, b, s: (f"../runs/s/{d}/{b}__{s}/", f"../runs/s/{d}/{b}__{s}/seed_0/config.yaml")  # noqa: E731
    page = matrix.render_html(m, SUITE, "baseline", 0.05, links)
    assert ("data-gain='0.05' data-abs-key='0.75' data-delta-text='+0.050 ± 0.010* (n=3)' "
            "data-abs-text='0.750 ± 0.010 (n=3)'") in page
    assert "<a class='runs' href='../runs/s/d1/b__curriculum/'" in page
    assert "href='../runs/s/d1/b__curriculum/seed_0/config.yaml'" in page
    dash = page.split("title='needs masks'")[0].rsplit("<td", 1)[1]
    assert "data-gain" not in dash and "incompatible" in dash  # neutral: no sort key, no colour, no link


def test_the_latex_caption_states_seeds_test_and_correction():
    tex = matrix.render_latex(build(), SUITE, "baseline", 0.05)
    caption = tex.split(r"\caption{")[1].split(r"\label")[0]
    for words in ("over n seeds (3 per cell planned)", "paired t-test", "Holm-adjusted", r"p \textless{} 0.05",
                  "never with fewer than 3 paired seeds"):
        assert words in caption, words
