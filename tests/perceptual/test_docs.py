"""The ```python snippets of docs/perceptual_loss.md run as written."""
import re

import pytest

from tests.conftest import REPO

DOC = REPO / "docs" / "perceptual_loss.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_doc_has_the_three_kinds_of_dense_output():
    assert len(SNIPPETS) == 3
    text = "\n".join(SNIPPETS)
    assert "softmax" in text and "depth" in text and "mask_logits.sigmoid()" in text


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs(index, capsys):
    exec(compile(SNIPPETS[index], f"{DOC.name}[snippet {index}]", "exec"), {})
    assert capsys.readouterr().out.strip()
