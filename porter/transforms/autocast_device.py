"""autocast-device: CUDA autocast regions follow the device in use instead of switching off on npu."""

from __future__ import annotations

import re

import libcst as cst
from porter.analysis import cuda_only_gate, has_cuda_only_paths
from pydantic import BaseModel, ConfigDict, Field

from porter.transforms._base import Example, PythonTransform, Rewriter, Safety, walk
from porter.transforms._npu_runtime import (
    CUDA_OR_NPU,
    CUDA_OR_NPU_SOURCE,
    NPU_AVAILABLE,
    NPU_AVAILABLE_SOURCE,
    cuda_or_npu_call,
    is_ported_choice,
    need_cuda_or_npu,
    need_npu_available,
    npu_twin,
    ported,
    prefer_npu,
    runtime_device,
    string_value,
)

AUTOCAST = {"torch.autocast", "torch.amp.autocast", "torch.amp.autocast_mode.autocast"}
CUDA_AMP_AUTOCAST = {"torch.cuda.amp.autocast", "torch.cuda.amp.autocast_mode.autocast"}
# Autocast state queries that take a device type (first argument or device_type=).
STATE = {"torch.is_autocast_enabled", "torch.get_autocast_dtype", "torch.set_autocast_enabled",
         "torch.set_autocast_dtype"}
# CUDA's autocast state when called without a device type -> the device-type form for npu.
_LEGACY_STATE = {"torch.is_autocast_enabled": "is_autocast_enabled", "torch.get_autocast_gpu_dtype": "get_autocast_dtype"}
TRAINING = {
    "torch.cuda.amp.GradScaler": "GradScaler",
    "torch.amp.GradScaler": "GradScaler",
    "torch.cuda.amp.custom_fwd": "custom_fwd",
    "torch.cuda.amp.custom_bwd": "custom_bwd",
}


def _is_cuda_type(node: cst.CSTNode) -> bool:
    return string_value(node) == "cuda"



R_CUDA_ONLY = "harmless: only reachable on CUDA, behind the gate at line {line} that stays CUDA-only; left alone"


def _cuda_only_gate(rewriter: Rewriter, node: cst.CSTNode) -> int | None:
    """The line of the gate the analysis keeps CUDA-only in front of `node` (a class only flash
    attention uses, code after `import flash_attn`), or None."""
    if rewriter.source is None or not has_cuda_only_paths(rewriter.ctx.path, rewriter.source):
        return None
    return cuda_only_gate(rewriter.ctx.path, rewriter.source, rewriter.line_of(node)[0])

