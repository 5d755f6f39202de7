"""The same rules over an in-memory state dict (torch tensors): for tests and for recipe checks
such as "the upstream checkpoint's names load into the ported model with no missing keys"."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from porter.weights.plan import Plan, SourceTensor, plan_keys
from porter.weights.rules import Rule, WeightsSpec

_TORCH_DTYPES = {
    "torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
    "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8",
    "torch.uint8": "U8", "torch.bool": "BOOL", "torch.uint16": "U16", "torch.uint32": "U32",
    "torch.uint64": "U64", "torch.complex64": "C64", "torch.float8_e4m3fn": "F8_E4M3",
    "torch.float8_e5m2": "F8_E5M2",
}


def plan_state_dict(state_dict: Mapping[str, Any], spec: WeightsSpec | Sequence[Rule]) -> Plan:
    """The plan `spec` gives for a state dict's names, dtypes and shapes (nothing is copied)."""
    rules = spec.rules if isinstance(spec, WeightsSpec) else tuple(spec)
    sources = [
        SourceTensor(k, _TORCH_DTYPES.get(str(v.dtype), str(v.dtype)), tuple(v.shape))
        for k, v in state_dict.items()
    ]
    return plan_keys(sources, rules, origin="state dict")


def remap_state_dict(state_dict: Mapping[str, Any], spec: WeightsSpec | Sequence[Rule]) -> dict[str, Any]:
    """A new dict with keys renamed/dropped and merges applied (`torch.cat`); order kept."""
    plan = plan_state_dict(state_dict, spec)
    out: dict[str, Any] = {}
    for t in plan.targets:
        if t.merged:
            import torch

            out[t.name] = torch.cat([state_dict[p.name] for p in t.parts], dim=t.dim)
        else:
            out[t.name] = state_dict[t.parts[0].name]
    return out
