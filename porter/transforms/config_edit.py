"""config-edit: set values in JSON/YAML files shipped with a model, touching only those values."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from porter.transforms._base import Change, Context, Example, Outcome, Safety, TextTransform


class Edit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str = Field(min_length=1, description="dotted path, e.g. attn_implementation or llm_config.attn_implementation")
    value: Any = Field(description="the new value")
    when: Any = Field(None, description="only when the current value equals this (omit: any current value)")


def _get(data: Any, path: list[str]) -> tuple[bool, Any]:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return False, None
        data = data[part]
    return True, data


def _set(data: Any, path: list[str], value: Any) -> Any:
    import copy

    data = copy.deepcopy(data)
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return data


def _literal(value: Any, fmt: str, quote: str = '"') -> str:
    if fmt == "json":
        return json.dumps(value, ensure_ascii=False)
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    return text.removesuffix("\n...").strip()


class ConfigEdit(TextTransform):
    """Set values in JSON or YAML config files shipped with the model (e.g. an attention default).

    Only the text of the edited value changes; key order, indentation and every other byte of the
    file stay as they were, so the diff shows exactly the edit. Each edit names a dotted `key`,
    the new `value`, and optionally `when` (the current value it expects). A file where the key is
    absent, or holds another value than `when`, is left alone. The result is parsed again and must
    equal the original with only that key changed. Changes are labelled recipe-specific and carry
    the recipe's `reason`.
    """

    name = "config-edit"
    safety = Safety.RECIPE
    default_files = ("**/config.json",)

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        edits: tuple[Edit, ...] = Field(min_length=1)
        reason: str = Field(min_length=1, description="why (shown in the report)")

    def could_match(self, text: str) -> bool:
        return any(e.key.rsplit(".", 1)[-1] in text for e in self.params.edits)

    def apply(self, text: str, ctx: Context) -> Outcome:
        fmt = "json" if ctx.path.endswith(".json") else "yaml"
        load = json.loads if fmt == "json" else yaml.safe_load
        data = load(text)
        changes: list[Change] = []
        for edit in self.params.edits:
            path = edit.key.split(".")
            present, current = _get(data, path)
            if not present or current == edit.value:
                continue
            if "when" in edit.model_fields_set and current != edit.when:
                continue
            want = _set(data, path, edit.value)
            key = re.escape(path[-1])
            if fmt == "json":
                pattern = re.compile(rf'("{key}"\s*:\s*)(' + _JSON_VALUE + ")")
            else:
                pattern = re.compile(rf"(^[ \t-]*['\"]?{key}['\"]?[ \t]*:[ \t]*)([^\n#]*?)([ \t]*(#[^\n]*)?)$", re.M)
            for m in pattern.finditer(text):
                new_text = text[: m.start(2)] + _literal(edit.value, fmt) + text[m.end(2):]
                try:
                    if load(new_text) != want:
                        continue
                except (ValueError, yaml.YAMLError):
                    continue
                line = text.count("\n", 0, m.start()) + 1
                changes.append(Change(
                    file=ctx.path, line=line, end_line=line + m.group(0).count("\n"),
                    transform=self.name, before=m.group(0).strip(),
                    after=(m.group(1) + _literal(edit.value, fmt)).strip(),
                    safety=self.safety, reason=self.params.reason, step=ctx.step,
                ))
                text, data = new_text, want
                break
        return Outcome(text=text, changes=tuple(changes))

    examples = [
        Example(
            id="json-attn-default",
            path="config.json",
            params={"edits": [{"key": "attn_implementation", "value": "sdpa", "when": "flash_attention_2"}],
                    "reason": "flash-attention kernels do not exist on npu"},
            before='{\n  "hidden_size": 896,\n  "attn_implementation": "flash_attention_2",\n  "vocab_size": 151936\n}\n',
            after='{\n  "hidden_size": 896,\n  "attn_implementation": "sdpa",\n  "vocab_size": 151936\n}\n',
        ),
        Example(
            id="json-nested",
            path="config.json",
            params={"edits": [{"key": "llm_config._attn_implementation", "value": "sdpa"}], "reason": "r"},
            before='{"audio_config": {"_attn_implementation": "flash_attention_2"},\n'
                   ' "llm_config": {"_attn_implementation": "flash_attention_2"}}\n',
            after='{"audio_config": {"_attn_implementation": "flash_attention_2"},\n'
                  ' "llm_config": {"_attn_implementation": "sdpa"}}\n',
        ),
        Example(
            id="yaml-keeps-comment",
            path="model.yaml",
            params={"edits": [{"key": "model.attn", "value": "sdpa"}], "reason": "r"},
            before="model:\n  attn: flash_attention_2  # fast on A100\n  layers: 4\n",
            after="model:\n  attn: sdpa  # fast on A100\n  layers: 4\n",
        ),
        Example(
            id="other-value-left-alone",
            path="config.json",
            params={"edits": [{"key": "attn_implementation", "value": "sdpa", "when": "flash_attention_2"}],
                    "reason": "r"},
            before='{"attn_implementation": "eager"}\n',
        ),
        Example(
            id="absent-key-left-alone",
            path="config.json",
            params={"edits": [{"key": "attn_implementation", "value": "sdpa"}], "reason": "r"},
            before='{"note": "attn_implementation is chosen at run time"}\n',
        ),
    ]


_JSON_VALUE = r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null'
