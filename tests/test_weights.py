"""Checkpoint key remapping on real safetensors files written here from tiny torch tensors.

Every output is read back with the real `safetensors` library and compared with the source
tensors; sharded checkpoints are real shard files plus a real index.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from porter.weights import (
    MappingRow,
    VerifyError,
    WeightsError,
    WeightsSpec,
    load_rules,
    parse_rules,
    plan_state_dict,
    read_header,
    remap_checkpoint,
    remap_state_dict,
    verify_remap,
)
from porter.weights.cli import remap as remap_cmd

# -- helpers ------------------------------------------------------------------------------------


def upstream_state_dict() -> dict[str, torch.Tensor]:
    """Names in the patterns the Ming-omni-tts checkpoint uses (nested Sequentials, buffers)."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {
        "model.layers.0.mlp.ff.0.0.weight": r(8, 4),
        "model.layers.0.mlp.ff.2.weight": r(4, 8),
        "model.layers.0.attn.to_out.0.weight": r(4, 4),
        "model.layers.1.mlp.ff.0.0.weight": r(8, 4),
        "model.layers.1.mlp.ff.2.weight": r(4, 8),
        "model.layers.1.attn.to_out.0.weight": r(4, 4),
        "model.time_mlp.0.weight": r(4, 2),
        "model.time_mlp.2.weight": r(4, 4),
        "model.rotary_embed.inv_freq": r(3),  # 12 bytes: dropping it shifts what follows
        "model.istft.window": r(16),
        "model.norm.weight": r(4).to(torch.bfloat16),
        "model.embed.weight": r(5, 4).to(torch.float16),
        "model.codebook_ids": torch.arange(7, dtype=torch.int64),
        "model.mask": torch.tensor([True, False, True]),
        "model.scalar": torch.tensor(3.0),
        "model.empty": torch.zeros(0, 4),
    }


RULES_YAML = r"""
# Ming-style renames: nested Sequential -> flat names, drop the rotary buffer.
- rename: {from: '\.mlp\.ff\.0\.0\.', to: '.mlp.ff.0.'}
  required: true
- rename: {from: '\.attn\.to_out\.0\.', to: '.attn.to_out.'}
- rename: {from: '^model\.time_mlp\.(\d+)\.', to: 'model.time_embed.\1.'}
- drop: 'rotary_embed\.inv_freq$'
  required: true
- strip_prefix: "model."
- add_prefix: "backbone."
  match: '^layers\.'
"""


def expected_name(old: str) -> str | None:
    if old.endswith("inv_freq"):
        return None
    new = old.replace(".mlp.ff.0.0.", ".mlp.ff.0.").replace(".attn.to_out.0.", ".attn.to_out.")
    new = new.replace("model.time_mlp.", "model.time_embed.")
    new = new.removeprefix("model.")
    return "backbone." + new if new.startswith("layers.") else new


def raw_header(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n))


def write_sharded(root: Path, sd: dict[str, torch.Tensor], groups: list[list[str]], metadata=None) -> Path:
    """A Hugging Face style sharded checkpoint: model-0000i-of-0000n.safetensors + index."""
    root.mkdir(parents=True)
    weight_map = {}
    total = 0
    for i, keys in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: sd[k] for k in keys}, root / name, metadata={"format": "pt", "shard": str(i)})
        for k in keys:
            weight_map[k] = name
            total += sd[k].numel() * sd[k].element_size()
    index = {"metadata": {"total_size": total, "producer": "test"}, "weight_map": dict(sorted(weight_map.items()))}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (root / "config.json").write_text("{}")
    return root


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# -- single file --------------------------------------------------------------------------------


