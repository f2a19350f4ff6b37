"""Every Python example in docs/*.md runs as written: each file's blocks run in order in one
namespace, after a short setup that makes what the prose assumes (a model's blocks, a
bundle on disk, some inputs). A block that is a docs/examples/*.py file word for word
stands alone, and runs as that file in a process of its own (tests/test_docs_examples.py),
as does the README's example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

DOCS = Path(__file__).parents[1] / "docs"
EXAMPLE_FILES = {p.read_text() for p in (DOCS / "examples").glob("*.py")}

SETUP = {
    "export.md": """
import torch
from torch import nn
torch.manual_seed(0)
block0, block1, block2 = (nn.Sequential(nn.Linear(n, 16), nn.ReLU()) for n in (8, 16, 16))
head0, head1, head2 = (nn.Linear(16, 3) for _ in range(3))
x, y = torch.rand(64, 8), torch.randint(0, 3, (64,))
""",
    "runtime.md": """
import numpy as np
import torch
import edgeexit
from edgeexit.examples import digits_resnet
edgeexit.export(digits_resnet(width=4).eval(), torch.rand(2, 1, 8, 8), "bundle")
x = np.random.rand(5, 1, 8, 8).astype(np.float32)
x_cal = np.random.rand(32, 1, 8, 8).astype(np.float32)
""",
    "generation.md": """
import numpy as np
import torch
from edgeexit.export.decoder_export import export_decoder
from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder
torch.manual_seed(0)
config = DecoderConfig(dim=16, heads=2, layers=2, hidden=32, exit_after=(1, 2), max_positions=96)
export_decoder(MultiExitDecoder(config).eval(), "bundle", tokenizer="bytes")
ids = np.array([100, 101, 102])
""",
    "serving.md": """
import numpy as np
import torch
import edgeexit
from edgeexit.examples import digits_resnet
from edgeexit.offload.make import split_bundle
edgeexit.export(digits_resnet(width=4).eval(), torch.rand(2, 1, 8, 8), "bundle")
split_bundle("bundle", 0)  # no server listens: the answers come back degraded, at once
x = np.random.rand(5, 1, 8, 8).astype(np.float32)
""",
    "deploying-to-raspberry-pi.md": """
import numpy as np
import torch
import edgeexit
from edgeexit.examples import digits_resnet
edgeexit.export(digits_resnet(width=4).eval(), torch.rand(2, 1, 8, 8), "bundle-rpi5")
x = np.random.rand(5, 1, 8, 8).astype(np.float32)
""",
}


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def snippets(path: Path) -> list[str]:
    """The blocks that run in the docs file's namespace: all but the example files."""
    return [block for block in python_blocks(path) if block not in EXAMPLE_FILES]


def test_every_docs_file_with_python_has_a_setup():
    with_python = {p.name for p in DOCS.glob("*.md") if snippets(p)}
    assert with_python == set(SETUP)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SETUP))
def test_the_docs_python_runs_as_written(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(SETUP[name], f"setup for {name}", "exec"), namespace)  # noqa: S102
    for k, block in enumerate(snippets(DOCS / name)):
        exec(compile(block, f"docs/{name} block {k}", "exec"), namespace)  # noqa: S102
