"""Which aten operators have an NPU kernel in a given torch_npu release, taken from its wheel.

The torch_npu wheel on PyPI ships the codegen input it was built from,
`torch_npu/csrc/aten/npu_native_functions*.yaml`: every aten operator the release registers an
NPU kernel for (sections `supported`, `autograd`, `quant`, `symint`) and torch_npu's own operators
(`custom`, `custom_autograd`, namespace `npu::`). `regenerate()` reads those files out of a wheel
(downloaded with `pip download --no-deps`, never installed and never imported) and writes a plain
text list, one `namespace::name[.overload]` per line, under a header naming the wheel and its
sha256. The same wheel's `torch_npu/contrib/transfer_to_npu.py` is read with `ast` (not executed)
into a JSON file of the `torch.cuda.*` names that `transfer_to_npu` maps onto `torch.npu.*`.

The pinned list lives in `porter/data/`; `load_kernels()` reads it with the standard library only
(it runs inside simulated model processes). The `porter npu-kernels` command is porter.npu.cli.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable


PINNED_TORCH_NPU = "2.14.0"

# Sections of npu_native_functions*.yaml. Unknown sections stop regeneration: guessing whether a
# new section means "has a kernel" would silently corrupt the list.
KERNEL_SECTIONS = ("supported", "autograd", "quant", "symint")
CUSTOM_SECTIONS = ("custom", "custom_autograd")
NON_KERNEL_SECTIONS = ("unsupported", "tocpu")  # listed, but no NPU kernel (older releases)
SCALAR_KEYS = ("backend", "cpp_namespace")

_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!_-]*$")
_YAML_GLOB = re.compile(r"^torch_npu/csrc/aten/npu_native_functions[^/]*\.ya?ml$")
_TRANSFER_PATH = "torch_npu/contrib/transfer_to_npu.py"
_NAMESPACES = ("aten", "npu", "prims", "quantized", "_quantized", "torchvision", "torchaudio")


class KernelListError(Exception):
    """A kernel list or wheel that cannot be read; the message says which file and what to do."""


# -- operator names ---------------------------------------------------------------------------


def normalize_op(op: Any) -> str:
    """The canonical spelling `namespace::name[.overload]` of an operator.

    Accepts an `OpOverload` (`torch.ops.aten.add.Tensor`), an `OpOverloadPacket`, or a string in
    any of the usual spellings: `aten::add.Tensor`, `aten.add.Tensor`, `torch.ops.aten.add.Tensor`,
    `add.Tensor`, `add` or a yaml schema `add.Tensor(Tensor self, ...) -> Tensor`. The default
    overload has no suffix (`aten.gelu.default` -> `aten::gelu`), as in native_functions.yaml.
    A bare name without a namespace is an aten operator.
    """
    if not isinstance(op, str):
        name = getattr(op, "name", None)
        if callable(name):  # OpOverload.name() -> "aten::add.Tensor"
            return normalize_op(name())
        qualified = getattr(op, "_qualified_op_name", None)  # OpOverloadPacket
        if isinstance(qualified, str):
            return normalize_op(qualified)
        raise TypeError(f"not an operator: {op!r}")
    text = op.strip().split("(", 1)[0].strip()
    if text.startswith("torch.ops."):
        text = text[len("torch.ops.") :]
    if "::" in text:
        ns, rest = text.split("::", 1)
    else:
        parts = text.split(".")
        if len(parts) >= 2 and parts[0] in _NAMESPACES:
            ns, rest = parts[0], ".".join(parts[1:])
        else:
            ns, rest = "aten", text
    name, _, overload = rest.partition(".")
    if overload in ("", "default"):
        return f"{ns}::{name}"
    return f"{ns}::{name}.{overload}"


def packet_of(op: str) -> str:
    """`aten::add.Tensor` -> `aten::add`."""
    return normalize_op(op).split(".", 1)[0]


# -- the list ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelList:
    """The operators one torch_npu release has NPU kernels for."""

    version: str
    ops: frozenset[str]
    header: dict[str, str] = field(default_factory=dict)  # source, sha256, ... from the file
    path: Path | None = None

    def __contains__(self, op: object) -> bool:
        try:
            return normalize_op(op) in self.ops
        except TypeError:
            return False

    def has_packet(self, name: str) -> bool:
        """Whether any overload of `name` (e.g. `aten::add`) has a kernel."""
        packet = packet_of(name)
        return any(o == packet or o.startswith(packet + ".") for o in self.ops)

    def __len__(self) -> int:
        return len(self.ops)


def data_file(version: str, kind: str = "kernels") -> str:
    """File name of a data file in porter/data: kind is `kernels` (.txt) or `transfer` (.json)."""
    suffix = "txt" if kind == "kernels" else "json"
    return f"torch_npu_{kind}-{version}.{suffix}"


def available_versions() -> list[str]:
    """torch_npu versions with a kernel list in porter/data."""
    out: list[str] = []
    if not _data_dir().is_dir():
        return out
    for entry in _data_dir().iterdir():
        m = re.match(r"^torch_npu_kernels-(.+)\.txt$", entry.name)
        if m:
            out.append(m.group(1))
    return sorted(out)


def load_kernels(version: str | os.PathLike[str] | None = None) -> KernelList:
    """The NPU kernel list of torch_npu `version` (default: the pinned release), or of a file path."""
    if version is not None and (isinstance(version, os.PathLike) or os.sep in str(version)):
        path = Path(version)
        if not path.is_file():
            raise KernelListError(f"{path}: no such kernel list file")
        return parse_kernel_list(path.read_text(encoding="utf-8"), path=path)
    version = str(version or PINNED_TORCH_NPU)
    entry = _data_dir().joinpath(data_file(version))
    if not entry.is_file():
        known = ", ".join(available_versions()) or "none"
        raise KernelListError(
            f"porter/data/{data_file(version)}: no NPU kernel list for torch_npu {version} "
            f"(available: {known}); generate it with `porter npu-kernels {version}`"
        )
    return parse_kernel_list(entry.read_text(encoding="utf-8"), path=Path(str(entry)))


def parse_kernel_list(text: str, path: Path | None = None) -> KernelList:
    header: dict[str, str] = {}
    ops: set[str] = set()
    where = str(path) if path else "<kernel list>"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep and key.strip() and " " not in key.strip():
                header.setdefault(key.strip(), value.strip())
            continue
        if "::" not in line or " " in line:
            raise KernelListError(f"{where}:{lineno}: expected `namespace::operator`, got {line!r}")
        ops.add(normalize_op(line))
    if "torch_npu" not in header:
        raise KernelListError(f"{where}: header has no `# torch_npu: VERSION` line")
    return KernelList(version=header["torch_npu"], ops=frozenset(ops), header=header, path=path)


# -- extraction from a wheel ------------------------------------------------------------------


@dataclass(frozen=True)
class WheelData:
    """What porter takes from one torch_npu wheel."""

    version: str
    wheel_name: str
    sha256: str
    yaml_files: tuple[str, ...]
    ops: frozenset[str]
    sections: dict[str, int]  # section -> number of entries read
    transfer: dict[str, Any]


def _entry_name(entry: Any, where: str) -> str:
    if isinstance(entry, str):
        text = entry
    elif isinstance(entry, dict) and isinstance(entry.get("func"), str):
        text = entry["func"]
    else:
        raise KernelListError(f"{where}: entry {entry!r} has no operator name")
    name = text.split("(", 1)[0].strip()
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)?$", name):
        raise KernelListError(f"{where}: cannot read an operator name from {text[:80]!r}")
    return name


def ops_from_yaml(docs: dict[str, Any]) -> tuple[frozenset[str], dict[str, int]]:
    """Operator names from parsed npu_native_functions*.yaml documents (file name -> content)."""
    custom: set[str] = set()
    plain: set[str] = set()
    counts: dict[str, int] = {}
    for fname, doc in docs.items():
        if not isinstance(doc, dict):
            raise KernelListError(f"{fname}: expected a mapping at the top level")
        for section, entries in doc.items():
            if section in SCALAR_KEYS:
                continue
            where = f"{fname}: section `{section}`"
            if section not in KERNEL_SECTIONS + CUSTOM_SECTIONS + NON_KERNEL_SECTIONS:
                raise KernelListError(
                    f"{where} is unknown to porter; decide whether its operators have NPU "
                    "kernels and add it to KERNEL_SECTIONS or NON_KERNEL_SECTIONS in "
                    "porter/npu/kernels.py"
                )
            if entries is None:
                continue
            if not isinstance(entries, list):
                raise KernelListError(f"{where}: expected a list")
            counts[section] = counts.get(section, 0) + len(entries)
            if section in NON_KERNEL_SECTIONS:
                continue
            names = {_entry_name(e, where) for e in entries}
            (custom if section in CUSTOM_SECTIONS else plain).update(names)
    ops = {f"npu::{n}" for n in custom}
    # torch_npu's own operators also appear in `supported`/`symint`; they live in `npu::`.
    ops |= {f"npu::{n}" if n in custom else f"aten::{n}" for n in plain}
    return frozenset(normalize_op(o) for o in ops), counts


def read_wheel(wheel: Path) -> WheelData:
    """Read the kernel yaml files and transfer_to_npu.py out of a torch_npu wheel (no import)."""
    if not wheel.is_file():
        raise KernelListError(f"{wheel}: no such wheel file")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise KernelListError(f"{wheel}: not a wheel (zip) file: {exc}") from None
    with zf:
        names = zf.namelist()
        yaml_files = sorted(n for n in names if _YAML_GLOB.match(n))
        if not yaml_files:
            raise KernelListError(
                f"{wheel}: has no torch_npu/csrc/aten/npu_native_functions*.yaml; "
                "is this a torch_npu wheel?"
            )
        version = _wheel_version(zf, names, wheel)
        import yaml  # only needed to regenerate; loading the list needs nothing but the stdlib

        docs = {}
        for n in yaml_files:
            try:
                docs[n] = yaml.safe_load(zf.read(n).decode("utf-8"))
            except yaml.YAMLError as exc:
                raise KernelListError(f"{wheel}!{n}: not valid YAML: {exc}") from None
        ops, counts = ops_from_yaml(docs)
        transfer = _transfer_from_wheel(zf, set(names), wheel)
    return WheelData(
        version=version,
        wheel_name=wheel.name,
        sha256=digest,
        yaml_files=tuple(yaml_files),
        ops=ops,
        sections=counts,
        transfer=transfer,
    )


def _wheel_version(zf: zipfile.ZipFile, names: list[str], wheel: Path) -> str:
    for n in names:
        if re.match(r"^torch_npu-[^/]+\.dist-info/METADATA$", n):
            for line in zf.read(n).decode("utf-8", "replace").splitlines():
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    m = re.match(r"^torch_npu-([^-]+)-", wheel.name)
    if m:
        return m.group(1)
    raise KernelListError(f"{wheel}: cannot tell the torch_npu version (no dist-info METADATA)")


# -- transfer_to_npu --------------------------------------------------------------------------


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _canonical(dotted: str) -> str:
    """`torch_npu.npu.X` is what `torch.npu.X` refers to once torch_npu is imported."""
    if dotted == "torch_npu.npu" or dotted.startswith("torch_npu.npu."):
        return "torch" + dotted[len("torch_npu") :]
    return dotted


def _module_all(source: str) -> list[str] | None:
    """The literal `__all__` of a module (with `+=`/`.extend` of literal lists), else None."""
    names: list[str] = []
    found = False
    for node in ast.parse(source).body:
        value = None
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            names, value, found = [], node.value, True
        elif isinstance(node, ast.AugAssign) and getattr(node.target, "id", None) == "__all__":
            value = node.value
        elif (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and _dotted(node.value.func) == "__all__.extend"
            and node.value.args
        ):
            value = node.value.args[0]
        if value is not None:
            try:
                names.extend(str(x) for x in ast.literal_eval(value))
            except ValueError:
                return None
    return names if found else None


def _module_file(module: str, names: set[str]) -> str | None:
    base = module.replace(".", "/")
    for cand in (f"{base}/__init__.py", f"{base}.py"):
        if cand in names:
            return cand
    return None


def transfer_from_source(source: str, module_sources: dict[str, str] | None = None) -> dict[str, Any]:
    """What transfer_to_npu.py maps from CUDA to NPU, read with `ast` (never executed).

    `module_sources` maps module names (e.g. `torch_npu.npu`) to their source, for resolving the
    `__all__` of the modules `_patch_cuda()` copies onto `torch.cuda`.
    """
    module_sources = module_sources or {}
    tree = ast.parse(source)
    lists: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and isinstance(node.value, (ast.List, ast.Tuple)):
                try:
                    lists[target.id] = [str(x) for x in ast.literal_eval(node.value)]
                except ValueError:
                    pass

    module_patches: dict[str, dict[str, Any]] = {}
    attribute_patches: dict[str, str] = {}
    device_args: dict[str, list[str]] = {}
    wrapped: set[str] = set()
    for node in ast.walk(tree):
        # [['cuda', torch_npu.npu], ['cuda.amp', torch_npu.npu.amp], ...] inside _patch_cuda()
        if isinstance(node, ast.FunctionDef) and node.name == "_patch_cuda":
            for sub in ast.walk(node):
                if isinstance(sub, ast.List) and len(sub.elts) == 2:
                    dest, src = sub.elts
                    if isinstance(dest, ast.Constant) and isinstance(dest.value, str):
                        src_name = _dotted(src)
                        if src_name:
                            module_patches[f"torch.{dest.value}"] = {"from": _canonical(src_name)}
        # _device_wrapper(torch.cuda, torch_cuda_fn_white_list)
        if isinstance(node, ast.Call) and _dotted(node.func) == "_device_wrapper" and len(node.args) == 2:
            owner = _dotted(node.args[0])
            names_node = node.args[1]
            if owner is None:
                continue
            if isinstance(names_node, ast.Name) and names_node.id in lists:
                names = lists[names_node.id]
            else:
                try:
                    names = [str(x) for x in ast.literal_eval(names_node)]
                except ValueError:
                    continue
            device_args.setdefault(_canonical(owner), [])
            device_args[_canonical(owner)] += [n for n in names if n not in device_args[_canonical(owner)]]
        # torch.cuda.CUDAGraph = torch.npu.NPUGraph ; torch.Tensor.cuda = torch.Tensor.npu
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = _dotted(node.targets[0])
            if not target or not target.startswith("torch."):
                continue
            value = _dotted(node.value)
            if value and (value.startswith("torch.") or value.startswith("torch_npu.")):
                attribute_patches[target] = _canonical(value)
            elif isinstance(node.value, ast.Call):
                wrapped.add(target)

    names_by_module: dict[str, list[str] | None] = {}
    for dest, info in module_patches.items():
        src = info["from"]
        src_module = src.replace("torch.npu", "torch_npu.npu", 1) if src.startswith("torch.npu") else src
        names = _module_all(module_sources[src_module]) if src_module in module_sources else None
        names_by_module[dest] = sorted(set(names)) if names is not None else None

    return {
        "cuda_to_npu": names_by_module.get("torch.cuda") or [],
        "module_patches": {k: v["from"] for k, v in sorted(module_patches.items())},
        "module_patch_names": dict(sorted(names_by_module.items())),
        "attribute_patches": dict(sorted(attribute_patches.items())),
        "wrapped_attributes": sorted(wrapped),
        "device_argument_functions": dict(sorted(device_args.items())),
        "device_keyword_arguments": lists.get("device_kwargs_list", []),
    }


def _transfer_from_wheel(zf: zipfile.ZipFile, names: set[str], wheel: Path) -> dict[str, Any]:
    if _TRANSFER_PATH not in names:
        raise KernelListError(f"{wheel}: has no {_TRANSFER_PATH}")
    source = zf.read(_TRANSFER_PATH).decode("utf-8")
    modules: dict[str, str] = {}
    for mod in (
        "torch_npu.npu",
        "torch_npu.npu.amp",
        "torch_npu.npu.random",
        "torch_npu.npu.amp.autocast_mode",
        "torch_npu.npu.amp.common",
        "torch_npu.npu.amp.grad_scaler",
    ):
        path = _module_file(mod, names)
        if path:
            modules[mod] = zf.read(path).decode("utf-8")
    data = transfer_from_source(source, modules)
    data["files"] = [_TRANSFER_PATH] + sorted(_module_file(m, names) or "" for m in modules)
    return data


# -- writing ----------------------------------------------------------------------------------


def render_kernel_list(data: WheelData) -> str:
    sections = ", ".join(f"{k} ({v})" for k, v in sorted(data.sections.items()))
    lines = [
        f"# NPU kernel list of torch_npu {data.version}, extracted by porter (porter npu-kernels).",
        f"# torch_npu: {data.version}",
        f"# source: {data.wheel_name}",
        f"# sha256: {data.sha256}",
        f"# files: {', '.join(data.yaml_files)}",
        f"# sections: {sections}",
        "# One operator per line, `namespace::name[.overload]` as in native_functions.yaml (the",
        "# default overload has no suffix). aten:: operators have an NPU kernel in this release;",
        "# npu:: operators are torch_npu's own. Regenerate: porter npu-kernels VERSION_OR_WHEEL",
        f"# count: {len(data.ops)}",
    ]
    return "\n".join(lines + sorted(data.ops)) + "\n"


def render_transfer(data: WheelData) -> str:
    doc = {
        "torch_npu": data.version,
        "source": {"wheel": data.wheel_name, "sha256": data.sha256, "files": data.transfer["files"]},
        "note": (
            "Read from torch_npu/contrib/transfer_to_npu.py with ast by porter npu-kernels. "
            "cuda_to_npu: names X for which transfer_to_npu makes torch.cuda.X refer to torch.npu.X "
            "(torch_npu.npu.__all__); module_patches: module -> the module whose __all__ it copies "
            "onto it (names in module_patch_names, null where __all__ is not a literal); "
            "attribute_patches: other torch attributes it rebinds; wrapped_attributes: attributes "
            "it replaces with wrappers; device_argument_functions: callables whose 'cuda' device "
            "arguments it rewrites to 'npu'; device_keyword_arguments: the keywords it rewrites."
        ),
        **{k: v for k, v in data.transfer.items() if k != "files"},
    }
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    base = os.environ.get("PORTER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "porter"
    )
    return Path(base)


def download_wheel(version: str, dest: Path | None = None) -> Path:
    """`pip download --no-deps` the torch_npu wheel of `version` (cached; never installed)."""
    if not _VERSION.match(version):
        raise KernelListError(f"{version!r} is not a torch_npu version (e.g. {PINNED_TORCH_NPU})")
    dest = dest or cache_dir() / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    found = _find_wheel(dest, version)
    if found:
        return found
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", py, "--dest", str(dest)]
    for plat in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                 "manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"):
        cmd += ["--platform", plat]
    cmd.append(f"torch_npu=={version}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = _find_wheel(dest, version)
    if proc.returncode != 0 or not found:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        tail = "\n".join([ln for ln in lines if ln.startswith("ERROR")] or lines[-3:])[:1500]
        raise KernelListError(
            f"pip could not download torch_npu=={version} for Python {py}:\n{tail}\n"
            "Check the version exists on PyPI, or pass the path of a torch_npu wheel instead."
        )
    return found


def _find_wheel(dest: Path, version: str) -> Path | None:
    for p in sorted(dest.glob(f"torch_npu-{version}-*.whl")):
        return p
    return None


@dataclass(frozen=True)
class Regenerated:
    kernels: Path
    transfer: Path
    data: WheelData


def regenerate_files(version_or_wheel: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Regenerated:
    """Write the kernel list and the transfer_to_npu JSON of a torch_npu version or wheel."""
    arg = str(version_or_wheel)
    if arg.endswith(".whl") or os.sep in arg or Path(arg).is_file():
        wheel = Path(arg)
    else:
        wheel = download_wheel(arg)
    data = read_wheel(wheel)
    out = Path(out_dir)
    kernels = out / data_file(data.version, "kernels")
    transfer = out / data_file(data.version, "transfer")
    kernels_text, transfer_text = render_kernel_list(data), render_transfer(data)
    _atomic_write(kernels, kernels_text)
    _atomic_write(transfer, transfer_text)
    return Regenerated(kernels=kernels, transfer=transfer, data=data)


def regenerate(version_or_wheel: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write `torch_npu_kernels-<version>.txt` (and the transfer JSON beside it); return its path."""
    return regenerate_files(version_or_wheel, out_dir).kernels


def load_transfer(version: str | None = None) -> dict[str, Any]:
    """The transfer_to_npu data of torch_npu `version` (default: pinned) from porter/data."""
    version = version or PINNED_TORCH_NPU
    entry = _data_dir().joinpath(data_file(version, "transfer"))
    if not entry.is_file():
        raise KernelListError(
            f"porter/data/{data_file(version, 'transfer')}: missing; "
            f"generate it with `porter npu-kernels {version}`"
        )
    return json.loads(entry.read_text(encoding="utf-8"))


def _data_dir() -> Any:
    return resources.files("porter").joinpath("data")


def default_out_dir() -> Path:
    return Path(str(_data_dir()))


def iter_ops(kernels: KernelList, namespace: str = "aten") -> Iterable[str]:
    prefix = f"{namespace}::"
    return (o for o in sorted(kernels.ops) if o.startswith(prefix))


def __getattr__(name: str) -> Any:
    # `porter.npu.kernels.npu_kernels` is the click command, defined in porter.npu.cli so that
    # loading a kernel list never needs click.
    if name == "npu_kernels":
        from porter.npu.cli import npu_kernels

        return npu_kernels
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