class _Rewrite(Rewriter):

    def __init__(self, transform, ctx) -> None:
        super().__init__(transform, ctx)
        self.literals: dict[int, str] = {}  # id(original "cuda") -> why
        self.choices: dict[int, tuple[str, cst.BaseExpression | None]] = {}  # id(IfExp) -> (why, npu test)
        self.gates: set[int] = set()  # id(original torch.cuda.is_available() call) to widen
        self.enabled: set[int] = set()

    def visit_IfExp(self, node: cst.IfExp) -> bool:
        if is_ported_choice(node):
            return False
        if self._autocast_call(node.body) is not None:
            for call in _positive_calls(node.test):
                if self.refers_to(call.func, "torch.cuda.is_available"):
                    self.gates.add(id(call))
        return True

    def visit_Annotation(self, node) -> bool:
        return False

    def visit_Import(self, node) -> bool:
        return False

    def visit_ImportFrom(self, node) -> bool:
        return False

    def _autocast_call(self, node: cst.CSTNode) -> str | None:
        if isinstance(node, cst.Call):
            names = self.imported_names(node.func, within="torch.")
            if names & AUTOCAST:
                return "autocast"
            if names & CUDA_AMP_AUTOCAST:
                return "cuda-amp"
        return None

    # -- marking (top-down) ---------------------------------------------------------------------
    def visit_Call(self, node: cst.Call) -> bool:
        names = self.imported_names(node.func, within="torch.")  # every name below is torch's
        if names & AUTOCAST or names & STATE:
            what = "autocast" if names & AUTOCAST else f"{sorted(names & STATE)[0]}"
            device = _device_arg(node)
            if device is not None:
                self._mark(device, what)
            if names & AUTOCAST:
                for arg in node.args:
                    if arg.keyword is not None and arg.keyword.value == "enabled" and isinstance(arg.value, cst.Call) \
                            and not arg.value.args and self.refers_to(arg.value.func, "torch.cuda.is_available"):
                        self.enabled.add(id(arg.value))
        for name, what in TRAINING.items():
            if name in names:
                self.find(node, "autocast", f"{what} is for training; porter ports inference and leaves it")
        if "torch.amp.GradScaler" in names or "torch.cuda.amp.GradScaler" in names:
            return False
        return True

    def _mark(self, value: cst.CSTNode, what: str) -> None:
        if _is_cuda_type(value):
            self.literals[id(value)] = f"{what} on CUDA"
        elif isinstance(value, cst.IfExp) and not is_ported_choice(value):
            if _is_cuda_type(value.body):
                test = value.test
                if isinstance(test, cst.Call) and not test.args and \
                        self.refers_to(test.func, "torch.cuda.is_available"):
                    self.choices[id(value)] = (f"{what} device type chosen by torch.cuda.is_available()", None)
                    return
                subject = _tensor_device(test) if self.params.follow_tensor else None
                if subject is not None:
                    npu_test = cst.Comparison(
                        left=cst.Attribute(value=subject.deep_clone(), attr=cst.Name("type")),
                        comparisons=[cst.ComparisonTarget(operator=cst.Equal(), comparator=cst.SimpleString('"npu"'))],
                    )
                    why = f"{what} device type derived from {self.code(subject).strip()}"
                    self.choices[id(value)] = (why, npu_test)
                    return
            self._mark(value.body, what)
            self._mark(value.orelse, what)

    # -- rewriting (bottom-up) ------------------------------------------------------------------
    def leave_SimpleString(self, original_node, updated_node):
        what = self.literals.get(id(original_node))
        if what is None:
            return updated_node
        need_npu_available(self)
        parent = self.parent(original_node)
        result = runtime_device(original_node, updated_node, parent)
        return self.record(original_node, result,
                           f"{what}: autocast on npu when it is the device in use (CUDA's silently switches off there)")

    def leave_IfExp(self, original_node, updated_node):
        choice = self.choices.get(id(original_node))
        if choice is None:
            return updated_node
        why, npu_test = choice
        if npu_test is None:
            need_npu_available(self)
        parent = self.parent(original_node)
        result = prefer_npu(original_node, updated_node, npu_twin(updated_node.body), parent, npu_test)
        return self.record(original_node, result, f"{why}: npu autocast for npu tensors, the upstream choice otherwise")

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        if id(original_node) in self.gates or id(original_node) in self.enabled:
            need_cuda_or_npu(self)
            func = cst.Attribute(value=cuda_or_npu_call(), attr=cst.Name("is_available"))
            result = updated_node.with_changes(func=func)
            why = ("autocast gated on torch.cuda.is_available(): the gate admits npu, or the region would silently"
                   " run without autocast there")
            return self.record(original_node, result, why)
        if self.params.state_queries and not original_node.args:
            names = self.imported_names(original_node.func)
            hit = next((_LEGACY_STATE[n] for n in names if n in _LEGACY_STATE), None)
            gate = None if hit is None else _cuda_only_gate(self, original_node)
            if gate is not None:
                self.find(original_node, "autocast", R_CUDA_ONLY.format(line=gate))
                return updated_node
            if hit is not None:
                func = updated_node.func
                if hit == "get_autocast_dtype":
                    if not isinstance(func, cst.Attribute):
                        self.find(original_node, "autocast",
                                  "get_autocast_gpu_dtype imported by name: CUDA's autocast dtype; rewrite by hand")
                        return updated_node
                    npu_func = func.with_changes(attr=cst.Name("get_autocast_dtype")).deep_clone()
                else:
                    npu_func = func.deep_clone()
                need_npu_available(self)
                npu_call = cst.Call(func=npu_func, args=[cst.Arg(cst.SimpleString('"npu"'))])
                parent = self.parent(original_node)
                result = prefer_npu(original_node, updated_node, npu_call, parent)
                return self.record(original_node, result,
                                   f"{self.code(original_node.func).strip()}() reads CUDA's autocast state; "
                                   "npu's on an npu host, where the autocast region is npu's")
        return updated_node

    def _cuda_amp(self, original: cst.CSTNode, updated: cst.BaseExpression) -> cst.BaseExpression:
        if not _dotted(original) or not (self.imported_names(original) & CUDA_AMP_AUTOCAST):
            return updated
        parent = self.parent(original)
        if isinstance(parent, cst.Attribute) and parent.value is original:
            return updated
        need_cuda_or_npu(self)
        result = cst.Attribute(
            value=cst.Attribute(value=cuda_or_npu_call(), attr=cst.Name("amp")),
            attr=cst.Name("autocast"),
            lpar=updated.lpar,
            rpar=updated.rpar,
        )
        return self.record(original, result,
                           "torch.cuda.amp.autocast: torch.npu.amp.autocast on an npu host (transfer_to_npu maps "
                           "torch.cuda.amp to torch_npu.npu.amp; same arguments), CUDA's otherwise")

    def leave_Attribute(self, original_node, updated_node):
        return self._cuda_amp(original_node, updated_node)

    def leave_Name(self, original_node, updated_node):
        return self._cuda_amp(original_node, updated_node)


