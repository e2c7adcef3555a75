"""Alignment metrics against hand-computed cases (paper 3.1.1)."""

import math

import pytest

from core.metrics import (
    binary_correct,
    compute_metrics,
    exact_match,
    history_coverage,
    hit_ndcg_at_k,
    rank_ndcg_from_text,
    ranking_ndcg,
    split_titles,
    yes_no_decision,
)

L2 = math.log2
IDCG_RANK = 1000 / L2(2) + 100 / L2(3) + 10 / L2(4) + 1 / L2(5) + 0 / L2(6)


def test_hit_ndcg_exact_match_ignores_case_and_surrounding_whitespace():
    preds = ["Heat (1995)", "  toy story (1995) ", "Fargo (1996)"]
    hr, ndcg = hit_ndcg_at_k(preds, "Toy Story (1995)")
    assert hr == 1.0
    assert ndcg == pytest.approx(1 / L2(3))
    # inner differences are not forgiven: strict string match
    assert hit_ndcg_at_k(["Toy  Story (1995)"], "Toy Story (1995)") == (0.0, 0.0)


def test_hit_ndcg_duplicates_count_once_at_first_position():
    preds = ["Heat (1995)", "Heat (1995)", "Fargo (1996)", "fargo (1996)", "Up (2009)"]
    hr, ndcg = hit_ndcg_at_k(preds, "Fargo (1996)")
    assert hr == 1.0 and ndcg == pytest.approx(1 / L2(4))  # position 3, never summed
    assert hit_ndcg_at_k(["A", "A", "A"], "A") == (1.0, 1.0)


def test_hit_ndcg_fewer_than_k_empty_and_beyond_k():
    assert hit_ndcg_at_k(["A", "B"], "B") == (1.0, pytest.approx(1 / L2(3)))
    assert hit_ndcg_at_k([], "B") == (0.0, 0.0)
    assert hit_ndcg_at_k([""], "B") == (0.0, 0.0)
    assert hit_ndcg_at_k(["", ""], "") == (0.0, 0.0)  # empty target never matches
    assert hit_ndcg_at_k(["a", "b", "c", "d", "e", "T"], "t") == (0.0, 0.0)  # 6th is outside top-5


def test_ranking_ndcg_perfect_reversed_and_partial():
    truth = ["a", "b", "c", "d", "e"]
    assert ranking_ndcg(truth, truth) == pytest.approx(1.0)
    rev = truth[::-1]
    dcg = 1000 / L2(6) + 100 / L2(5) + 10 / L2(4) + 1 / L2(3) + 0 / L2(2)
    assert ranking_ndcg(rev, truth) == pytest.approx(dcg / IDCG_RANK)
    # swap of the first two
    dcg = 1000 / L2(3) + 100 / L2(2) + 10 / L2(4) + 1 / L2(5)
    assert ranking_ndcg(["b", "a", "c", "d", "e"], truth) == pytest.approx(dcg / IDCG_RANK)


def test_ranking_ndcg_unknown_titles_take_positions_and_duplicates_match_once():
    truth = ["a", "b", "c", "d", "e"]
    # unknown "x" at position 0 pushes "a" to position 1; "b" missing
    dcg = 1000 / L2(3) + 10 / L2(4)
    assert ranking_ndcg(["x", "a", "c"], truth) == pytest.approx(dcg / IDCG_RANK)
    # "a" twice: only its first occurrence earns; the second is just a wasted slot
    dcg = 1000 / L2(2) + 100 / L2(4)
    assert ranking_ndcg(["a", "a", "b"], truth) == pytest.approx(dcg / IDCG_RANK)
    assert ranking_ndcg([], truth) == 0.0
    assert ranking_ndcg(["y", "z"], truth) == 0.0
    # only the first k predictions count
    assert ranking_ndcg(["x", "x", "x", "x", "x", "a"], truth) == 0.0


def test_rank_ndcg_from_text_splits_on_semicolon_and_normalizes():
    answer = "Heat (1995); Fargo (1996); Up (2009); Alien (1979); Jaws (1975)"
    gen = " heat (1995);  FARGO (1996) ; Up (2009); Alien (1979); Jaws (1975); Extra (2000)"
    assert rank_ndcg_from_text(gen, answer) == pytest.approx(1.0)
    assert rank_ndcg_from_text("", answer) == 0.0
    # a title with a comma stays one title (the separator is "; ")
    assert split_titles("Shawshank, The (1994); Up (2009)") == ["Shawshank, The (1994)", "Up (2009)"]


