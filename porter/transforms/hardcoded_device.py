"""hardcoded-device: hard-coded CUDA devices become a device chosen at run time."""

from __future__ import annotations

import ast
import re

import libcst as cst
from pydantic import BaseModel, ConfigDict, Field, field_validator

from porter.analysis import CLI_OPTION, DEVICE_NAMES, cuda_only_gate, foreign_device, has_cuda_only_paths
from porter.transforms._base import Example, PythonTransform, Rewriter, Safety, walk
from porter.transforms._npu_runtime import (
    CUDA_OR_NPU,
    NPU_AVAILABLE,
    MOVE_SOURCE,
    NPU_AVAILABLE_SOURCE,
    is_cuda_literal,
    is_ported_choice,
    need_move,
    need_npu_available,
    npu_twin,
    ported,
    prefer_npu,
    runtime_device,
    string_value,
    target_name,
)
from porter.transforms._torch_npu_data import check_version, load

# torch functions whose positional argument N is a device (torch.load: map_location).
_POSITIONAL = {"torch.device": 0, "torch.Generator": 0, "torch.set_default_device": 0, "torch.load": 1}
# String methods: a "cuda" argument there is string handling (widen-device-check's business).
_STR_METHODS = {"startswith", "endswith", "replace", "split", "rsplit", "partition", "find", "index",
                "count", "strip", "lstrip", "rstrip", "removeprefix", "removesuffix"}
_CLI_OPTION = CLI_OPTION


R_CUDA_ONLY = "harmless: only reachable on CUDA, behind the gate at line {line} that stays CUDA-only; left alone"

