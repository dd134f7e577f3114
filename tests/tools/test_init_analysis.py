"""What the paper's Eq. (prod) predicts, checked on tools/init_analysis.py's measurements."""
import math

import pytest

from tests.conftest import load_tool

SIZE = (32, 48)  # small, so 8 schemes x VGG19 in float64 take a few seconds


@pytest.fixture(scope="module")
def tool():
    return load_tool("init_analysis")


@pytest.fixture(scope="module")
def results(tool):
    return dict(tool.run((2, 2, 4, 4, 4), SIZE, num_masks=2, seed=0))


def test_all_schemes_of_the_paper_table_are_measured_on_16_layers(tool, results):
    assert list(results) == [label for label, _, _ in tool.SCHEMES]
    assert len(results) == 8
    for r in results.values():
        assert len(r["rms"]) == 16 and len(r["predicted_rms"]) == 16
        assert all(math.isfinite(v) and v > 0 for v in r["rms"] + [r["grad_norm"]])


def test_measured_growth_follows_eq_prod(results):
    # Over growths from 1e-13 to 1e23, the measured RMS(e_16) / RMS(e_1) stays within an order
    # of magnitude of Eq. (prod) (zero padding and max-pooling are not in the equation).
    for label, r in results.items():
        measured = math.log10(r["rms"][-1] / r["rms"][0])
        predicted = math.log10(r["predicted_rms"][-1] / r["predicted_rms"][0])
        assert abs(measured - predicted) < 1.0, (label, measured, predicted)


def test_he_keeps_the_scale_and_the_others_explode_or_vanish(results):
    he = results["He fan-in (paper)"]
    assert max(he["rms"]) / min(he["rms"]) < 5
    assert 1e-4 < he["grad_norm"] < 10
    assert results["N(0,1)"]["rms"][-1] / results["N(0,1)"]["rms"][0] > 1e20
    assert results["U[-1,1]"]["rms"][-1] / results["U[-1,1]"]["rms"][0] > 1e15
    assert results["N(0,0.01)"]["rms"][-1] / results["N(0,0.01)"]["rms"][0] < 1e-6
    assert results["U[-0.01,0.01]"]["rms"][-1] / results["U[-0.01,0.01]"]["rms"][0] < 1e-9
    # The input gradient goes with the square of the embedding scale.
    assert results["N(0,1)"]["grad_norm"] > 1e40 * he["grad_norm"]
    assert results["N(0,0.01)"]["grad_norm"] < 1e-15 * he["grad_norm"]
    xavier = results["Xavier-normal"]
    assert xavier["rms"][-1] / xavier["rms"][0] < 0.1  # fan-in + fan-out halves Var per layer


def test_weight_scale_homogeneity_closed_form(results):
    # Same seed, so N(0, s) weights are s times N(0, 1)'s: with zero biases, ReLU and max-pool,
    # e_16 scales by s^16 and the input gradient of the quadratic loss by s^32.
    big, small = results["N(0,1)"], results["N(0,0.1)"]
    assert small["rms"][-1] / big["rms"][-1] == pytest.approx(1e-16, rel=1e-9)
    assert small["grad_norm"] / big["grad_norm"] == pytest.approx(1e-32, rel=1e-9)


def test_table_lists_every_scheme(tool, results):
    text = tool.table(list(results.items()))
    for label in results:
        assert label in text
    assert "growth Eq. (prod)" in text