def test_history_coverage_counts_distinct_true_titles():
    hist = ["Heat (1995)", "Fargo (1996)", "Up (2009)", "Alien (1979)"]
    assert history_coverage("heat (1995); Up (2009); Zzz (2000)", hist) == pytest.approx(0.5)
    # repeating a title does not inflate the ratio
    assert history_coverage("Heat (1995); Heat (1995); Heat (1995); heat (1995)", hist) == pytest.approx(0.25)
    assert history_coverage("", hist) == 0.0
    assert history_coverage("Heat (1995)", []) == 0.0


def test_exact_match_and_yes_no():
    assert exact_match("  toy story (1995)\n", "Toy Story (1995)") == 1.0
    assert exact_match("", "") == 0.0
    assert exact_match("Toy Story", "Toy Story (1995)") == 0.0
    assert yes_no_decision(-0.1, -2.3) == "Yes" and yes_no_decision(-2.0, -0.5) == "No"
    assert binary_correct("yes", "Yes") == 1.0 and binary_correct(None, "No") == 0.0


def test_compute_metrics_averages_rows():
    rows = [
        {"answer": "A", "generations": ["a", "b", "c", "d", "e"]},
        {"answer": "B", "generations": ["a", "b"]},
        {"answer": "C", "generations": []},
    ]
    m = compute_metrics("uid2next", rows)
    assert m["n"] == 3
    assert m["hr@5"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / L2(3)) / 3)
    m = compute_metrics("uidiid2binary", [{"answer": "Yes", "pred": "Yes"}, {"answer": "No", "pred": "Yes"}])
    assert m["acc"] == 0.5
    m = compute_metrics("uid2hist", [{"answer": "A; B", "generations": ["a; c"]}])
    assert m["hcr"] == 0.5
    m = compute_metrics("iid2title", [{"answer": "A", "generations": [" a "]}, {"answer": "B", "generations": [""]}])
    assert m["acc"] == 0.5
    m = compute_metrics("uid2next", rows, key="missing")
    assert m["hr@5"] == 0.0
    with pytest.raises(ValueError, match="unknown inference mode"):
        compute_metrics("bogus", rows)


def test_ci95_wilson_for_hits_and_student_t_for_graded_scores():
    import math

    from core.metrics import ci95, compute_metrics

    # Wilson, 20 hits of 100: the textbook interval is [0.1333, 0.2888]
    lo, hi = ci95([1.0] * 20 + [0.0] * 80)
    assert lo == pytest.approx(0.1333, abs=1e-4) and hi == pytest.approx(0.2888, abs=1e-4)
    # no hits at all still gives an upper bound above 0 (Wilson: 3.84 / (n + 3.84))
    lo, hi = ci95([0.0] * 50)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(3.8415 / 53.8415, abs=1e-4)
    # graded: mean 0.5, sd 0.5345 (n=8), t(0.975, 7) = 2.3646 -> half width 0.4469
    lo, hi = ci95([0, 1, 0.5, 0.5, 0, 1, 0.5, 0.5])
    assert (lo + hi) / 2 == pytest.approx(0.5) and hi - 0.5 == pytest.approx(2.3646 * 0.37796 / math.sqrt(8), abs=1e-3)
    assert all(math.isnan(v) for v in ci95([1.0]))
    # no hits / every hit: the bound at the mean is exactly 0 / 1
    assert ci95([0.0] * 50)[0] == 0.0 and ci95([1.0] * 50)[1] == 1.0
    # graded scores in [0, 1] near 0 (one NDCG of 0.5 and two of 0.2 in 24, mean 0.0375): the
    # t-interval's lower end (-0.010) is cut at 0, its upper end (0.085) kept
    lo, hi = ci95([0.5, 0.2, 0.2] + [0.0] * 21)
    sd = math.sqrt((0.5 ** 2 + 2 * 0.2 ** 2 - 24 * 0.0375 ** 2) / 23)
    assert lo == 0.0 and hi == pytest.approx(0.0375 + 2.0687 * sd / math.sqrt(24), abs=1e-3)
    # scores outside [0, 1] keep the plain t-interval
    lo, hi = ci95([-1.0, 1.0, -1.0, 1.0])
    assert lo < -1.0 and hi > 1.0
    rows = [{"answer": "Yes", "pred": "Yes"}] * 3 + [{"answer": "Yes", "pred": "No"}]
    m = compute_metrics("uidiid2binary", rows)
    assert m["acc"] == 0.75 and m["n"] == 4 and len(m["ci95"]["acc"]) == 2


