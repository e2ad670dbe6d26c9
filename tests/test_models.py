import torch

from psr.config import ModelParams
from psr.models import build_tiny_model, count_parameters, load_policy, train_tokenizer
from psr.prompts import chat_prompt

CORPUS = ["Step 1: 23 + 45 = 68\nStep 2: The answer is \\boxed{68}."] * 20 + ["Which is better? [[A]] [[B]]"] * 5


def test_tokenizer_splits_digits_and_has_chat_template(tmp_path):
    tok = train_tokenizer(CORPUS, 300, tmp_path / "tok")
    pieces = tok.convert_ids_to_tokens(tok("1234", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if p.strip("Ġ")] == ["1", "2", "3", "4"]
    prompt = chat_prompt(tok, "hi")
    assert prompt.endswith("<|assistant|>\n")
    # the prompt's tokens are a prefix of prompt+completion's tokens: the newline is a clean boundary
    ids = tok(prompt)["input_ids"]
    assert tok(prompt + "Step 1: 2 + 2 = 4")["input_ids"][: len(ids)] == ids
    assert tok.padding_side == "left" and tok.pad_token is not None


def test_tiny_model_saves_and_loads_as_a_normal_hf_folder(tmp_path):
    tok = train_tokenizer(CORPUS, 300)
    params = ModelParams(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model = build_tiny_model(params, tok, seed=0)
    assert 10_000 < count_parameters(model) < 5_000_000
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    loaded, tok2 = load_policy(tmp_path / "m", params)
    ids = torch.tensor([tok("Step 1:")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-6)
    assert tok2.chat_template == tok.chat_template


def test_same_seed_same_weights():
    tok = train_tokenizer(CORPUS, 300)
    params = ModelParams(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    a, b, c = build_tiny_model(params, tok, 0), build_tiny_model(params, tok, 0), build_tiny_model(params, tok, 1)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