class _Rewrite(Rewriter):

    def __init__(self, transform, ctx) -> None:
        super().__init__(transform, ctx)
        self.names = re.compile(self.params.device_names)
        self.getters = re.compile(self.params.device_functions)
        data = load(self.params.torch_npu)
        self.cuda_device_fns = set(data.device_argument_functions.get("torch.cuda", ()))
        self.targets: dict[int, str] = {}  # id(original literal) -> why it is a device
        self.choices: dict[int, str] = {}  # id(original IfExp) -> why (device choice on is_available)
        self.reported: set[int] = set()
        self.functions: list[str] = []
        self._defs: dict[str, list[str] | None] | None = None  # this module's functions -> positional params

    # -- what is a device position ----------------------------------------------------------------
    def _device_choice(self, node: cst.CSTNode) -> bool:
        """`"cuda" if torch.cuda.is_available() else <x>` (the test exactly that call)."""
        return (
            isinstance(node, cst.IfExp)
            and is_cuda_literal(node.body)
            and isinstance(node.test, cst.Call)
            and not node.test.args
            and self.refers_to(node.test.func, "torch.cuda.is_available")
        )

    def _mark(self, expr: cst.CSTNode, why: str) -> None:
        if is_cuda_literal(expr):
            self.targets[id(expr)] = why
        elif isinstance(expr, cst.IfExp):
            if not (is_ported_choice(expr) or self._device_choice(expr)):
                self._mark(expr.body, why)
                self._mark(expr.orelse, why)
        elif isinstance(expr, cst.BooleanOperation):
            self._mark(expr.left, why)
            self._mark(expr.right, why)
        elif isinstance(expr, (cst.List, cst.Tuple, cst.Set)):
            for element in expr.elements:
                self._mark(element.value, why)
        elif isinstance(expr, cst.Dict):
            for element in expr.elements:
                if isinstance(element, cst.DictElement):
                    self._mark(element.value, why)
        elif isinstance(expr, (cst.BinaryOperation, cst.Call, cst.ConcatenatedString)):
            text = self.code(expr)
            if re.match(r"""^\s*\(?\s*[rRuU]?['"]cuda:""", text):
                self.find(expr, "hardcoded_device",
                          f"{why}, built from a CUDA string at run time; porter cannot rewrite it safely")

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self.functions.append(node.name.value)
        # `def cuda(self, ...)` implements .cuda() (e.g. a model class checking quantisation before
        # delegating to super().cuda()); its body is the method, not a choice of device.
        return node.name.value != "cuda"

    def leave_FunctionDef(self, original_node, updated_node):
        self.functions.pop()
        return updated_node

    def visit_Param(self, node: cst.Param) -> bool:
        if node.default is not None and self.names.match(node.name.value):
            self._mark(node.default, f"default of parameter `{node.name.value}`")
        return True

    def visit_Assign(self, node: cst.Assign) -> bool:
        for target in node.targets:
            name = target_name(target.target)
            if name and self.names.match(name):
                self._mark(node.value, f"assigned to `{self.code(target.target).strip()}`")
        return True

    def visit_AnnAssign(self, node: cst.AnnAssign) -> bool:
        name = target_name(node.target)
        if node.value is not None and name and self.names.match(name):
            self._mark(node.value, f"assigned to `{self.code(node.target).strip()}`")
        return True

    def visit_DictElement(self, node: cst.DictElement) -> bool:
        key = string_value(node.key)
        if key and self.names.match(key):
            self._mark(node.value, f'value of the "{key}" entry')
        return True

    def visit_Return(self, node: cst.Return) -> bool:
        if node.value is not None and self.functions and self.getters.search(self.functions[-1]):
            self._mark(node.value, f"returned by `{self.functions[-1]}()`")
        return True

    def visit_Annotation(self, node: cst.Annotation) -> bool:
        return False  # `Literal["cuda", "cpu"]` is a type, not a device

    def visit_IfExp(self, node: cst.IfExp) -> bool:
        if is_ported_choice(node):
            return False  # already rewritten: the else branch is the upstream code, kept for CUDA/CPU
        if self._device_choice(node):
            self.choices[id(node)] = "device chosen by torch.cuda.is_available()"
            return False
        return True

    def visit_Call(self, node: cst.Call) -> bool:
        func = node.func
        names = self.imported_names(func, within="torch.")  # every name below is torch's
        for arg in node.args:
            if arg.keyword is not None and self.names.match(arg.keyword.value):
                self._mark(arg.value, f"`{arg.keyword.value}=` argument")
        positional = [a for a in node.args if a.keyword is None and not a.star]
        for qualified, index in _POSITIONAL.items():
            if qualified in names and len(positional) > index:
                self._mark(positional[index].value, f"device argument of {qualified}")
        params = self._local_params(func)
        for i, arg in enumerate(positional):
            if i < len(params) and self.names.match(params[i]):
                self._mark(arg.value, f"`{params[i]}` argument of `{self.code(func).strip()}` (defined in this module)")
        if "torch.device" in names:
            for arg in node.args:
                if arg.keyword is not None and arg.keyword.value == "type":
                    self._mark(arg.value, "device argument of torch.device")
        cuda_fn = next((n.split(".")[-1] for n in names if n.startswith("torch.cuda.")), None)
        if cuda_fn is None and isinstance(func, cst.Attribute) and isinstance(func.value, cst.Call):
            inner = func.value
            if isinstance(inner.func, cst.Name) and inner.func.value == CUDA_OR_NPU:
                cuda_fn = func.attr.value
        if cuda_fn in self.cuda_device_fns:
            for arg in positional:
                self._mark(arg.value, f"device argument of torch.cuda.{cuda_fn}")
        if isinstance(func, cst.Attribute) and func.attr.value == "to" and positional:
            self._mark(positional[0].value, "device argument of .to()")
        if self._cli_option(node):
            for arg in node.args:
                if arg.keyword is not None and arg.keyword.value == "default":
                    self._mark(arg.value, "default of a --device command-line option")
                if arg.keyword is not None and arg.keyword.value == "choices":
                    self.find(arg, "hardcoded_device",
                              "command-line choices offer CUDA but not npu; extend them if users should pick npu")
                    self._claim_all(arg.value)
        return True

    def _local_params(self, func: cst.BaseExpression) -> list[str]:
        """Positional parameter names of the function or method `func` calls, when this module defines
        exactly one function of that name (`Tokenizer.load_from_checkpoint(path, "cuda")` with
        `def load_from_checkpoint(path, map_location=None)`); [] otherwise."""
        name = func.attr.value if isinstance(func, cst.Attribute) else getattr(func, "value", None)
        if not isinstance(name, str) or self.source is None:
            return []
        if self._defs is None:
            self._defs = {}
            try:
                tree = ast.parse(self.source)
            except (SyntaxError, ValueError, RecursionError):
                tree = None
            for f in ast.walk(tree) if tree is not None else ():
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = [a.arg for a in f.args.posonlyargs + f.args.args]
                    self._defs[f.name] = None if f.name in self._defs else args  # two defs: ambiguous
        params = self._defs.get(name) or []
        if isinstance(func, cst.Attribute) and params[:1] in (["self"], ["cls"]):
            params = params[1:]
        return params

    def _cli_option(self, node: cst.Call) -> bool:
        func = node.func
        name = func.attr.value if isinstance(func, cst.Attribute) else getattr(func, "value", None)
        if name not in _CLI_OPTION:
            return False
        for arg in node.args:
            flag = string_value(arg.value) if arg.keyword is None else None
            if flag and flag.startswith("-") and self.names.match(flag.lstrip("-").replace("-", "_")):
                return True
        return False

    def _claim_all(self, node: cst.CSTNode) -> None:
        for child in walk(node):
            self.reported.add(id(child))

    # -- rewriting -------------------------------------------------------------------------------------
    def _literal(self, original: cst.BaseExpression, updated: cst.BaseExpression) -> cst.BaseExpression:
        why = self.targets.get(id(original))
        if why is None:
            if is_cuda_literal(original) and id(original) not in self.reported and not self._owned_elsewhere(original):
                self.find(original, "hardcoded_device",
                          "CUDA device string in a place porter does not recognise as a device; left as is")
            return updated
        if self._cuda_only(original) or self._foreign(original):
            return updated
        need_npu_available(self)
        parent = self.parent(original)
        result = runtime_device(original, updated, parent)
        return self.record(original, result, f"{why}: npu when available, else the CUDA device as before")

    def leave_SimpleString(self, original_node, updated_node):
        return self._literal(original_node, updated_node)

    def leave_FormattedString(self, original_node, updated_node):
        return self._literal(original_node, updated_node)

    def leave_IfExp(self, original_node: cst.IfExp, updated_node: cst.IfExp):
        if id(original_node) not in self.choices or self._foreign(original_node):
            return updated_node
        need_npu_available(self)
        parent = self.parent(original_node)
        result = prefer_npu(original_node, updated_node, npu_twin(updated_node.body), parent)
        return self.record(
            original_node, result,
            "device chosen by torch.cuda.is_available(): npu first when available, the upstream choice otherwise",
        )

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        func = original_node.func
        if not (isinstance(func, cst.Attribute) and func.attr.value == "cuda"):
            return updated_node
        if _dotted(func.value) and self.imported_names(func.value):
            self.find(original_node, "hardcoded_device",
                      ".cuda() called on an imported name (module or class), not on a tensor or model")
            return updated_node
        if self._cuda_only(original_node):
            return updated_node
        helper = need_move(self)
        new_func = updated_node.func
        assert isinstance(new_func, cst.Attribute)
        receiver = new_func.value
        # A comment between the receiver and `.cuda` stays where it was, inside the call.
        gap = new_func.dot.whitespace_before
        keep = gap if isinstance(gap, cst.ParenthesizedWhitespace) else cst.SimpleWhitespace("")
        if updated_node.args:
            first = cst.Arg(value=receiver, comma=cst.Comma(
                whitespace_after=keep if isinstance(keep, cst.ParenthesizedWhitespace) else cst.SimpleWhitespace(" ")))
        else:
            first = cst.Arg(value=receiver, whitespace_after_arg=keep)
        result = updated_node.with_changes(func=cst.Name(helper), args=[first, *updated_node.args])
        return self.record(original_node, result,
                           ".cuda(): the same call on CUDA and CPU hosts, .npu() with the same arguments on npu")

    def _cuda_only(self, node: cst.CSTNode) -> bool:
        """Only CUDA reaches `node` (behind a gate the analysis keeps CUDA-only): reported, left alone."""
        if self.source is None or not has_cuda_only_paths(self.ctx.path, self.source):
            return False
        gate = cuda_only_gate(self.ctx.path, self.source, self.line_of(node)[0])
        if gate is not None:
            self.find(node, "hardcoded_device", R_CUDA_ONLY.format(line=gate))
        return gate is not None

    def _foreign(self, node: cst.CSTNode) -> bool:
        """The device goes to a library that knows no npu (the analysis's verdict): reported, left alone."""
        if self.source is None or "faster_whisper" not in self.source and "ctranslate2" not in self.source:
            return False
        site = foreign_device(self.ctx.path, self.source, self.line_of(node)[0])
        if site is not None:
            self.find(node, "hardcoded_device", site.reason)
        return site is not None

    def _owned_elsewhere(self, node: cst.CSTNode) -> bool:
        """Literals other transforms handle: comparisons (widen-device-check), autocast device types."""
        child = node
        for _ in range(8):
            parent = self.parent(child)
            if parent is None or isinstance(parent, (cst.BaseStatement, cst.BaseSmallStatement)):
                return False
            if isinstance(parent, (cst.Comparison, cst.ComparisonTarget)):
                return True
            if isinstance(parent, cst.Arg) and parent.keyword is not None and parent.keyword.value == "device_type":
                return True
            if isinstance(parent, cst.Call):
                f = parent.func
                attr = f.attr.value if isinstance(f, cst.Attribute) else getattr(f, "value", "")
                if attr in _STR_METHODS or "autocast" in str(attr) or "GradScaler" in str(attr):
                    return True
            child = parent
        return False


