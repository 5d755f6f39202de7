"""Checkpoint key remapping: rename, drop and merge tensors of safetensors checkpoints.

    from porter.weights import load_rules, remap_checkpoint
    result = remap_checkpoint("upstream/", "ported/", load_rules("rules.yaml"), verify=True)

`porter remap SRC DST --rules rules.yaml` is the click command `porter.weights.cli.remap`, also
reachable as `porter.weights.remap` (imported on first access, so library users do not pay for
click/rich). A recipe's `weights:` section is a `WeightsSpec`. Names only change: tensor bytes are copied by range, never loaded
(except merges along a dim > 0, which read just those tensors, a block at a time).
"""

from porter.weights.checkpoint import Checkpoint, open_checkpoint
from porter.weights.errors import VerifyError, WeightsError
from porter.weights.format import MAX_HEADER_BYTES, Header, TensorEntry, read_header
from porter.weights.plan import MappingRow, Plan, SourceTensor, Target, plan_keys
from porter.weights.apply import RemapResult, remap_checkpoint, verify_output, verify_remap
from porter.weights.rules import Merge, Rename, Rule, WeightsSpec, load_rules, parse_rules
from porter.weights.state_dict import plan_state_dict, remap_state_dict

__all__ = [
    "Checkpoint",
    "Header",
    "MAX_HEADER_BYTES",
    "MappingRow",
    "Merge",
    "Plan",
    "RemapResult",
    "Rename",
    "Rule",
    "SourceTensor",
    "Target",
    "TensorEntry",
    "VerifyError",
    "WeightsError",
    "WeightsSpec",
    "load_rules",
    "open_checkpoint",
    "parse_rules",
    "plan_keys",
    "plan_state_dict",
    "read_header",
    "remap",
    "remap_checkpoint",
    "remap_state_dict",
    "verify_output",
    "verify_remap",
]


def __getattr__(name: str):  # the click command, loaded lazily (PEP 562)
    if name == "remap":
        from porter.weights.cli import remap

        return remap
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