def test_single_file_rename_strip_add_drop(tmp_path: Path) -> None:
    sd = upstream_state_dict()
    src, dst = tmp_path / "up.safetensors", tmp_path / "out.safetensors"
    save_file(sd, src, metadata={"format": "pt", "note": "upstream"})
    result = remap_checkpoint(src, dst, parse_rules(RULES_YAML), verify=True)

    out = load_file(dst)
    expected = {expected_name(k): v for k, v in sd.items() if expected_name(k)}
    assert list(out) and set(out) == set(expected)
    for name, tensor in expected.items():
        assert out[name].dtype == tensor.dtype and torch.equal(out[name], tensor), name
    with safe_open(dst, "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "upstream"}

    # Header key order is the source's, with names mapped and the dropped key gone.
    _, src_header = raw_header(src)
    _, dst_header = raw_header(dst)
    mapped = [expected_name(k) for k in src_header if k != "__metadata__"]
    assert [k for k in dst_header if k != "__metadata__"] == [m for m in mapped if m]
    assert next(iter(dst_header)) == "__metadata__"

    assert result.verified and result.copy_method in ("copy_file_range", "sendfile", "read/write")
    c = result.counts()
    assert c["tensors_in"] == len(sd) and c["tensors_out"] == len(sd) - 1 and c["dropped"] == 1
    assert c["kept"] == 0  # every key loses `model.`
    assert c["bytes_in"] - c["bytes_out"] == 12
    row = next(r for r in result.rows if r.old == "model.layers.1.mlp.ff.0.0.weight")
    assert row == MappingRow(
        "model.layers.1.mlp.ff.0.0.weight", "backbone.layers.1.mlp.ff.0.weight", "F32", (8, 4),
        "up.safetensors", "renamed", (0, 4, 5),
    )
    dropped = next(r for r in result.rows if r.action == "dropped")
    assert (dropped.old, dropped.new, dropped.rules) == ("model.rotary_embed.inv_freq", None, (3,))
    assert "| `model.rotary_embed.inv_freq` | - | F32 | [3] | up.safetensors | dropped | rules[3] |" in result.markdown()
    assert leftovers(tmp_path, {"up.safetensors", "out.safetensors"}) == []


def test_output_header_is_padded_and_every_tensor_stays_aligned(tmp_path: Path) -> None:
    # Dropping odd-sized tensors shifts what follows; alignment must survive.
    sd = {
        "a.f64": torch.randn(3, dtype=torch.float64),
        "b.f32": torch.randn(3),
        "c.f32": torch.randn(5),
        "d.f16": torch.randn(3).half(),
        "e.f16": torch.randn(7).half(),
        "f.u8": torch.arange(3, dtype=torch.uint8),
        "g.i64": torch.arange(5),
    }
    src, dst = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(sd, src)
    remap_checkpoint(src, dst, parse_rules("- drop: '^(b|d)\\.'\n- rename: {from: '^(\\w)\\.', to: 'renamed_\\1_'}"))
    n, header = raw_header(dst)
    assert n % 8 == 0
    data_start = 8 + n
    sizes = {"F64": 8, "I64": 8, "F32": 4, "F16": 2, "U8": 1}
    for name, info in header.items():
        assert (data_start + info["data_offsets"][0]) % sizes[info["dtype"]] == 0, name
    out = load_file(dst)
    assert torch.equal(out["renamed_e_f16"], sd["e.f16"]) and torch.equal(out["renamed_g_i64"], sd["g.i64"])
    assert set(out) == {"renamed_a_f64", "renamed_c_f32", "renamed_e_f16", "renamed_f_u8", "renamed_g_i64"}


def test_an_unsorted_source_layout_is_realigned_when_a_drop_would_misalign(tmp_path: Path) -> None:
    # Valid and aligned, but not in safetensors' own order: F16 data before F32 data.
    h1, h2, w = torch.randn(3).half(), torch.randn(1).half(), torch.randn(2)
    header = {
        "h1": {"dtype": "F16", "shape": [3], "data_offsets": [0, 6]},
        "h2": {"dtype": "F16", "shape": [1], "data_offsets": [6, 8]},
        "w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
    }
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    src = tmp_path / "s.safetensors"
    src.write_bytes(struct.pack("<Q", len(body)) + body + h1.numpy().tobytes() + h2.numpy().tobytes() + w.numpy().tobytes())
    assert torch.equal(load_file(src)["w"], w)
    dst = tmp_path / "o.safetensors"
    remap_checkpoint(src, dst, parse_rules("- drop: '^h2$'"), verify=True)
    _, out = raw_header(dst)
    assert list(out) == ["h1", "w"]  # header order kept
    assert out["w"]["data_offsets"] == [0, 8] and out["h1"]["data_offsets"] == [8, 14]  # data realigned
    loaded = load_file(dst)
    assert torch.equal(loaded["w"], w) and torch.equal(loaded["h1"], h1)


def test_rules_run_in_order_each_seeing_the_previous_names(tmp_path: Path) -> None:
    src = tmp_path / "s.safetensors"
    save_file({"module.enc.w": torch.ones(2), "module.dec.w": torch.zeros(2)}, src)
    rules = parse_rules(
        "- strip_prefix: module.\n"
        "- rename: {from: '^enc\\.', to: 'encoder.'}\n"
        "- rename: {from: '^encoder\\.(?P<p>\\w+)$', to: 'encoder.\\g<p>eight'}\n"
    )
    result = remap_checkpoint(src, tmp_path / "o.safetensors", rules)
    # save_file orders the header by dtype then name; rows follow the source header.
    assert [(r.old, r.new) for r in result.rows] == [("module.dec.w", "dec.w"), ("module.enc.w", "encoder.weight")]
    assert set(load_file(tmp_path / "o.safetensors")) == {"encoder.weight", "dec.w"}


# -- sharded ------------------------------------------------------------------------------------


def test_sharded_directory_keeps_sharding_index_and_metadata(tmp_path: Path) -> None:
    sd = upstream_state_dict()
    keys = list(sd)
    src = write_sharded(tmp_path / "up", sd, [keys[:6], keys[6:11], keys[11:]])
    dst = tmp_path / "ported"
    runner = CliRunner()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_YAML)
    res = runner.invoke(remap_cmd, [str(src), str(dst), "--rules", str(rules), "--verify", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["verified"] is True and report["index"] == "model.safetensors.index.json"

    shards = sorted(p.name for p in src.glob("*.safetensors"))
    assert sorted(p.name for p in dst.iterdir()) == sorted(shards + ["model.safetensors.index.json"])
    src_index = json.loads((src / "model.safetensors.index.json").read_text())
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    # Same sharding, same order as the source index, names mapped, dropped key gone.
    expected_map = {expected_name(k): v for k, v in src_index["weight_map"].items() if expected_name(k)}
    assert index["weight_map"] == expected_map
    assert list(index["weight_map"]) == list(expected_map)
    assert index["metadata"] == {"total_size": src_index["metadata"]["total_size"] - 12, "producer": "test"}
    for shard in shards:
        out = load_file(dst / shard)
        assert set(out) == {k for k, v in expected_map.items() if v == shard}
        with safe_open(dst / shard, "pt") as f:
            assert f.metadata() == {"format": "pt", "shard": str(int(shard[6:11]))}
    loaded = {k: v for shard in shards for k, v in load_file(dst / shard).items()}
    for old, tensor in sd.items():
        if expected_name(old):
            assert torch.equal(loaded[expected_name(old)], tensor)
    assert leftovers(tmp_path, {"up", "ported", "rules.yaml"}) == []


def test_directory_without_index_is_remapped_file_by_file(tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    src.mkdir()
    save_file({"module.a": torch.ones(2)}, src / "model.safetensors")
    save_file({"module.b": torch.zeros(3)}, src / "extra.safetensors")
    result = remap_checkpoint(src, tmp_path / "out", parse_rules("- strip_prefix: module.\n  required: true"), verify=True)
    assert result.index is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["extra.safetensors", "model.safetensors"]
    assert list(load_file(tmp_path / "out" / "model.safetensors")) == ["a"]
    assert list(load_file(tmp_path / "out" / "extra.safetensors")) == ["b"]


# -- merges -------------------------------------------------------------------------------------


def test_merges_along_dim0_and_dim1_equal_torch_cat_across_shards(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    sd = {
        "proj.frozen": torch.randn(3, 4, generator=g),
        "proj.trainable": torch.randn(2, 4, generator=g),
        "qkv.q": torch.randn(2, 3, 2, generator=g).to(torch.bfloat16),
        "qkv.kv": torch.randn(2, 5, 2, generator=g).to(torch.bfloat16),
        "other": torch.randn(2, generator=g),
    }
    src = write_sharded(tmp_path / "src", sd, [["proj.frozen", "qkv.q"], ["proj.trainable", "qkv.kv", "other"]])
    spec = WeightsSpec.model_validate(
        {
            "rules": [
                {"merge": {"sources": ["proj.frozen", "proj.trainable"], "into": "proj.weight", "dim": 0}},
                {"merge": {"sources": ["qkv.q", "qkv.kv"], "into": "qkv.weight", "dim": -2}},
            ],
            "verify": True,
        }
    )
    result = remap_checkpoint(src, tmp_path / "out", spec)
    assert result.verified
    assert result.counts()["merged"] == 4 and result.counts()["merge_targets"] == 2
    shard1 = load_file(tmp_path / "out" / "model-00001-of-00002.safetensors")
    shard2 = load_file(tmp_path / "out" / "model-00002-of-00002.safetensors")
    assert set(shard1) == {"proj.weight", "qkv.weight"} and set(shard2) == {"other"}
    assert torch.equal(shard1["proj.weight"], torch.cat([sd["proj.frozen"], sd["proj.trainable"]], 0))
    assert torch.equal(shard1["qkv.weight"], torch.cat([sd["qkv.q"], sd["qkv.kv"]], 1))
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["proj.weight"] == "model-00001-of-00002.safetensors"
    # The same rules over the state dict in memory give the same tensors.
    in_memory = remap_state_dict(sd, spec)
    assert list(in_memory) == ["proj.weight", "qkv.weight", "other"]
    for k, v in in_memory.items():
        assert torch.equal(v, {**shard1, **shard2}[k])


def test_dim1_merge_larger_than_one_block_is_interleaved_block_by_block(tmp_path: Path) -> None:
    # 4096 rows of 2800 bytes: more than one 8 MB block, so the block loop and strided verify run.
    a, b = torch.randn(4096, 300), torch.randn(4096, 400)
    src, dst = tmp_path / "s.safetensors", tmp_path / "o.safetensors"
    save_file({"a": a, "b": b}, src)
    result = remap_checkpoint(src, dst, parse_rules("- merge: {sources: [a, b], into: ab, dim: 1}"), verify=True)
    assert result.verified
    assert torch.equal(load_file(dst)["ab"], torch.cat([a, b], 1))


@pytest.mark.parametrize(
    ("merge", "message"),
    [
        ({"sources": ["a", "missing"], "into": "m"}, "source 'missing' not found"),
        ({"sources": ["a", "half"], "into": "m"}, "'half' is F16 but 'a' is F32"),
        ({"sources": ["a", "wide"], "into": "m", "dim": 0}, "differ outside dim 0"),
        ({"sources": ["a", "b"], "into": "m", "dim": 2}, "dim 2 is out of range"),
    ],
)
def test_merge_problems_are_errors_before_writing(tmp_path: Path, merge: dict, message: str) -> None:
    src = tmp_path / "s.safetensors"
    save_file(
        {"a": torch.ones(2, 3), "b": torch.ones(1, 3), "half": torch.ones(2, 3).half(), "wide": torch.ones(2, 4)}, src
    )
    with pytest.raises(WeightsError, match=message) as info:
        remap_checkpoint(src, tmp_path / "o.safetensors", WeightsSpec(rules=[{"merge": merge}]))
    assert str(src) in str(info.value)
    assert leftovers(tmp_path, {"s.safetensors"}) == []


# -- errors found before anything is written ------------------------------------------------------


def test_duplicate_targets_are_reported_together_and_nothing_is_written(tmp_path: Path) -> None:
    src = tmp_path / "s.safetensors"
    save_file({"enc.0.w": torch.ones(1), "enc.1.w": torch.ones(1), "dec.w": torch.ones(1), "x.w": torch.ones(1)}, src)
    rules = parse_rules(
        "- rename: {from: '^enc\\.\\d+\\.', to: 'enc.'}\n"
        "- merge: {sources: [enc.w, dec.w], into: x.w}\n"
    )
    with pytest.raises(WeightsError) as info:
        remap_checkpoint(src, tmp_path / "o.safetensors", rules)
    text = str(info.value)
    assert "source 'enc.w' names 2 tensors" in text
    rules = parse_rules("- rename: {from: '^enc\\.\\d+\\.', to: 'enc.'}")
    with pytest.raises(WeightsError, match=r"'enc.0.w' and 'enc.1.w' would all become 'enc.w'"):
        remap_checkpoint(src, tmp_path / "o.safetensors", rules)
    rules = parse_rules("- merge: {sources: [enc.0.w, dec.w], into: x.w}")
    with pytest.raises(WeightsError, match=r"would all become 'x.w'"):
        remap_checkpoint(src, tmp_path / "o.safetensors", rules)
    assert leftovers(tmp_path, {"s.safetensors"}) == []


def test_required_rule_that_matches_nothing_is_an_error_optional_one_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "s.safetensors"
    save_file({"a.w": torch.ones(1)}, src)
    with pytest.raises(WeightsError, match=r"rules\[1\] \(drop 'inv_freq'\) is required but matched no key"):
        remap_checkpoint(src, tmp_path / "o.safetensors", parse_rules("- drop: nothing\n- drop: inv_freq\n  required: true"))
    result = remap_checkpoint(src, tmp_path / "o.safetensors", parse_rules("- drop: nothing\n- rename: {from: a, to: b}"))
    assert result.unmatched_rules == ("rules[0] (drop 'nothing')",)
    assert list(load_file(tmp_path / "o.safetensors")) == ["b.w"]


def test_state_dict_plan_makes_upstream_names_load_into_the_ported_module() -> None:
    class Ported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ff = torch.nn.ModuleDict({"0": torch.nn.Linear(4, 8, bias=False), "2": torch.nn.Linear(8, 4, bias=False)})

    upstream = {"ff.0.0.weight": torch.randn(8, 4), "ff.2.weight": torch.randn(4, 8), "rotary.inv_freq": torch.ones(2)}
    spec = parse_rules("- rename: {from: '^ff\\.0\\.0\\.', to: 'ff.0.'}\n- drop: 'inv_freq$'")
    model = Ported()
    missing, unexpected = model.load_state_dict(remap_state_dict(upstream, spec), strict=False)
    assert (missing, unexpected) == ([], [])
    assert plan_state_dict(upstream, spec).counts()["dropped"] == 1


# -- verify ---------------------------------------------------------------------------------------


def test_verify_detects_a_changed_byte_and_names_the_tensor(tmp_path: Path) -> None:
    sd = upstream_state_dict()
    src, dst = tmp_path / "s.safetensors", tmp_path / "o.safetensors"
    save_file(sd, src)
    spec = parse_rules(RULES_YAML)
    remap_checkpoint(src, dst, spec)
    assert verify_remap(src, dst, spec) == len(sd) - 1
    header = read_header(dst)
    entry = next(t for t in header.tensors if t.name == "backbone.layers.0.mlp.ff.2.weight")
    with open(dst, "r+b") as f:
        f.seek(header.data_start + entry.begin + 5)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(VerifyError, match=r"bytes of 'backbone.layers.0.mlp.ff.2.weight' differ"):
        verify_remap(src, dst, spec)


# -- rules files --------------------------------------------------------------------------------


def test_rules_file_forms_and_the_recipe_section_model(tmp_path: Path) -> None:
    listed = tmp_path / "list.yaml"
    listed.write_text("- strip_prefix: module.\n- drop: inv_freq\n  required: true\n")
    mapping = tmp_path / "map.yaml"
    mapping.write_text("verify: true\nrules:\n  - strip_prefix: module.\n  - drop: inv_freq\n    required: true\n")
    a, b = load_rules(listed), load_rules(mapping)
    assert a.rules == b.rules and (a.verify, b.verify) == (False, True)
    assert b.rules[1].required and b.rules[1].action == "drop"
    # A recipe's `weights:` section validates into the same frozen model.
    spec = WeightsSpec.model_validate({"rules": [{"rename": {"from": "a", "to": "b"}}], "verify": True})
    assert spec.rules[0].rename.from_ == "a"
    with pytest.raises(Exception):
        spec.verify = False  # type: ignore[misc]
    with pytest.raises(Exception, match="Extra inputs"):
        WeightsSpec.model_validate({"rules": [], "verfiy": True})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- renam: {from: a, to: b}\n", "rules.yaml:1: rules[0].renam: unknown key (did you mean 'rename'?)"),
        ("- drop: x\n- drop: '(unclosed'\n", "rules.yaml:2: rules[1].drop: bad regex '(unclosed'"),
        ("- rename: {from: '^(a)\\.', to: '\\2.'}\n", "rules.yaml:1: rules[0].rename: `to` refers to group 2"),
        ("- drop: x\n  strip_prefix: y\n", "a rule takes exactly one of rename, strip_prefix"),
        ("- drop: x\n  match: y\n", "`match` only applies to strip_prefix and add_prefix"),
        ("- merge: {sources: [a], into: b}\n", "rules[0].merge.sources: Tuple should have at least 2 items"),
        ("- drop: [x\n", "rules.yaml:2: bad YAML"),
        ("42\n", "expected a list of rules"),
        ("", "the rules file is empty"),
    ],
)
def test_bad_rules_files_name_the_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(WeightsError) as info:
        load_rules(path)
    assert message in str(info.value).replace(str(tmp_path) + "/", "")


# -- CLI ----------------------------------------------------------------------------------------


def test_cli_markdown_dry_run_force_and_same_path(tmp_path: Path) -> None:
    src, dst, rules = tmp_path / "s.safetensors", tmp_path / "o.safetensors", tmp_path / "r.yaml"
    save_file({"module.a": torch.ones(2), "module.inv_freq": torch.ones(1)}, src)
    rules.write_text("- strip_prefix: module.\n- drop: inv_freq\n")
    runner = CliRunner()

    res = runner.invoke(remap_cmd, [str(src), str(dst), "--rules", str(rules), "--dry-run"])
    assert res.exit_code == 0 and not dst.exists()
    assert "| `module.a` | `a` | F32 | [2] | s.safetensors | renamed | rules[0] |" in res.stdout
    assert "would write 1 tensors" in res.stderr

    res = runner.invoke(remap_cmd, [str(src), str(dst), "--rules", str(rules)])
    assert res.exit_code == 0 and list(load_file(dst)) == ["a"]
    res = runner.invoke(remap_cmd, [str(src), str(dst), "--rules", str(rules)])
    assert res.exit_code == 2 and "already exists; remove it or pass --force" in res.stderr
    rules.write_text("- strip_prefix: module.\n- drop: inv_freq\n- add_prefix: new.\n")
    res = runner.invoke(remap_cmd, [str(src), str(dst), "--rules", str(rules), "--force"])
    assert res.exit_code == 0 and list(load_file(dst)) == ["new.a"]

    res = runner.invoke(remap_cmd, [str(src), str(src), "--rules", str(rules), "--force"])
    assert res.exit_code == 2 and "is the source checkpoint" in res.stderr
    assert list(load_file(src)) == ["module.a", "module.inv_freq"]
    assert leftovers(tmp_path, {"s.safetensors", "o.safetensors", "r.yaml"}) == []


def test_cli_force_replaces_an_existing_directory(tmp_path: Path) -> None:
    sd = {"a": torch.ones(2), "b": torch.zeros(2)}
    src = write_sharded(tmp_path / "src", sd, [["a"], ["b"]])
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "stale.txt").write_text("old")
    rules = tmp_path / "r.yaml"
    rules.write_text("- add_prefix: m.\n")
    res = CliRunner().invoke(remap_cmd, [str(src), str(dst), "--rules", str(rules), "--force", "--verify"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in dst.iterdir()) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    assert leftovers(tmp_path, {"src", "dst", "r.yaml"}) == []
