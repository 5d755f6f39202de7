"""import-order beyond its examples: what actually gets imported, and in which order.

On this CPU host torch_npu is not installed: the guard must be a no-op. Under npu-sim (porter's
CPU-backed simulation of the npu device, whose `import torch_npu` is a stand-in) the guard must
make torch.npu exist, and transformers must be in sys.modules before torch_npu.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from porter.npu.sim import sim_env
from porter.transforms import Context, all_transforms

T = all_transforms()["import-order"]


def apply(text: str, **params):
    return T(params).apply(text, Context(path="m.py"))


USES_NPU = '''\
import torch

from transformers.utils import logging


def npu_ready():
    return hasattr(torch, "npu") and torch.npu.is_available()
'''


def test_guard_is_a_no_op_without_torch_npu():
    assert importlib.util.find_spec("torch_npu") is None  # this host: CPU, no torch_npu
    out = apply(USES_NPU)
    assert "    import torch_npu" in out.text
    namespace: dict = {"__name__": "m"}
    exec(compile(out.text, "m.py", "exec"), namespace)
    assert namespace["npu_ready"]() is False
    assert "torch_npu" not in sys.modules


def test_transfer_to_npu_without_the_package_is_a_finding():
    text = "import torch\nimport torch_npu\nfrom torch_npu.contrib import transfer_to_npu\n"
    out = apply(text)
    assert out.text == text
    assert [f.line for f in out.findings] == [3] and "entry point" in out.findings[0].reason
    assert apply("import torch\nimport torch_npu\n").findings == ()  # plain torch_npu: nothing to say


def test_bad_package_name_is_rejected():
    with pytest.raises(ValueError, match="not an importable module name"):
        T({"first": ["transformers; rm -rf /"]})


CHILD = r'''
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("patched", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
order = list(sys.modules)
print(json.dumps({
    "npu_ready": module.npu_ready(),
    "transformers_first": order.index("transformers") < order.index("torch_npu"),
    "simulated": getattr(sys.modules["torch_npu"], "__porter_simulated__", False),
}))
'''


@pytest.mark.slow
def test_under_npu_sim_transformers_loads_first_and_torch_npu_is_imported(tmp_path):
    # torch_npu imported before transformers, as seed 002's script did, plus a torch.npu user
    upstream = "import torch\nimport torch_npu\nfrom torch_npu.contrib import transfer_to_npu\n" \
               "from transformers.utils import logging\n\n\n" \
               "def npu_ready():\n    return torch.npu.is_available()\n"
    out = apply(upstream)
    assert out.text.index("import transformers") < out.text.index("import torch_npu")
    guarded = apply(USES_NPU)
    results = []
    for i, text in enumerate((out.text, guarded.text)):
        path = tmp_path / f"m{i}.py"
        path.write_text(text)
        (tmp_path / "child.py").write_text(CHILD)
        proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(path)],
                              env=sim_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert results == [{"npu_ready": True, "transformers_first": True, "simulated": True}] * 2
