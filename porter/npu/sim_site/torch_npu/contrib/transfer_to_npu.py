"""Stand-in for torch_npu.contrib.transfer_to_npu inside npu-sim runs (not Ascend).

Applies the CUDA -> NPU mapping of the pinned torch_npu release, read from
porter/data/torch_npu_transfer-<version>.json (extracted from the real module by
`porter npu-kernels`): `torch.cuda.X` becomes `torch.npu.X` for every X torch_npu.npu exports,
`Tensor.cuda`/`Module.cuda`/`Tensor.is_cuda` become their npu counterparts, and the listed
functions get their "cuda" device arguments rewritten to "npu". Names the simulator does not
provide are left alone; `APPLIED` and `SKIPPED` say which were which.
"""

import functools
import importlib

import torch

import torch_npu  # noqa: F401  (installs the simulator)
from porter.npu.kernels import load_transfer

DATA = load_transfer()
APPLIED: list[str] = []
SKIPPED: list[str] = []


def _resolve(dotted):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def _npu(value, replace_int):
    if isinstance(value, str) and "cuda" in value:
        return value.replace("cuda", "npu")
    if isinstance(value, torch.device) and value.type == "cuda":
        return torch.device("npu", value.index) if value.index is not None else torch.device("npu")
    if replace_int and isinstance(value, int) and not isinstance(value, bool):
        return f"npu:{value}"
    if isinstance(value, dict):
        return {_npu(k, False): _npu(v, False) for k, v in value.items()}
    return value


def _device_args(fn, replace_int):
    keywords = set(DATA.get("device_keyword_arguments", ()))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = tuple(_npu(a, replace_int) for a in args)
        for key in keywords & kwargs.keys():
            kwargs[key] = _npu(kwargs[key], False)
        if isinstance(kwargs.get("device_ids"), (list, tuple)):
            kwargs["device_ids"] = type(kwargs["device_ids"])(_npu(d, replace_int) for d in kwargs["device_ids"])
        return fn(*args, **kwargs)

    wrapper.__porter_transfer_to_npu__ = True
    return wrapper


def _apply():
    for name in DATA["cuda_to_npu"]:
        if hasattr(torch.npu, name):
            setattr(torch.cuda, name, getattr(torch.npu, name))
            APPLIED.append(f"torch.cuda.{name}")
        else:
            SKIPPED.append(f"torch.cuda.{name}")
    for target, value in DATA["attribute_patches"].items():
        owner_name, _, attr = target.rpartition(".")
        owner, new = _resolve(owner_name), _resolve(value)
        if owner is None or new is None:
            SKIPPED.append(target)
            continue
        setattr(owner, attr, new)
        APPLIED.append(target)
    for owner_name, names in DATA["device_argument_functions"].items():
        owner = _resolve(owner_name)
        for name in names:
            fn = getattr(owner, name, None) if owner is not None else None
            if fn is None or getattr(fn, "__porter_transfer_to_npu__", False):
                SKIPPED.append(f"{owner_name}.{name}")
                continue
            setattr(owner, name, _device_args(fn, name in ("to", "to_empty")))
            APPLIED.append(f"{owner_name}.{name}")


_apply()