def _dotted(node: cst.CSTNode) -> bool:
    while isinstance(node, cst.Attribute):
        node = node.value
    return isinstance(node, cst.Name)


def _device_arg(call: cst.Call) -> cst.BaseExpression | None:
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == "device_type":
            return arg.value
    first = call.args[0] if call.args else None
    if first is not None and first.keyword is None and not first.star:
        return first.value
    return None


def _positive_calls(test: cst.CSTNode):
    """Calls in `test` reached through and/or only (not under `not`)."""
    if isinstance(test, cst.BooleanOperation):
        yield from _positive_calls(test.left)
        yield from _positive_calls(test.right)
    elif isinstance(test, cst.Call):
        yield test


def _tensor_device(test: cst.CSTNode) -> cst.BaseExpression | None:
    """The device a test examines: `x.device` for `x.is_cuda`, `d` for `d.type == "cuda"`."""
    subjects = []
    for node in walk(test):
        if isinstance(node, cst.Attribute) and node.attr.value == "is_cuda":
            subjects.append(cst.Attribute(value=node.value, attr=cst.Name("device")))
        elif isinstance(node, cst.Comparison) and isinstance(node.left, cst.Attribute) and \
                node.left.attr.value == "type" and any(_mentions_cuda(c.comparator) for c in node.comparisons):
            subjects.append(node.left.value)
    return subjects[0] if len(subjects) == 1 else None


def _mentions_cuda(node: cst.CSTNode) -> bool:
    return any(string_value(n) == "cuda" for n in walk(node))


C = f"{NPU_AVAILABLE}()"
M = f"{CUDA_OR_NPU}()"


def _ported(head: str, tail: str, module: bool = False) -> str:
    helpers = (NPU_AVAILABLE_SOURCE, CUDA_OR_NPU_SOURCE) if module else (NPU_AVAILABLE_SOURCE,)
    return ported(head, tail, *helpers)


