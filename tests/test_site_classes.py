"""`safe` is earned per site: one test per class of site that porter once rewrote wrongly (issue 12).

Each class was seen in a real PyPI TTS package; the untouched upstream code was correct and the port
made it worse. Every case runs the real transforms (and, for class 3, the result under npu-sim) and
asserts on the one site analysis (porter/analysis.py) that the transforms and the scan both read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from porter.analysis import analyse_source, analyse_tree
from porter.npu.sim import sim_env
from porter.scan import scan_source
from porter.transforms import Context, all_transforms

ROOT = Path(__file__).resolve().parents[1]
T = all_transforms()


def run(name: str, text: str, **params):
    return T[name](params).apply(text, Context(path="m.py"))


def sites(text: str, line: int):
    return [s for s in analyse_source("m.py", text) if s.line == line]


# -- class 1: a comparison inside an argument that switches compilation on -------------------------
COMPILE_ARG = (
    "def load(model, compile, device):\n"
    '    model.prepare(compile=compile and "cuda" in str(device))\n'
    "    return model\n"
)


def test_class1_comparison_in_a_compile_argument_is_not_widened():
    out = run("widen-device-check", COMPILE_ARG)
    assert out.text == COMPILE_ARG and not out.changes
    [site] = sites(COMPILE_ARG, 2)
    assert (site.category, site.action, site.transform) == ("compile_gate", "keep", "compile-bypass")
    assert "compile=" in site.reason


def test_class1_module_compile_is_compilation():
    text = "class TTS:\n    def load(self):\n        self.compile(mode='max-autotune')\n        return self\n"
    [site] = sites(text, 3)
    assert (site.category, site.action, site.transform, site.kind) == ("compile", "decision", "compile-bypass",
                                                                       "method")
    out = run("compile-bypass", text)
    assert out.text == text
    assert [(f.line, f.category, f.transform) for f in out.findings] == [(3, "needs_decision", "compile-bypass")]
    # re.compile is not compilation
    assert not analyse_source("m.py", "import re\npattern = re.compile('x')\n")


def test_class1_module_compile_on_the_device_is_a_compile_gate():
    text = "def f(model, device):\n    if device == 'cuda':\n        model.compile()\n"
    assert run("widen-device-check", text).text == text
    assert [s.category for s in sites(text, 2)] == ["compile_gate"]


# -- class 2: a comparison that enables a custom CUDA kernel ---------------------------------------
def test_class2_custom_kernel_flag_stays_cuda_only():
    text = (
        "def build(device, cfg):\n"
        '    use_cuda_kernel = cfg.fast and str(device).startswith("cuda")\n'
        "    return Vocoder(use_cuda_kernel=use_cuda_kernel)\n"
    )
    out = run("widen-device-check", text)
    assert out.text == text
    [site] = sites(text, 2)
    assert (site.category, site.action) == ("kernel_gate", "keep")
    assert [f.line for f in out.findings] == [2]


def test_class2_kernel_flag_through_a_plain_name():
    text = (
        "def build(device):\n"
        '    fast = device.type == "cuda"\n'
        "    return Vocoder(use_custom_kernel=fast)\n"
    )
    assert run("widen-device-check", text).text == text
    [site] = sites(text, 2)
    assert site.category == "kernel_gate" and "use_custom_kernel=" in site.reason


# -- class 3: paired with a CUDA-only property ------------------------------------------------------
CAPABILITY = textwrap.dedent('''\
    import torch


    def pick_dtype(device):
        if "cuda" in device and torch.cuda.get_device_properties(device).major >= 7:
            return "float16"
        return "float32"
''')


def test_class3_capability_pair_is_not_widened_nor_sent_to_torch_npu():
    out = run("widen-device-check", CAPABILITY)
    assert out.text == CAPABILITY
    out = run("cuda-api", CAPABILITY)
    assert out.text == CAPABILITY
    assert [f.category for f in out.findings] == ["cuda_api"] and "CUDA-only" in out.findings[0].reason
    assert {(s.category, s.action) for s in sites(CAPABILITY, 5)} == {("device_check", "keep"), ("cuda_api", "keep")}


def test_class3_bound_properties_are_kept_too():
    text = ("import torch\n\ndef ok(d):\n    props = torch.cuda.get_device_properties(d)\n"
            "    return props.major >= 8\n")
    assert run("cuda-api", text).text == text


def _run_sim(code: str, tmp_path: Path) -> dict:
    script = tmp_path / "child.py"
    script.write_text("import json\n" + code)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(script)], env=sim_env(env), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_class3_under_npu_sim_the_widened_code_fails_and_the_port_runs(tmp_path):
    # What porter wrote before: the pair widened and the properties asked of torch.npu.
    widened = CAPABILITY.replace(
        '"cuda" in device and torch.cuda.get_device_properties(device)',
        '("cuda" in device or "npu" in device) and torch.npu.get_device_properties(device)')
    assert widened != CAPABILITY
    port = CAPABILITY
    for step in ("widen-device-check", "cuda-api", "import-order"):
        port = run(step, port).text
    (tmp_path / "widened.py").write_text(widened)
    (tmp_path / "ported.py").write_text(port)
    result = _run_sim(
        "import torch, torch_npu\nout = {}\n"
        "for name in ('widened', 'ported'):\n"
        "    try:\n"
        "        out[name] = __import__(name).pick_dtype('npu:0')\n"
        "    except Exception as exc:\n"
        "        out[name] = type(exc).__name__ + ': ' + str(exc)\n"
        "out['simulated'] = torch_npu.__porter_simulated__\n"
        "print(json.dumps(out))\n", tmp_path)
    assert result["simulated"] is True
    assert result["widened"].startswith("AttributeError") and "major" in result["widened"]
    assert result["ported"] == "float32"  # what the unported code chose on npu


# -- class 4: the widened branch asserts CUDA -------------------------------------------------------
def test_class4_branch_asserting_cuda_is_a_decision():
    text = 'import torch\n\ndef setup(device):\n    if "cuda" in device:\n        assert torch.cuda.is_available()\n'
    out = run("widen-device-check", text)
    assert out.text == text
    assert [(f.line, f.category) for f in out.findings] == [(4, "needs_decision")]
    assert "asserts CUDA" in out.findings[0].reason
    [site] = [s for s in sites(text, 4) if s.category == "device_check"]
    assert site.action == "decision" and site.context == 'line 4: if "cuda" in device:'


def test_class4_branch_raising_without_cuda_message_stays_rewritable():
    text = 'def setup(device):\n    if device == "cuda":\n        return 1\n    return 0\n'
    assert run("widen-device-check", text).changes


# -- class 5: is_cuda guarding state built only when CUDA is available ------------------------------
def test_class5_is_cuda_guarding_cuda_only_state_is_a_decision():
    text = textwrap.dedent('''\
        import torch


        class Attention:
            def __init__(self):
                if torch.cuda.is_available():
                    self.workspace = torch.empty(1 << 20, device="cuda")

            def forward(self, q):
                if q.is_cuda:
                    return fused(q, self.workspace)
                return q
    ''')
    out = run("widen-device-check", text)
    assert out.text == text
    assert [(f.line, f.category) for f in out.findings] == [(10, "needs_decision")]
    assert "torch.cuda.is_available()" in out.findings[0].reason
    # without the CUDA-only state, is_cuda is widened as before
    plain = text.replace("self.workspace", "self.scale")
    plain = plain.replace("        if torch.cuda.is_available():\n            self.scale", "        self.scale")
    assert run("widen-device-check", plain).changes


# -- class 6: import-order never moves an import above a statement it may depend on -------------------
def test_class6_import_is_not_moved_above_an_environment_setting():
    text = ("import os\nimport torch_npu\nfrom torch_npu.contrib import transfer_to_npu\n\n"
            'os.environ["HF_HUB_CACHE"] = "/data/hub"\nimport transformers\n')
    out = run("import-order", text)
    assert out.text == text
    assert [f.line for f in out.findings] == [6] and "line 5" in out.findings[0].reason


def test_class6_plain_torch_npu_import_changes_no_order():
    text = "import torch_npu\nimport warnings\nwarnings.simplefilter('ignore')\nimport transformers\n"
    assert run("import-order", text).text == text


def test_class6_only_imports_between_is_still_fixed():
    text = "import torch_npu\nfrom torch_npu.contrib import transfer_to_npu\nimport transformers\n"
    out = run("import-order", text)
    assert out.text.index("import transformers") < out.text.index("import torch_npu")


# -- class 7: what the scan sees, and how it reports it -------------------------------------------------
def test_class7_scan_sees_fstring_devices_cuda_with_an_argument_and_module_compile():
    text = ("def place(self, x, rank, device):\n    d = f'cuda:{rank}'\n    x = x.cuda(device)\n"
            "    self.compile()\n    return x\n")
    found = {(s.line, s.category) for s in scan_source(text)}
    assert found == {(2, "hardcoded_device"), (3, "hardcoded_device"), (4, "compile")}


def test_class7_findings_name_their_owner_and_whether_the_line_changed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "m.py").write_text(
        "import torch\nimport deepspeed\n\n\ndef f(x):\n"
        '    if x.device.type == "cuda": torch.cuda.nvtx.range_push("f")\n'
        '    torch.distributed.init_process_group(backend="nccl")\n'
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text("porter: 1\nname: s\nsource: {path: src}\nsteps:\n"
                      "  - use: widen-device-check\n  - use: attention-fallback\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "porter"), "apply", str(recipe), "--out",
                           str(tmp_path / "out"), "--no-smoke"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    findings = {f["line"]: f for f in json.loads((tmp_path / "out/s/report.json").read_text())["findings"]}
    assert "[owner: guard-import; line unchanged]" in findings[2]["reason"]
    assert "[owner: cuda-api; line changed]" in findings[6]["reason"]  # widened on this line
    assert "[owner: no transform; line unchanged]" in findings[7]["reason"]
    assert not any("attention-fallback" in f["reason"] for f in findings.values())


def test_analyse_tree_reads_files_and_skips_unreadable(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/a.py").write_text('x = y.to("cuda")\n')
    (tmp_path / "pkg/b.py").write_bytes(b"\xff\xfe not utf-8 cuda")
    (tmp_path / "pkg/c.py").write_text("def broken(:\n  cuda\n")
    got = analyse_tree(tmp_path)
    assert [(s.file, s.line, s.category, s.action) for s in got] == [("pkg/a.py", 1, "hardcoded_device", "rewrite")]
    assert analyse_tree(tmp_path, ["pkg/a.py"]) == got


def test_class4_branch_raising_on_cuda_absence_is_a_decision():
    # voxcpm's resolver shape: the CUDA branch raises when CUDA is not available
    text = ("import torch\n\ndef resolve(explicit):\n    if explicit.startswith('cuda'):\n"
            "        if not torch.cuda.is_available():\n"
            "            raise ValueError(f\"Requested device '{explicit}', but CUDA is not available.\")\n"
            "        return explicit\n    return 'cpu'\n")
    out = run("widen-device-check", text)
    assert out.text == text and [f.category for f in out.findings] == ["needs_decision"]


def test_sdp_kernel_selection_is_not_a_custom_kernel():
    text = ("import torch\n\ndef attend(q):\n    if q.device.type == 'cuda':\n"
            "        with torch.backends.cuda.sdp_kernel(enable_math=True):\n            return f(q)\n")
    assert run("widen-device-check", text).changes


# -- issue 10: nothing rewritten that npu cannot reach ---------------------------------------------------
BEHIND_A_GATE = (
    "import torch\n\n\ndef optimize(self):\n"
    '    if self.device != "cuda":\n        raise ValueError("can only be optimized on CUDA")\n'
    "    self.model = torch.compile(self.model.cuda())\n    torch.cuda.synchronize()\n"
)


@pytest.mark.parametrize("name", ["compile-bypass", "hardcoded-device", "cuda-api", "widen-device-check"])
def test_sites_only_cuda_reaches_are_left_alone_with_the_gate_line(name):
    out = run(name, BEHIND_A_GATE)
    assert out.text == BEHIND_A_GATE and not out.changes
    if name != "widen-device-check":  # the gate itself belongs to compile-bypass, which reports it
        assert any("behind the gate at line 5" in f.reason for f in out.findings), out.findings


def test_the_same_sites_without_the_gate_are_rewritten():
    ungated = BEHIND_A_GATE.replace(
        '    if self.device != "cuda":\n        raise ValueError("can only be optimized on CUDA")\n', "")
    for name in ("compile-bypass", "hardcoded-device", "cuda-api"):
        assert run(name, ungated).changes, name


def test_class5_coqui_attend_shape_tuple_unpacking_and_early_return():
    # coqui-tts 0.28.0 TTS/tts/layers/xtts/perceiver_encoder.py, Attend (reduced)
    text = textwrap.dedent('''\
        import torch


        class Attend:
            def __init__(self, use_flash=False):
                self.cpu_config = (True, True, True)
                self.cuda_config = None
                if not torch.cuda.is_available() or not use_flash:
                    return
                self.cuda_config = (True, False, False)

            def flash_attn(self, q, k):
                _, heads, q_len, _, k_len, is_cuda = *q.shape, k.shape[-2], q.is_cuda
                config = self.cuda_config if is_cuda else self.cpu_config
                return config
    ''')
    out = run("widen-device-check", text)
    assert out.text == text
    assert [(f.line, f.category) for f in out.findings] == [(13, "needs_decision")]
    assert "flows into the test at line 14" in out.findings[0].reason


# -- is_available()/device_count() judged by their context, like the device comparisons --------------
FISH_COMPILE = textwrap.dedent('''\
    import torch


    def setup(decode_one_token, compile):
        if compile:
            decode_one_token = torch.compile(
                decode_one_token,
                backend="inductor" if torch.cuda.is_available() else "aot_eager",
                mode="reduce-overhead" if torch.cuda.is_available() else None,
                fullgraph=True,
            )
        return decode_one_token
''')


def test_class1_is_available_choosing_compile_settings_stays_cuda_only():
    # fish-speech 0.1.0 text2semantic/inference.py: inductor and CUDA graphs only under CUDA
    bypassed = run("compile-bypass", FISH_COMPILE).text
    assert "_porter_compile_where_supported(torch.compile)(" in bypassed
    for text in (FISH_COMPILE, bypassed):  # before and after compile-bypass routed the call
        out = run("cuda-api", text)
        assert out.text == text and not out.changes
        assert [f.line for f in out.findings] == [i + 1 for i, line in enumerate(text.splitlines())
                                                  if "if torch.cuda.is_available() else" in line]
        assert all("compilation" in f.reason for f in out.findings)
    assert {(s.category, s.action) for s in sites(FISH_COMPILE, 8)} == {("compile_gate", "keep")}


def test_class1_is_available_passed_as_a_compile_flag():
    text = "import torch\n\ndef load(model):\n    model.prepare(compile=torch.cuda.is_available())\n"
    out = run("cuda-api", text)
    assert out.text == text and "compile=" in out.findings[0].reason


WHISPER_DEVICE = textwrap.dedent('''\
    import torch


    def get_default_compute_device():
        if torch.cuda.is_available() and (torch.version.cuda or torch.version.hip):
            return 'cuda'
        elif torch.backends.mps.is_available():
            return 'mps'
        else:
            return 'cpu'
''')


def test_class3_is_available_paired_with_the_cuda_build_is_a_decision():
    # WhisperSpeech 0.8.9 inference.py: widened, the condition still needs torch.version.cuda (None on
    # an npu build), so an npu return written under it is never reached: a decision, nothing rewritten
    for name in ("hardcoded-device", "cuda-api"):
        out = run(name, WHISPER_DEVICE)
        assert out.text == WHISPER_DEVICE and not out.changes, name
    out = run("cuda-api", WHISPER_DEVICE)
    assert [(f.line, f.category) for f in out.findings] == [(5, "cuda_api")]
    assert "needs a decision" in out.findings[0].reason and "torch.version.cuda" in out.findings[0].reason
    [site] = [s for s in sites(WHISPER_DEVICE, 5) if s.category == "cuda_api"]
    assert (site.action, site.kind) == ("decision", "paired")
    # without the CUDA-build condition the guard and its device follow npu as before
    plain = WHISPER_DEVICE.replace(" and (torch.version.cuda or torch.version.hip)", "")
    assert "'npu' if _porter_npu_available() else 'cuda'" in run("hardcoded-device", plain).text


def test_class3_properties_after_an_early_return_without_cuda_are_left_alone():
    # coqui-tts 0.28.0 perceiver_encoder.py: only CUDA gets past the early return
    text = textwrap.dedent('''\
        import torch


        class Attend:
            def __init__(self, use_flash):
                self.cuda_config = None
                if not torch.cuda.is_available() or not use_flash:
                    return
                props = torch.cuda.get_device_properties(torch.device("cuda"))
                if props.major == 8:
                    self.cuda_config = 1
    ''')
    for name in ("hardcoded-device", "cuda-api"):
        out = run(name, text)
        assert out.text == text, name
    out = run("hardcoded-device", text)
    assert any("behind the gate at line 7" in f.reason for f in out.findings)
    # without the early return, torch.device("cuda") is a device choice like any other
    assert run("hardcoded-device", text.replace("or not use_flash:\n            return", "or not use_flash:\n"
                                                  "            pass")).changes


def test_guards_whose_code_follows_the_device_are_widened():
    # fish-speech (gc.collect, loguru's logger) and coqui-tts tortoise (a batch size from free memory)
    text = textwrap.dedent('''\
        import gc

        import torch
        from loguru import logger


        def release():
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                gc.collect()
            if torch.cuda.is_available():
                logger.info(f"GPU Memory used: {torch.cuda.max_memory_reserved() / 1e9:.02f} GB")


        def pick_batch_size():
            batch_size = 4
            if torch.cuda.is_available():
                batch_size = 1
                if torch.cuda.memory_reserved() > 14:
                    batch_size = 16
            return batch_size
    ''')
    out = run("cuda-api", text)
    assert out.text.count("if _porter_cuda_or_npu().is_available():") == 3, out.text
    assert not out.findings
    # a flag is still a blocker
    flag = text.replace("batch_size = 1\n", "use_gpu = True\n")
    assert any("sets a flag" in f.reason for f in run("cuda-api", flag).findings)


def test_complex_tensors_are_dtype_decisions_the_scan_reports():
    # outetts (torch.fft.rfft, istft, `x + 1j * y`), fish-speech and coqui-tts (stft(return_complex=...))
    text = textwrap.dedent('''\
        import torch


        def spectra(y, x, mag, window, self):
            spec = torch.view_as_real(
                torch.stft(y, 1024, window=window, return_complex=True)
            )
            f = torch.fft.rfft(y, n=2048, dim=1)
            s = mag * (x + 1j * y)
            audio = torch.istft(s, 1024)
            real = torch.stft(y, 1024, return_complex=False)
            chosen = torch.stft(y, 1024, return_complex=self.return_complex)
            freqs = torch.fft.rfftfreq(1024)
            return spec, f, audio, real, chosen, freqs
    ''')
    found = [(s.line, s.category, s.action) for s in scan_source(text)]
    assert found == [(n, "dtype", "decision") for n in (6, 8, 9, 10, 12)]  # the complex call's own line
    assert not analyse_source("m.py", "z = 1 + 2j\n")  # not torch code


def test_a_fallback_to_cpu_without_cuda_keeps_npu():
    # fish-speech 0.1.0 tools/run_webui.py and tools/server/model_manager.py: `not CUDA -> cpu` would
    # override a requested npu device with cpu; widened, npu keeps it (CUDA and CPU hosts as before)
    text = textwrap.dedent('''\
        import torch
        from loguru import logger


        def pick(args):
            if torch.backends.mps.is_available():
                args.device = "mps"
            elif not torch.cuda.is_available():
                logger.info("CUDA is not available, running on CPU.")
                args.device = "cpu"
            return args.device
    ''')
    out = run("cuda-api", text)
    assert "elif not _porter_cuda_or_npu().is_available():" in out.text and not out.findings
    # a branch that does anything else is still a decision
    for body in ('raise RuntimeError("CUDA is required")', 'args.device = "cuda"', "args.fast = False"):
        other = text.replace('args.device = "cpu"', body)
        out = run("cuda-api", other)
        assert out.text == other and [f.line for f in out.findings] == [8], body


# -- code npu never runs: behind an import of a module with no npu build --------------------------------
def test_flash_request_after_a_flash_attn_import_is_left_alone():
    # outetts 0.4.4 models/config.py: the request only follows a successful `import flash_attn`
    text = textwrap.dedent('''\
        def build(config):
            try:
                from flash_attn import flash_attn_func
                config["attn_implementation"] = "flash_attention_2"
            except ImportError:
                pass
            return load(attn_implementation="flash_attention_2")
    ''')
    out = run("attention-fallback", text)
    assert 'config["attn_implementation"] = "flash_attention_2"' in out.text
    assert 'load(attn_implementation=_porter_flash_attention_or_fallback("flash_attention_2"))' in out.text
    assert any(f.line == 4 and "import at line 3" in f.reason for f in out.findings)


def test_class_needing_a_cuda_only_module_is_left_alone():
    # outetts 0.4.4 models/exl2_model.py: the class raises without exllamav2 (CUDA kernels only)
    text = textwrap.dedent('''\
        import torch

        try:
            from exllamav2 import ExLlamaV2
            _EXL2_AVAILABLE = True
        except Exception:
            _EXL2_AVAILABLE = False


        class EXL2Model:
            def __init__(self, path):
                if not _EXL2_AVAILABLE:
                    raise ImportError("exllamav2 python module not found.")
                self.model = ExLlamaV2(path)

            def generate(self, x):
                out = self.model(x)
                torch.cuda.empty_cache()
                return out


        def release():
            torch.cuda.empty_cache()
    ''')
    out = run("cuda-api", text)
    assert "        torch.cuda.empty_cache()\n" in out.text  # in the class: left, with the gate line
    assert "    _porter_cuda_or_npu().empty_cache()\n" in out.text  # outside it: ported
    assert any(f.line == 18 and "behind the gate at line 4" in f.reason for f in out.findings)


def test_flash_attention_class_is_left_alone_by_autocast_device():
    # parler-tts 0.2.3 ParlerTTSFlashAttention2: used only with flash_attention_2 (no npu build)
    text = textwrap.dedent('''\
        import torch


        class ParlerFlashAttention2(Attention):
            def forward(self, q):
                if torch.is_autocast_enabled():
                    q = q.to(torch.get_autocast_gpu_dtype())
                return self._flash_attention_forward(q)


        class ParlerSdpaAttention(Attention):
            def forward(self, q):
                if torch.is_autocast_enabled():
                    q = q.to(torch.get_autocast_gpu_dtype())
                return q
    ''')
    out = run("autocast-device", text)
    lines = {c.line for c in out.changes}
    assert {13, 14} <= lines and not lines & {6, 7}  # (line 2: porter's helper)
    assert out.text.count('torch.get_autocast_dtype("npu")') == 1
    assert {f.line for f in out.findings} == {6, 7}
    assert all("behind the gate at line 4" in f.reason for f in out.findings)


def test_onnx_runtime_cuda_provider_is_a_decision():
    # coqui-tts 0.28.0 Vits.load_onnx: npu needs onnxruntime-cann's CANNExecutionProvider
    text = ('def load_onnx(cuda=False):\n    providers = [\n        (\n            "CPUExecutionProvider"\n'
            '            if cuda is False\n            else ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "DEFAULT"})\n'
            '        )\n    ]\n')
    assert [(s.line, s.category, s.action) for s in scan_source(text)] == [(6, "other", "decision")]
    assert "CANNExecutionProvider" in scan_source(text)[0].reason


def test_positional_cuda_for_a_device_parameter_of_this_module():
    # coqui-tts 0.28.0 bark/hubert/tokenizer.py: HubertTokenizer.load_from_checkpoint(path, "cuda")
    text = textwrap.dedent('''\
        import torch


        class Tokenizer:
            @staticmethod
            def load_from_checkpoint(path, map_location=None):
                return torch.load(path, map_location=map_location)

            def place(self, x, device):
                return x.to(device)


        def train(path, x, tok):
            model = Tokenizer.load_from_checkpoint(path, "cuda")
            tok.place(x, "cuda")
            log(path, "cuda")
    ''')
    out = run("hardcoded-device", text)
    assert 'load_from_checkpoint(path, "npu" if _porter_npu_available() else "cuda")' in out.text
    assert 'tok.place(x, "npu" if _porter_npu_available() else "cuda")' in out.text  # self is not positional
    assert 'log(path, "cuda")' in out.text  # no parameter says device: left, reported
    assert any("does not recognise" in f.reason for f in out.findings)


def test_an_environment_report_of_cuda_keeps_naming_cuda():
    # coqui-tts 0.28.0 bin/collect_env_info.py: the CUDA section must not list npu devices as CUDA ones
    text = textwrap.dedent('''\
        import torch


        def cuda_info():
            return {
                "GPU": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                "available": torch.cuda.is_available(),
                "version": torch.version.cuda,
            }


        def name():
            return torch.cuda.get_device_name(0)
    ''')
    out = run("cuda-api", text)
    assert "[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]" in out.text
    assert "return _porter_cuda_or_npu().get_device_name(0)" in out.text  # a plain query follows the device
    assert any(f.line == 6 and "torch.version.cuda" in f.reason for f in out.findings)


def test_a_device_for_a_library_without_npu_is_left_alone():
    # coqui-tts 0.28.0 demos/xtts_ft_demo/utils/formatter.py: faster-whisper (CTranslate2) knows cuda/cpu
    text = textwrap.dedent('''\
        import torch
        from faster_whisper import WhisperModel


        def transcribe(path):
            device = "cuda" if torch.cuda.is_available() else "cpu"
            asr_model = WhisperModel("large-v2", device=device, compute_type="float16")
            return asr_model.transcribe(path)


        def embed(path):
            device = "cuda" if torch.cuda.is_available() else "cpu"
            return torch.load(path, map_location=device)
    ''')
    out = run("hardcoded-device", text)
    lines = out.text.splitlines()
    assert '    device = "cuda" if torch.cuda.is_available() else "cpu"' in lines  # for faster-whisper
    assert out.text.count('"npu" if _porter_npu_available() else') == 1  # torch.load's device follows npu
    assert any(f.line == 6 and "faster_whisper.WhisperModel" in f.reason for f in out.findings)


# -- an attention selector belongs to attention-fallback; a device choice to hardcoded-device ---------
SELECTORS = (
    "def pick(device):\n"
    '    return "sdpa" if device.type == "cuda" else "eager"\n'
    "\n\n"
    "def pick_flash(device):\n"
    '    return "flash_attention_2" if device.type == "cuda" else "eager"\n'
)


def test_a_flash_selector_is_widened_only_by_attention_fallback():
    """Widened alone, `"flash_attention_2" if d.type == "cuda"` would send npu to flash_attn (no npu
    build): widen-device-check leaves it; attention-fallback widens it and sends the value to sdpa."""
    plain, flash = sites(SELECTORS, 2)[0], sites(SELECTORS, 6)[0]
    assert (plain.category, plain.action, plain.transform) == ("attention_backend", "rewrite", "attention-fallback")
    assert (flash.transform, flash.kind) == ("attention-fallback", "flash-selector")
    widened = run("widen-device-check", SELECTORS).text
    assert 'if device.type in ("cuda", "npu") else "eager"' in widened.splitlines()[1]
    assert widened.splitlines()[5] == SELECTORS.splitlines()[5]
    fallback = run("attention-fallback", SELECTORS).text
    assert ('return _porter_flash_attention_or_fallback("flash_attention_2") if device.type in ("cuda", "npu") '
            'else "eager"') in fallback


def test_a_device_choice_on_is_available_is_one_hardcoded_device_site():
    text = 'import torch\n\ndevice = "cuda" if torch.cuda.is_available() else "cpu"\n'
    [site] = sites(text, 3)
    assert (site.category, site.action, site.transform, site.kind) == (
        "hardcoded_device", "rewrite", "hardcoded-device", "choice")
    assert run("hardcoded-device", text).text != text


# -- one owner per site, and the engine's gate: a plain attention selector ---------------------------
SELECTOR_ONLY = 'def pick(d):\n    return "sdpa" if d.type == "cuda" else "eager"\n'
SELECTOR_AND_CHECK = SELECTOR_ONLY + '\n\ndef sync(d):\n    return d.type == "cuda"\n'


def test_a_plain_selector_is_widened_alike_in_every_file_by_a_recipe_without_attention_fallback():
    """The analysis names attention-fallback as the selector's owner; widen-device-check widens it the
    same way, and the engine (which runs a gated transform only where site_owners names it) must run
    it in a file holding only a selector too, or the same line would be ported in one file and not in
    the one beside it."""
    from porter.analysis import site_owners
    from porter.rewrite import StepPlan, rewrite_file

    assert (s := sites(SELECTOR_ONLY, 2)) and s[0].transform == "attention-fallback" and s[0].action == "rewrite"
    assert "widen-device-check" in site_owners("m.py", SELECTOR_ONLY)
    steps = (StepPlan(index=1, transform=T["widen-device-check"](), files=("*.py",)),)
    alone = rewrite_file("a.py", SELECTOR_ONLY.encode(), steps)
    beside = rewrite_file("b.py", SELECTOR_AND_CHECK.encode(), steps)
    widened = '"sdpa" if d.type in ("cuda", "npu") else "eager"'
    assert alone.status == "changed" and widened in alone.text
    assert beside.status == "changed" and widened in beside.text
    flash = SELECTOR_ONLY.replace('"sdpa"', '"flash_attention_2"')  # attention-fallback's alone
    assert "widen-device-check" not in site_owners("m.py", flash)
    assert rewrite_file("c.py", flash.encode(), steps).status == "unchanged"