def _dotted(node: cst.CSTNode) -> bool:
    """`a.b.c`: a name, not an expression such as `f(x).b` (whose qualified names strip the call)."""
    while isinstance(node, cst.Attribute):
        node = node.value
    return isinstance(node, cst.Name)




C = f"{NPU_AVAILABLE}()"


def _ported(head: str, tail: str) -> str:
    return ported(head, tail, NPU_AVAILABLE_SOURCE)


class HardcodedDevice(PythonTransform):
    """Hard-coded CUDA devices become a device chosen at run time: npu when available, else CUDA.

    A CUDA device literal in a device position becomes `"npu" if _porter_npu_available() else
    "cuda"` (index and quotes kept); the helper is written into the module. Device positions are:
    defaults of parameters named like a device (`device`, `asr_device`, `device_map`,
    `map_location`, ...), keyword arguments with such names, assignments to such names
    (`self.device = "cuda:0"`, `config["device"] = ...`, dataclass fields), `{"device": ...}`
    entries, what a `get_device()`-style function returns, the device argument of
    `torch.device`, `torch.Generator`, `torch.load`, `.to(...)`, the torch.cuda functions whose
    device argument torch_npu's `transfer_to_npu` rewrites, and the `default=` of a `--device`
    command-line option. Values nested in `x or "cuda"`, `"cuda" if flag else "cpu"`, lists and
    `device_map` dicts count too, as do f-strings such as `f"cuda:{rank}"`.

    `"cuda" if torch.cuda.is_available() else "cpu"` is a device choice as a whole and becomes
    `"npu" if _porter_npu_available() else "cuda" if torch.cuda.is_available() else "cpu"`.
    `x.cuda(...)` becomes `_porter_cuda(x, ...)`: `x.npu(...)` on an npu host, else exactly
    `x.cuda(...)` (the same result and the same error on CUDA and CPU hosts).

    On a CUDA host (or a CPU host without torch_npu) the helper is False and every rewritten
    expression evaluates to the upstream value. "cpu", "mps" and "auto" are never touched, nor
    strings that merely contain "cuda" ("CUDAExecutionProvider", `use_cuda_graph=`, messages,
    docstrings), comparisons with "cuda" (widen-device-check) or autocast device types
    (autocast-device). A CUDA device string anywhere else is listed as a finding, as are
    `--device` choices without npu, devices built at run time (`"cuda:" + str(i)`) and `.cuda()`
    called on an imported class.
    Run it before cuda-api, so that `if torch.cuda.is_available(): device = "cuda"` guards can be
    widened there once their body no longer hard-codes CUDA.
    """

    name = "hardcoded-device"
    safety = Safety.SAFE  # CUDA/CPU hosts evaluate the upstream expression; npu takes the CUDA path
    prefilter = re.compile(r"\bcuda\b")  # torch.cuda, "cuda:0", .cuda(); not use_cuda_graph

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        device_names: str = Field(
            DEVICE_NAMES, description="regex of parameter, keyword, attribute and key names that hold a device")
        device_functions: str = Field(
            r"(?i)(^|_)device$",
            description="regex of function names whose return value is a device (get_device, auto_select_device)")
        torch_npu: str = Field(
            "2.14.0", description="torch_npu release whose transfer_to_npu table lists torch.cuda calls taking a device")

        @field_validator("torch_npu")
        @classmethod
        def _has_data(cls, version: str) -> str:
            return check_version(version)

        @field_validator("device_names", "device_functions")
        @classmethod
        def _regex(cls, pattern: str) -> str:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"not a regular expression: {e}") from None
            return pattern

    rewriter = _Rewrite

    examples = [
        Example(
            id="default-parameter",
            before='import torch\n\n\ndef load_tokenizer(path, device="cuda"):\n    return torch.load(path, map_location=device)\n',
            after=_ported("import torch\n", f'\n\ndef load_tokenizer(path, device="npu" if {C} else "cuda"):\n    return torch.load(path, map_location=device)\n'),
        ),
        Example(
            id="annotated-default-single-quotes",
            before="def load_csm_1b(device: str = 'cuda:0'):\n    pass\n",
            after=_ported("", f"def load_csm_1b(device: str = 'npu:0' if {C} else 'cuda:0'):\n    pass\n"),
            note="no imports: the helper goes at the top of the module",
        ),
        Example(
            id="device-choice-on-is-available",
            before='import torch\n\ndevice = torch.device("cuda" if torch.cuda.is_available() else "cpu")\n',
            after=_ported("import torch\n", f'device = torch.device("npu" if {C} else "cuda" if torch.cuda.is_available() else "cpu")\n'),
        ),
        Example(
            id="device-choice-multiline-with-comment-aliased-torch",
            before="import torch as t\n\nDEVICE = (\n    'cuda:0'  # first GPU\n    if t.cuda.is_available()\n    else 'cpu'\n)\n",
            after=_ported(
                "import torch as t\n",
                f"DEVICE = (\n    'npu:0' if {C} else 'cuda:0'  # first GPU\n    if t.cuda.is_available()\n    else 'cpu'\n)\n",
            ),
        ),
        Example(
            id="device-choice-from-import-alias",
            before='from torch.cuda import is_available as gpu_ok\n\nDEVICE = "cuda" if gpu_ok() else "cpu"\n',
            after=_ported("from torch.cuda import is_available as gpu_ok\n", f'DEVICE = "npu" if {C} else "cuda" if gpu_ok() else "cpu"\n'),
        ),
        Example(
            id="keyword-arguments",
            before=(
                "import torch\nfrom transformers import AutoModel\n\n"
                'model = AutoModel.from_pretrained(path, device_map="cuda", torch_dtype=torch.bfloat16)\n'
                "state = torch.load(\n    ckpt,\n    map_location='cuda:1',  # keep on GPU\n)\n"
                'noise = torch.randn(4, device="cuda")\n'
            ),
            after=_ported(
                "import torch\nfrom transformers import AutoModel\n",
                f'model = AutoModel.from_pretrained(path, device_map="npu" if {C} else "cuda", torch_dtype=torch.bfloat16)\n'
                f"state = torch.load(\n    ckpt,\n    map_location='npu:1' if {C} else 'cuda:1',  # keep on GPU\n)\n"
                f'noise = torch.randn(4, device="npu" if {C} else "cuda")\n',
            ),
        ),
        Example(
            id="dot-cuda-calls",
            before=(
                "def prepare(model, batch, rank):\n    model = model.cuda().eval()\n"
                "    ids = batch['ids'].cuda(non_blocking=True)\n    mask = batch['mask'].cuda(rank)\n"
                "    codes = (\n        encode(ids)  # (B, T) codes\n        .cuda()\n    )\n    return model, ids, mask, codes\n"
            ),
            after=ported(
                "",
                "def prepare(model, batch, rank):\n    model = _porter_cuda(model).eval()\n"
                "    ids = _porter_cuda(batch['ids'], non_blocking=True)\n    mask = _porter_cuda(batch['mask'], rank)\n"
                "    codes = (\n        _porter_cuda(encode(ids)  # (B, T) codes\n        )\n    )\n    return model, ids, mask, codes\n",
                NPU_AVAILABLE_SOURCE,
                MOVE_SOURCE,
            ),
            note="transfer_to_npu rebinds Tensor.cuda and Module.cuda to .npu; porter does it per call",
        ),
        Example(
            id="torch-device-to-and-fstring",
            before=(
                "import torch\n\n\ndef place(x, rank):\n    dev = torch.device('cuda', rank)\n"
                '    x = x.to("cuda:0")\n    return x, torch.device(f"cuda:{rank}")\n'
            ),
            after=_ported(
                "import torch\n",
                f"def place(x, rank):\n    dev = torch.device('npu' if {C} else 'cuda', rank)\n"
                f'    x = x.to("npu:0" if {C} else "cuda:0")\n'
                f'    return x, torch.device(f"npu:{{rank}}" if {C} else f"cuda:{{rank}}")\n',
            ),
        ),
        Example(
            id="assignments-in-an-is-available-guard",
            before=(
                "import torch\n\n\nclass Engine:\n    def __init__(self, device_id=None):\n"
                "        if device_id is not None:\n            self._device = f\"cuda:{device_id}\"\n"
                "        elif torch.cuda.is_available():\n            self._device = \"cuda:0\"\n"
                "        else:\n            self._device = \"cpu\"\n"
            ),
            after=_ported(
                "import torch\n",
                "class Engine:\n    def __init__(self, device_id=None):\n"
                f"        if device_id is not None:\n            self._device = f\"npu:{{device_id}}\" if {C} else f\"cuda:{{device_id}}\"\n"
                f"        elif torch.cuda.is_available():\n            self._device = \"npu:0\" if {C} else \"cuda:0\"\n"
                "        else:\n            self._device = \"cpu\"\n",
            ),
            note="widening the is_available() guard is cuda-api's job, once its body no longer hard-codes CUDA",
        ),
        Example(
            id="dataclass-field-dict-entry-and-fallback",
            before=(
                "from dataclasses import dataclass\n\n\n@dataclass\nclass Config:\n    device: str = \"cuda\"\n\n\n"
                "opts = {\"device\": \"cuda\", \"dtype\": \"bfloat16\"}\n\n\n"
                "def pick(preferred_device=None):\n    return preferred_device or \"cuda\"\n"
            ),
            after=_ported(
                "from dataclasses import dataclass\n",
                f"@dataclass\nclass Config:\n    device: str = \"npu\" if {C} else \"cuda\"\n\n\n"
                f"opts = {{\"device\": \"npu\" if {C} else \"cuda\", \"dtype\": \"bfloat16\"}}\n\n\n"
                "def pick(preferred_device=None):\n    return preferred_device or \"cuda\"\n",
            ),
            note="`pick` is not named like a device getter: its fallback is a finding, not a rewrite",
        ),
        Example(
            id="device-getter-return-and-cli-default",
            before=(
                "import argparse\nimport torch\n\n\ndef auto_select_device():\n"
                "    if torch.cuda.is_available():\n        return \"cuda\"\n    return \"cpu\"\n\n\n"
                "parser = argparse.ArgumentParser()\n"
                "parser.add_argument(\"--device\", default=\"cuda\", choices=(\"cpu\", \"cuda\"))\n"
            ),
            after=_ported(
                "import argparse\nimport torch\n",
                f"def auto_select_device():\n    if torch.cuda.is_available():\n        return \"npu\" if {C} else \"cuda\"\n"
                "    return \"cpu\"\n\n\nparser = argparse.ArgumentParser()\n"
                f"parser.add_argument(\"--device\", default=\"npu\" if {C} else \"cuda\", choices=(\"cpu\", \"cuda\"))\n",
            ),
            note="the choices without npu are a finding",
        ),
        Example(
            id="nested-choice-needs-parentheses",
            before='def run(x, use_gpu, device=None):\n    y = x.to(device=device or "cuda")\n    return y.to("cuda" if use_gpu else "cpu")\n',
            after=_ported(
                "",
                f'def run(x, use_gpu, device=None):\n    y = x.to(device=device or ("npu" if {C} else "cuda"))\n'
                f'    return y.to(("npu" if {C} else "cuda") if use_gpu else "cpu")\n',
            ),
        ),
        Example(
            id="torch-cuda-device-arguments",
            before=(
                "import torch\nfrom torch.cuda import set_device\n\nset_device('cuda:1')\n"
                "props = torch.cuda.get_device_properties(\"cuda:0\")\n"
                f"name = {CUDA_OR_NPU}().get_device_name(\"cuda\")\n"
            ),
            after=_ported(
                "import torch\nfrom torch.cuda import set_device\n",
                f"set_device('npu:1' if {C} else 'cuda:1')\n"
                f"props = torch.cuda.get_device_properties(\"npu:0\" if {C} else \"cuda:0\")\n"
                f"name = {CUDA_OR_NPU}().get_device_name(\"npu\" if {C} else \"cuda\")\n",
            ),
            note="the torch.cuda functions whose device argument transfer_to_npu rewrites; before or after cuda-api",
        ),
        Example(
            id="device-map-dict",
            before='model = Model.from_pretrained(p, device_map={"": "cuda:0"})\n',
            after=_ported("", f'model = Model.from_pretrained(p, device_map={{"": "npu:0" if {C} else "cuda:0"}})\n'),
        ),
        Example(
            id="cpu-mps-auto-left-alone",
            before=(
                "import torch\n\n\ndef load(path, device=\"cpu\"):\n    sd = torch.load(path, map_location=\"cpu\")\n"
                "    m = Model.from_pretrained(path, device_map=\"auto\")\n    return m.to(\"mps\"), torch.device(\"cpu\")\n"
            ),
        ),
        Example(
            id="strings-that-merely-contain-cuda-left-alone",
            before=(
                '"""Runs on cuda by default; pass device="cuda:1" for another GPU."""\n'
                "import logging\n\nimport onnxruntime as ort\n\nlog = logging.getLogger(__name__)\n\n\n"
                "def session(path, device):\n    \"\"\"Open with device='cuda'.\"\"\"\n"
                "    providers = [\"CUDAExecutionProvider\", \"CPUExecutionProvider\"]\n"
                "    log.info(f\"using cuda device {device}\")\n"
                "    log.info('device is cuda')\n"
                "    return ort.InferenceSession(path, providers=providers, use_cuda_graph=True)\n"
            ),
        ),
        Example(
            id="comparisons-left-to-widen-device-check",
            before='def f(device):\n    if device == "cuda" or str(device).startswith("cuda:"):\n        return 1\n    return "cuda" in str(device)\n',
        ),
        Example(
            id="autocast-device-type-left-to-autocast-device",
            before='import torch\n\nwith torch.autocast(device_type="cuda", dtype=torch.bfloat16):\n    pass\n',
        ),
        Example(
            id="shadowed-torch-left-alone",
            before='def f(torch):\n    return torch.device("cuda")\n',
            note="a parameter named torch is not the torch module; the literal is listed as a finding",
        ),
        Example(
            id="computed-devices-are-findings",
            before='import torch\n\n\ndef f(rank):\n    return torch.device("cuda:" + str(rank)), torch.nn.Module.cuda(m)\n',
        ),
        Example(
            id="already-ported-left-alone",
            before=_ported(
                "import torch\n",
                f'device = "npu" if {C} else "cuda" if torch.cuda.is_available() else "cpu"\nx = y.to("npu" if {C} else "cuda")\n',
            ),
        ),
        Example(
            id="cuda-method-implementation-left-alone",
            before=(
                "import torch\n\n\nclass Model(torch.nn.Module):\n    def cuda(self, *args, **kwargs):\n"
                "        if self.quantized:\n            raise ValueError(\"already placed\")\n"
                "        device = kwargs.get(\"device\", \"cuda\")\n        return super().cuda(*args, **kwargs)\n"
            ),
            note="an override of .cuda() delegating to torch; call sites of .cuda() are what gets rewritten",
        ),
        Example(
            id="names-that-are-not-devices-left-alone",
            before='EXECUTION_PROVIDER_CUDA = "cuda"\nbackend = "cuda"\n',
            note="names that do not hold a device are findings, not rewrites",
        ),
    ]