class AutocastDevice(PythonTransform):
    """CUDA autocast regions follow the device in use, so they never switch off silently on npu.

    `torch.autocast("cuda", ...)` on a host without CUDA warns and runs the region without
    autocast. Ming-omni-tts's bf16 model wraps generation in `torch.autocast(device_type="cuda")`;
    off CUDA the region silently ran without autocast and failed with dtype mismatches. So:

    * a "cuda" device type of `torch.autocast` / `torch.amp.autocast` (positional or
      `device_type=`, also as a decorator or with `enabled=False`, which must switch off npu's
      autocast just as it switched off CUDA's) becomes `"npu" if _porter_npu_available() else
      "cuda"`, the process-wide choice (no tensor is in sight at a `with` statement);
    * where the device type is derived from a tensor (`"cuda" if x.is_cuda else "cpu"`,
      `"cuda" if d.type == "cuda" else "cpu"`) it follows that tensor:
      `"npu" if x.device.type == "npu" else <the upstream expression>`; a device type taken from
      the tensor already (`device_type=x.device.type`) is left alone;
    * `torch.cuda.amp.autocast` (call, decorator, alias, from-import) becomes
      `_porter_cuda_or_npu().amp.autocast`, i.e. torch_npu's `torch.npu.amp.autocast` on npu
      (what transfer_to_npu maps it to; same arguments and float16 default), CUDA's otherwise;
    * `torch.is_autocast_enabled()` and `torch.get_autocast_gpu_dtype()` (CUDA's autocast state,
      read by flash-attention code paths to pick a dtype) read npu's state on an npu host;
    * an autocast context gated on `torch.cuda.is_available()` (`torch.autocast(...) if
      torch.cuda.is_available() else nullcontext()`, `enabled=torch.cuda.is_available()`)
      admits npu through the gate, or the region would again run without autocast there.

    CUDA and CPU hosts evaluate exactly the upstream expressions. GradScaler and custom_fwd/bwd
    (training) are findings. Safety: SAFE in porter's sense (CUDA/CPU unchanged, npu takes the
    CUDA path); npu's autocast op lists are torch_npu's, so npu numerics follow npu's autocast
    policy rather than CUDA's, which is what running on npu means.
    """

    name = "autocast-device"
    safety = Safety.SAFE
    prefilter = re.compile(r"autocast|GradScaler|custom_[fb]wd")
    rewriter = _Rewrite

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        follow_tensor: bool = Field(
            True, description="key the device type on the tensor where the upstream derives it from one")
        state_queries: bool = Field(
            True, description="rewrite torch.is_autocast_enabled() / torch.get_autocast_gpu_dtype() (CUDA's state)")

    examples = [
        Example(
            id="ming-device-type-keyword-single-quotes",
            before=(
                "import torch\n\n\nclass BailingTTS:\n    @torch.inference_mode()\n    def generate(self, prompt):\n"
                "        with torch.autocast(device_type='cuda', dtype=torch.bfloat16):\n"
                "            return self.model(prompt)\n"
            ),
            after=_ported(
                "import torch\n",
                "class BailingTTS:\n    @torch.inference_mode()\n    def generate(self, prompt):\n"
                f"        with torch.autocast(device_type='npu' if {C} else 'cuda', dtype=torch.bfloat16):\n"
                "            return self.model(prompt)\n",
            ),
        ),
        Example(
            id="positional-amp-autocast-aliased-and-disabled",
            before=(
                "import torch as t\nfrom torch import autocast as ac\n\n\ndef run(f, x, amp):\n"
                "    with t.amp.autocast(\"cuda\", enabled=amp):\n        y = f(x)\n"
                "    with ac(\n        \"cuda\",  # keep this part in fp32\n        enabled=False,\n    ):\n"
                "        return f(y.float())\n"
            ),
            after=_ported(
                "import torch as t\nfrom torch import autocast as ac\n",
                f"def run(f, x, amp):\n    with t.amp.autocast(\"npu\" if {C} else \"cuda\", enabled=amp):\n        y = f(x)\n"
                f"    with ac(\n        \"npu\" if {C} else \"cuda\",  # keep this part in fp32\n        enabled=False,\n    ):\n"
                "        return f(y.float())\n",
            ),
            note="enabled=False must switch off npu's autocast too, or npu runs that part in bf16",
        ),
        Example(
            id="decorators",
            before=(
                "import torch\nfrom torch.amp import autocast\n\n\n@torch.autocast(\"cuda\", dtype=torch.float16)\n"
                "def forward(x):\n    return x\n\n\n@autocast('cuda', enabled = False)\ndef apply_rotary(t, freqs):\n"
                "    return t * freqs.cos()\n"
            ),
            after=_ported(
                "import torch\nfrom torch.amp import autocast\n",
                f"@torch.autocast(\"npu\" if {C} else \"cuda\", dtype=torch.float16)\n"
                f"def forward(x):\n    return x\n\n\n@autocast('npu' if {C} else 'cuda', enabled = False)\n"
                "def apply_rotary(t, freqs):\n    return t * freqs.cos()\n",
            ),
            note="the second is the x_transformers rotary pattern Ming's DiT relies on to stay in fp32",
        ),
        Example(
            id="cuda-amp-autocast-call-from-import-and-alias",
            before=(
                "import torch\nfrom torch.cuda.amp import autocast\nfrom torch.cuda import amp as cuda_amp\n\n\n"
                "def step(model, x):\n    with torch.cuda.amp.autocast(dtype=torch.bfloat16):\n        a = model(x)\n"
                "    with autocast():\n        b = model(x)\n    with cuda_amp.autocast(enabled=True):\n        return a, b, model(x)\n"
            ),
            after=_ported(
                "import torch\nfrom torch.cuda.amp import autocast\nfrom torch.cuda import amp as cuda_amp\n",
                f"def step(model, x):\n    with {M}.amp.autocast(dtype=torch.bfloat16):\n        a = model(x)\n"
                f"    with {M}.amp.autocast():\n        b = model(x)\n    with {M}.amp.autocast(enabled=True):\n"
                "        return a, b, model(x)\n",
                module=True,
            ),
        ),
        Example(
            id="device-type-from-a-tensor",
            before=(
                "import torch\n\n\ndef attend(q, k):\n"
                "    with torch.autocast(device_type=\"cuda\" if q.is_cuda else \"cpu\", enabled=False):\n"
                "        return q.float() @ k.float().T\n"
            ),
            after=(
                "import torch\n\n\ndef attend(q, k):\n"
                "    with torch.autocast(device_type=\"npu\" if q.device.type == \"npu\" else \"cuda\" if q.is_cuda else \"cpu\", enabled=False):\n"
                "        return q.float() @ k.float().T\n"
            ),
            note="no helper: the tensor says where the region runs",
        ),
        Example(
            id="gated-autocast-context",
            before=(
                "import contextlib\n\nimport torch\n\n\ndef context():\n    return (\n"
                "        torch.autocast(device_type=\"cuda\", dtype=torch.bfloat16)\n        if torch.cuda.is_available()\n"
                "        else contextlib.nullcontext()\n    )\n\n\n"
                "def scoped():\n    return torch.autocast(\"cuda\", enabled=torch.cuda.is_available())\n"
            ),
            after=_ported(
                "import contextlib\n\nimport torch\n",
                "def context():\n    return (\n"
                f"        torch.autocast(device_type=\"npu\" if {C} else \"cuda\", dtype=torch.bfloat16)\n        if {M}.is_available()\n"
                "        else contextlib.nullcontext()\n    )\n\n\n"
                f"def scoped():\n    return torch.autocast(\"npu\" if {C} else \"cuda\", enabled={M}.is_available())\n",
                module=True,
            ),
        ),
        Example(
            id="autocast-state-queries",
            before=(
                "import torch\n\n\ndef target_dtype(q, proj):\n    if q.dtype == torch.float32:\n"
                "        if torch.is_autocast_enabled():\n            return torch.get_autocast_gpu_dtype()\n"
                "        return proj.weight.dtype\n    return q.dtype\n"
            ),
            after=_ported(
                "import torch\n",
                "def target_dtype(q, proj):\n    if q.dtype == torch.float32:\n"
                f"        if (torch.is_autocast_enabled(\"npu\") if {C} else torch.is_autocast_enabled()):\n"
                f"            return torch.get_autocast_dtype(\"npu\") if {C} else torch.get_autocast_gpu_dtype()\n"
                "        return proj.weight.dtype\n    return q.dtype\n",
            ),
            note="Ming's flash-attention path: inside an npu autocast region CUDA's state reads False",
        ),
        Example(
            id="device-choice-on-is-available",
            before="import torch\n\nctx = torch.autocast(\"cuda\" if torch.cuda.is_available() else \"cpu\", dtype=torch.bfloat16)\n",
            after=_ported(
                "import torch\n",
                f"ctx = torch.autocast(\"npu\" if {C} else \"cuda\" if torch.cuda.is_available() else \"cpu\", dtype=torch.bfloat16)\n",
            ),
            note="the same rewrite hardcoded-device makes, so the two agree in either order",
        ),
        Example(
            id="tensor-device-cpu-and-variables-left-alone",
            before=(
                "import torch\n\n\ndef f(x, device_type):\n"
                "    with torch.autocast(device_type=x.device.type, enabled=False):\n        y = x.float()\n"
                "    with torch.autocast(\"cpu\", dtype=torch.bfloat16):\n        y = y + 1\n"
                "    with torch.autocast(device_type):\n        y = y * 2\n"
                "    return torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(\"cpu\")\n"
            ),
        ),
        Example(
            id="training-apis-shadowed-strings-left-alone",
            before=(
                "import torch\n\nscaler = torch.cuda.amp.GradScaler()\nscaler2 = torch.amp.GradScaler(\"cuda\")\n\n\n"
                "def f(torch):\n    \"\"\"Runs under torch.autocast('cuda').\"\"\"\n    with torch.autocast(\"cuda\"):\n        pass\n\n\n"
                "# with torch.autocast(device_type='cuda'):\nDOC = \"use torch.autocast('cuda') for speed\"\n"
                "MSG = f\"{DOC} with torch.cuda.amp.autocast()\"\n"
            ),
            note="GradScaler is training: a finding",
        ),
        Example(
            id="already-ported-left-alone",
            before=_ported(
                "import torch\n",
                f"with torch.autocast(\"npu\" if {C} else \"cuda\"):\n    pass\n"
                f"with {M}.amp.autocast():\n    pass\n",
                module=True,
            ),
        ),
    ]
