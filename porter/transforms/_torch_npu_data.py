"""What torch_npu itself says has an npu counterpart: its `transfer_to_npu` tables, as data.

`torch_npu.contrib.transfer_to_npu` is Ascend's blanket monkey-patch: it rebinds `torch.cuda`
(and `torch.cuda.amp`, `torch.cuda.random`, ...) to `torch_npu.npu` and rewrites "cuda" device
arguments of a fixed list of functions to "npu". Those tables are the best statement of which CUDA
APIs torch_npu answers for, so the transforms derive their lists from them instead of guessing.

`porter.npu.kernels` (`porter npu-kernels`) reads them out of the torch_npu wheel with `ast` into
`porter/data/torch_npu_transfer-<version>.json`; this module only loads that file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class TorchNpuData:
    """torch_npu's own tables for one release."""

    version: str
    cuda_to_npu: frozenset[str]  # X such that transfer_to_npu makes torch.cuda.X be torch.npu.X
    module_patches: dict[str, str]  # "torch.cuda.amp" -> "torch_npu.npu.amp"
    attribute_patches: dict[str, str]  # "torch.get_autocast_gpu_dtype" -> "torch.npu.get_autocast_dtype"
    device_argument_functions: dict[str, tuple[str, ...]]  # "torch.cuda" -> ("set_device", ...)
    device_keyword_arguments: tuple[str, ...]  # ("device", "device_type", "map_location", "device_id")

    def has_npu_counterpart(self, name: str) -> bool:
        """Whether `torch.cuda.<name>` is `torch.npu.<name>` under transfer_to_npu."""
        return name in self.cuda_to_npu

    def takes_device(self, module: str, name: str) -> bool:
        """Whether transfer_to_npu rewrites "cuda" arguments of `<module>.<name>`."""
        return name in self.device_argument_functions.get(module, ())


def data_path(version: str) -> Path:
    return DATA_DIR / f"torch_npu_transfer-{version}.json"


def check_version(version: str) -> str:
    """A Params validator: the release must have a data file (names the ones that do). A value that
    is not a release number (a path, a name too long for the file system) is refused before any file
    is looked up."""
    if not re.fullmatch(r"[0-9][0-9A-Za-z.+_-]{0,63}", version) or not data_path(version).is_file():
        have = sorted(p.name[len("torch_npu_transfer-"):-len(".json")] for p in DATA_DIR.glob("torch_npu_transfer-*.json"))
        raise ValueError(f"no transfer_to_npu data for torch_npu {version[:64]!r} (porter has: {', '.join(have) or 'none'}); "
                         "write it with `porter npu-kernels`")
    return version


@lru_cache(maxsize=None)
def load(version: str = "2.14.0") -> TorchNpuData:
    """Read the tables; a missing file says which command writes it."""
    path = data_path(version)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: write it from the torch_npu {version} wheel with `porter npu-kernels`"
        )
    raw = json.loads(path.read_text(encoding="utf-8"))
    return TorchNpuData(
        version=raw["torch_npu"],
        cuda_to_npu=frozenset(raw["cuda_to_npu"]),
        module_patches=dict(raw["module_patches"]),
        attribute_patches=dict(raw["attribute_patches"]),
        device_argument_functions={k: tuple(v) for k, v in raw["device_argument_functions"].items()},
        device_keyword_arguments=tuple(raw["device_keyword_arguments"]),
    )
