"""tools/ablate.py --sweep facade and tools/ablate_stats.py: the run plan (one teacher run
first, test scored after training), paired statistics against scipy-free closed forms, and the
docs section it fills (no training)."""
import json
import math
import os

import pytest

from tests.conftest import load_tool

ablate = load_tool("ablate")
stats = load_tool("ablate_stats")


def test_facade_plan_trains_one_teacher_first_and_scores_test_after_training(tmp_path):
    args = ablate.parse_args(["--sweep", "facade", "--seeds", "0", "1", "--max-iter", "12",
                              "--output-dir", str(tmp_path)])
    runs = ablate.plan(args)
    assert [(v.name, s) for v, s, _ in runs] == [
        ("teacher", 0), ("baseline", 0), ("baseline", 1), ("+loss (gt)", 0), ("+loss (gt)", 1),
        ("+loss (teacher)", 0), ("+loss (teacher)", 1),
    ]
    teacher = dict(zip(runs[0][2][2::2], runs[0][2][3::2]))
    assert teacher["SOLVER.MAX_ITER"] == "24"  # the baseline trained twice as long
    student = dict(zip(runs[-1][2][2::2], runs[-1][2][3::2]))
    assert student["MODEL.TEACHER.WEIGHTS"] == os.path.join(teacher["OUTPUT_DIR"], "model_final.pth")
    assert student["SOLVER.MAX_ITER"] == "12" and student["SEED"] == "1"
    # Training selects on valid (the config's DATASETS.TEST); test is scored once, afterwards.
    test = ablate.test_command(runs[1][2], ablate.FACADE_TEST)
    assert test[:3] == ["--config-file", ablate.SWEEPS["facade"][0].config_file, "--eval-only"]
    pairs = dict(zip(test[3::2], test[4::2]))
    assert pairs["DATASETS.TEST"] == f"('{ablate.FACADE_TEST}',)"
    assert pairs["MODEL.WEIGHTS"] == os.path.join(str(tmp_path), "baseline", "seed_0", "model_final.pth")
    assert test[-1] == os.path.join(str(tmp_path), "baseline", "seed_0", "test")
    from condinst_percep.config import get_cfg

    for path in [v.config_file for v in ablate.SWEEPS["facade"]] + [ablate.TEACHERS["facade"].config_file]:
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(ablate.REPO, path))
        assert cfg.MODEL.FCOS.NUM_CLASSES == 10 and "valid" in cfg.DATASETS.TEST[0]


def test_paired_difference_matches_closed_form():
    base = {0: 30.0, 1: 32.0, 2: 31.0, 3: 29.0, 4: 33.0}
    variant = {0: 31.0, 1: 34.0, 2: 31.5, 3: 30.0, 4: 35.5, 9: 99.0}  # seed 9 has no pair
    d = stats.paired_difference(variant, base)
    diffs = [1.0, 2.0, 0.5, 1.0, 2.5]
    mean = sum(diffs) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 4)
    assert (d.n, d.mean) == (5, pytest.approx(mean)) and d.se == pytest.approx(sd / math.sqrt(5))
    # Student's t with 4 degrees of freedom has a closed-form CDF: with x = t / sqrt(t^2 + 4),
    # the two-sided tail is 1 - x (3 - x^2) / 2.
    t = mean / (sd / math.sqrt(5))
    x = t / math.sqrt(t * t + 4)
    p_closed = 1 - x * (3 - x * x) / 2
    assert d.p == pytest.approx(p_closed, rel=1e-9)
    same = stats.paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert same.mean == 0 and same.p == 1.0
    assert math.isnan(stats.paired_difference({0: 1.0}, {0: 0.5}).se)


def _result(ap, window):
    out = {f"{t}/{m}": ap for t in ("bbox", "segm") for m in stats.COCO_METRICS}
    out.update({f"{t}/AP-window": window for t in ("bbox", "segm")})
    return out


def test_table_and_docs_section(tmp_path):
    results = {
        "baseline": {0: _result(10.0, 20.0), 1: _result(12.0, 22.0)},
        "+loss (gt)": {0: _result(11.0, 21.0), 1: _result(14.0, 25.0)},
    }
    table = stats.paired_table(results, "baseline", ("window",))
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == [
        "metric", "baseline (n=2)", "+loss (gt) (n=2)", "Δ +loss (gt) − baseline"]
    box_ap = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert box_ap[:3] == ["box AP", "11.00 ± 1.41", "12.50 ± 2.12"]
    assert box_ap[3].startswith("+1.50 ± 0.50 (p=")
    assert any(line.startswith("| mask AP window ") and "+2.00 ± 1.00" in line for line in lines)
    assert len(lines) == 2 + 12 + 2 * 1
    docs = tmp_path / "results.md"
    begin, end = ablate.docs_markers("facade")
    docs.write_text(f"# x\n{begin}\nold\n{end}\nafter\n")
    args = ablate.parse_args(["--sweep", "facade", "--seeds", "0", "1"])
    ablate.write_docs(str(docs), table, args)
    text = docs.read_text()
    assert "old" not in text and table in text and text.endswith(f"{end}\nafter\n")
    (tmp_path / "plain.md").write_text("no section")
    with pytest.raises(ValueError, match="has no '<!-- ablate --sweep facade: begin -->'"):
        ablate.write_docs(str(tmp_path / "plain.md"), table, args)


def test_main_reads_test_scores_not_the_training_evaluation(tmp_path, capsys):
    args = ["--sweep", "facade", "--seeds", "0", "1", "--output-dir", str(tmp_path)]
    for variant, seed, cmd in ablate.plan(ablate.parse_args(args)):
        folder = ablate.run_dir(str(tmp_path), variant, seed)
        for sub, ap in (("", 99.0), ("test", 10.0 + seed + (variant.name != "baseline"))):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
            with open(os.path.join(folder, sub, ablate.RESULT_FILE), "w") as f:
                json.dump({"bbox": {"AP": ap}, "segm": {"AP": ap}}, f)
    rows = ablate.main(args)
    assert [r[:3] for r in rows] == [["baseline", 2, 10.5], ["+loss (gt)", 2, 11.5],
                                     ["+loss (teacher)", 2, 11.5]]
    out = capsys.readouterr().out
    assert out.count("[reused]") == 1 + 2 * 3 * 2 and "+1.00 ± 0.00 (p=0)" in out