def test_parse_ranked_titles_reads_the_list_shapes_of_chat_models():
    from core.metrics import parse_ranked_titles as parse

    want = ["Toy Story (1995)", "12 Monkeys (1995)", "2001: A Space Odyssey (1968)"]
    shapes = [
        "1. Toy Story (1995)\n2. 12 Monkeys (1995)\n3. 2001: A Space Odyssey (1968)",
        "Sure, here they are:\n\n1) **Toy Story (1995)**\n2) \"12 Monkeys (1995)\"\n3) 2001: A Space Odyssey (1968)\n",
        "- Toy Story (1995)\n* 12 Monkeys (1995)\n\u2022 2001: A Space Odyssey (1968)",
        "Toy Story (1995); 12 Monkeys (1995); 2001: A Space Odyssey (1968)",
        "1. Toy Story (1995) 2. 12 Monkeys (1995) 3. 2001: A Space Odyssey (1968)",
        "Toy Story (1995)\n12 Monkeys (1995)\n2001: A Space Odyssey (1968)",
    ]
    for text in shapes:
        assert parse(text) == want, text
    assert parse(shapes[0], k=2) == want[:2]
    assert parse("12 Monkeys (1995)") == ["12 Monkeys (1995)"]  # a leading number is part of the title
    assert parse("Mr. Holland's Opus (1995)") == ["Mr. Holland's Opus (1995)"]
    assert parse("") == [] and parse(None) == [] and parse("  \n ") == []
    # scored as a ranked list: the target third in the reply -> HR@5 1, NDCG@5 1/log2(4)
    hr, ndcg = hit_ndcg_at_k(parse(shapes[1]), "2001: a space odyssey (1968) ")
    assert hr == 1.0 and ndcg == pytest.approx(1 / L2(4))


def test_regression_metrics_ratio_and_intervals_on_a_hand_made_case():
    from core.metrics import regression_metrics

    y = [1, 2, 3, 4, 5, 6, 7, 8]
    pred = [2, 2, 3, 5, 5, 6, 8, 8]  # off by 1 on 3 of 8 pairs
    m = regression_metrics(y, pred, train_mean=4.5)
    # MSE 3/8; the mean predictor: (3.5^2 + 2.5^2 + 1.5^2 + 0.5^2) * 2 / 8 = 5.25
    assert m["mse"] == pytest.approx(0.375) and m["baseline_mse"] == pytest.approx(5.25)
    assert m["mse_ratio"] == pytest.approx(0.375 / 5.25)
    # Fisher z: tanh(atanh(r) -+ 1.96 / sqrt(n - 3))
    r = m["pearson"]
    half = 1.959964 / math.sqrt(len(y) - 3)
    assert m["pearson_ci95"] == pytest.approx([math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)], abs=1e-5)
    lo, hi = m["mse_ratio_ci95"]
    assert 0 <= lo <= m["mse_ratio"] <= hi < 1
    assert regression_metrics(y, pred, 4.5)["mse_ratio_ci95"] == [lo, hi]  # seeded: rebuilt tables agree
    # the same pattern over 8x the pairs: the same ratio, a narrower interval
    big = regression_metrics(y * 8, pred * 8, train_mean=4.5)
    assert big["mse_ratio"] == pytest.approx(m["mse_ratio"])
    assert big["mse_ratio_ci95"][1] - big["mse_ratio_ci95"][0] < (hi - lo) / 2
    # the mean predictor itself is exactly 1x on every resample; a perfect one 0x
    assert regression_metrics(y, [4.5] * 8, 4.5)["mse_ratio_ci95"] == pytest.approx([1.0, 1.0])
    assert regression_metrics(y, y, 4.5)["mse_ratio_ci95"] == pytest.approx([0.0, 0.0])
    # too few pairs for an interval: the point values stay, the intervals are nan
    few = regression_metrics([1, 2, 3], [1, 2, 4], 2.0)
    assert few["mse"] == pytest.approx(1 / 3) and all(math.isnan(v) for v in few["mse_ratio_ci95"] + few["pearson_ci95"])


def test_regression_metrics_with_a_mean_per_pair():
    """Cross-fitting: each pair's text-blind predictor is the mean of its own fold's training part."""
    from core.metrics import regression_metrics

    y = [1, 2, 3, 4, 5, 6, 7, 8]
    pred = [2, 2, 3, 5, 5, 6, 8, 8]
    means = [4.0] * 4 + [5.0] * 4
    m = regression_metrics(y, pred, means)
    # (3^2 + 2^2 + 1^2 + 0^2 + 0^2 + 1^2 + 2^2 + 3^2) / 8 = 28 / 8
    assert m["baseline_mse"] == pytest.approx(3.5) and m["mse_ratio"] == pytest.approx(0.375 / 3.5)
    lo, hi = m["mse_ratio_ci95"]
    assert 0 <= lo <= m["mse_ratio"] <= hi < 1
    # one value repeated is the scalar case, interval included (the same resamples)
    assert regression_metrics(y, pred, [4.5] * 8) == regression_metrics(y, pred, 4.5)
    # each pair's own mean, resampled with it: predicting exactly those means is 1x on every resample
    assert regression_metrics(y, means, means)["mse_ratio_ci95"] == pytest.approx([1.0, 1.0])
