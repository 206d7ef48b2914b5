"""The examples run end to end on real Fashion-MNIST through a real loopback server, and docs/API.md
shows exactly the example that runs."""
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_prune_train_export_example_runs(repo_root, tmp_path):
    script = repo_root / "examples" / "prune_train_export.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pruned to sparsity 0.900" in out.stdout and "student test accuracy" in out.stdout
    assert (tmp_path / "student.onnx").is_file() and (tmp_path / "student.onnx.json").is_file()


def test_api_doc_shows_the_example_that_runs(repo_root):
    doc = (repo_root / "docs" / "API.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    example = (repo_root / "examples" / "prune_train_export.py").read_text()
    assert example in blocks, "docs/API.md must carry examples/prune_train_export.py verbatim"
