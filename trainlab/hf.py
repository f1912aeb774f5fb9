"""Hugging Face interchange: a trained run as a `transformers` folder, a `transformers` folder in trainlab's names,
and a LoRA run's adapters as a PEFT adapter folder.

    export(run_dir, out_dir, force=False) -> architecture     `trainlab export RUN_DIR --format hf --out DIR`
    write_hf(model, info, tokenizer_path, out_dir, adapters)  the same into a folder the caller owns
    read(path) -> Imported                                     a transformers folder -> [model] table, info, tensors
    write_peft(model, table, out_dir, base_model_name_or_path) adapter_config.json + adapter_model.safetensors

The layouts that correspond exactly (trainlab's GPT and encoder were written to match them):

    GPT  pos=rope, norm=rms, activation=swiglu        LlamaForCausalLM    qkv -> q/k/v_proj; up -> up_proj (rows
                                                                          [:h], the linear factor) + gate_proj
                                                                          (rows [h:], through SiLU). RoPE is the
                                                                          "halves" layout of transformers'
                                                                          rotate_half: no permutation.
    GPT  pos=learned, norm=layer, activation=gelu     GPT2LMHeadModel     Conv1D weights are (in, out): transposed.
                                                                          GPT-2 always has biases: zeros are
                                                                          written when the GPT has none.
    encoder head=mlm                                  BertForMaskedLM     post-norm blocks, exact GELU.

Reading also accepts the bare trunks (LlamaModel, GPT2Model, BertModel, with or without their "model." /
"transformer." / "bert." prefixes) and sharded safetensors (model.safetensors.index.json); only safetensors are
read (a pickle can run code). A tokenizer.json is required; a BERT folder that only has vocab.txt is refused
with the one line that converts it (we do not guess its WordPiece settings).

transformers and peft are imported nowhere here: the files are written and read with safetensors and json, so
this module works without them (the tests load the results with both).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainlab.errors import UserError, first_line

SUPPORTED = ("llama", "gpt2", "bert")  # model_type values `read` understands
ROPE_THETA = 10000.0  # trainlab's RoPE base (gpt.rope_tables)
RMS_EPS = 1e-6  # trainlab's RMSNorm epsilon (gpt.RMSNorm)
LAYER_EPS = 1e-5  # the GPT's LayerNorm epsilon (torch's default)
# Buffers some checkpoints carry that are not weights: never reported as unused.
_BUFFERS = ("position_ids", ".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


@dataclass
class Imported:
    """A transformers folder in trainlab's terms: build `models.build(config.table("model", table), info)` and
    `load_state_dict(tensors, strict=not missing)`."""

    table: dict  # the [model] table: kind "gpt" or "encoder" with every architecture key
    info: dict  # vocab_size, block_size, tokenizer, eot_id, pad_id, mask_id, special_ids, task
    tensors: dict[str, torch.Tensor]  # trainlab names (a tied head appears under both of its names), stored dtype
    tokenizer_path: str  # the folder's tokenizer.json
    unused: list[str] = field(default_factory=list)  # the folder's tensors with no trainlab counterpart (BERT's pooler)
    missing: list[str] = field(default_factory=list)  # trainlab tensors the folder lacks: a bare trunk's head
    architecture: str = ""  # what config.json says it is, e.g. "LlamaForCausalLM"


# ------------------------------------------------------------------------------------------ architecture


def _describe(t) -> str:
    return f"pos = '{t.pos}', norm = '{t.norm}', activation = '{t.activation}'"


def architecture(table) -> str:
    """The transformers class a trainlab [model] table exports to, or a UserError saying why none fits."""
    kind = getattr(table, "kind", None)
    if kind not in ("gpt", "encoder"):
        raise UserError(f"model.kind = '{kind}' does not export: only language models export to Hugging Face "
                        "(a GPT as Llama or GPT-2, an encoder as BERT)",
                        "export the run of a language model, e.g. stdlib-gpt")
    if kind == "encoder":
        if table.head != "mlm":
            raise UserError("an encoder with model.head = 'classify' does not export to Hugging Face: its pooled "
                            "head is trainlab's own (BertForSequenceClassification classifies BERT's tanh pooler)",
                            "export the masked-LM encoder it was fine-tuned from (model.head = 'mlm')")
        return "BertForMaskedLM"
    if table.head != "lm":
        raise UserError(f"a GPT with model.head = '{table.head}' does not export to Hugging Face: its pooled head "
                        "is trainlab's own (no transformers class reads it)",
                        "export the language model it was fine-tuned from (model.head = 'lm')")
    if table.moe_experts:
        raise UserError(f"a mixture-of-experts GPT (model.moe_experts = {table.moe_experts}) would need Mixtral's "
                        "layout (MixtralForCausalLM), which trainlab does not export",
                        "export a dense GPT (model.moe_experts = 0)")
    combo = (table.pos, table.norm, table.activation)
    if combo == ("rope", "rms", "swiglu"):
        return "LlamaForCausalLM"
    if combo == ("learned", "layer", "gelu"):
        return "GPT2LMHeadModel"
    need = {"LlamaForCausalLM": ("rope", "rms", "swiglu"), "GPT2LMHeadModel": ("learned", "layer", "gelu")}
    why = []
    for name, want in need.items():
        diff = [f"{k} = '{w}'" for k, w, h in zip(("pos", "norm", "activation"), want, combo) if w != h]
        why.append(f"{name} needs {', '.join(diff)}")
    extra = " (rope + LayerNorm + GELU is GPT-NeoX's layout, which trainlab does not export)" \
        if combo == ("rope", "layer", "gelu") else ""
    raise UserError(f"this GPT ({_describe(table)}) matches no Hugging Face architecture trainlab exports: "
                    f"{'; '.join(why)}{extra}",
                    "train with pos/norm/activation = rope/rms/swiglu (Llama) or learned/layer/gelu (GPT-2)")


def _as_table(table):
    from trainlab import config

    return config.table("model", table) if isinstance(table, dict) else table


# Each architecture's names: `linears` maps a trainlab linear layer (module name) to its transformers module(s):
# a fused layer splits by rows into equal parts, in order. `params` maps the other tensors one to one.
# `conv`: GPT-2's Conv1D stores weights (in, out). `hf_bias`: the transformers layers have biases whatever ours do.


@dataclass
class _Layout:
    linears: dict[str, list[str]]
    params: dict[str, str]
    conv: bool = False
    hf_bias: bool = False
    head: str = ""  # the trainlab name of the output head (absent when tied)


def _layout(arch: str, t, tied: bool) -> _Layout:
    n = t.n_layer
    if arch == "LlamaForCausalLM":
        lin, par = {}, {"wte.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
        for i in range(n):
            b, h = f"blocks.{i}.", f"model.layers.{i}."
            lin[b + "attn.qkv"] = [h + f"self_attn.{x}_proj" for x in "qkv"]
            lin[b + "attn.proj"] = [h + "self_attn.o_proj"]
            lin[b + "mlp.up"] = [h + "mlp.up_proj", h + "mlp.gate_proj"]  # GPT: silu(rows [h:]) * rows [:h]
            lin[b + "mlp.down"] = [h + "mlp.down_proj"]
            par[b + "norm1.weight"] = h + "input_layernorm.weight"
            par[b + "norm2.weight"] = h + "post_attention_layernorm.weight"
        if not tied:
            lin["head"] = ["lm_head"]
        return _Layout(lin, par, head="head")
    if arch == "GPT2LMHeadModel":
        lin, par = {}, {"wte.weight": "transformer.wte.weight", "wpe.weight": "transformer.wpe.weight",
                        "norm.weight": "transformer.ln_f.weight", "norm.bias": "transformer.ln_f.bias"}
        for i in range(n):
            b, h = f"blocks.{i}.", f"transformer.h.{i}."
            lin[b + "attn.qkv"] = [h + "attn.c_attn"]  # GPT-2 splits c_attn's output into q, k, v as we do
            lin[b + "attn.proj"] = [h + "attn.c_proj"]
            lin[b + "mlp.up"] = [h + "mlp.c_fc"]
            lin[b + "mlp.down"] = [h + "mlp.c_proj"]
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                par[b + ours + ".weight"] = h + theirs + ".weight"
                par[b + ours + ".bias"] = h + theirs + ".bias"
        if not tied:
            lin["head"] = ["lm_head"]
        return _Layout(lin, par, conv=True, hf_bias=True, head="head")
    if arch == "BertForMaskedLM":
        e = "bert.embeddings."
        lin = {"mlm.dense": ["cls.predictions.transform.dense"]}
        par = {"wte.weight": e + "word_embeddings.weight", "wpe.weight": e + "position_embeddings.weight",
               "emb_norm.weight": e + "LayerNorm.weight", "emb_norm.bias": e + "LayerNorm.bias",
               "mlm.norm.weight": "cls.predictions.transform.LayerNorm.weight",
               "mlm.norm.bias": "cls.predictions.transform.LayerNorm.bias", "mlm.bias": "cls.predictions.bias"}
        if t.type_vocab_size:
            par["wtt.weight"] = e + "token_type_embeddings.weight"
        for i in range(n):
            b, h = f"blocks.{i}.", f"bert.encoder.layer.{i}."
            for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
                lin[b + "attn." + ours] = [h + "attention.self." + theirs]
            lin[b + "attn.proj"] = [h + "attention.output.dense"]
            lin[b + "mlp.up"] = [h + "intermediate.dense"]
            lin[b + "mlp.down"] = [h + "output.dense"]
            for ours, theirs in (("norm1", "attention.output.LayerNorm"), ("norm2", "output.LayerNorm")):
                par[b + ours + ".weight"] = h + theirs + ".weight"
                par[b + ours + ".bias"] = h + theirs + ".bias"
        return _Layout(lin, par, hf_bias=True)
    raise AssertionError(arch)


def _hf_module_names(arch: str, t) -> list[str]:
    """Every linear module of the transformers model (what PEFT's target_modules are matched against)."""
    names = [m for ms in _layout(arch, t, tied=False).linears.values() for m in ms]
    if arch == "BertForMaskedLM":
        names.append("cls.predictions.decoder")
    return names


# ------------------------------------------------------------------------------------------ export


def _state_dict(model, adapters: str) -> dict[str, torch.Tensor]:
    from trainlab.models import lora

    if adapters == "merge":
        return lora.merged_state_dict(model)
    if adapters == "drop":
        return {k: v.detach().clone() for k, v in model.state_dict().items() if not lora.is_adapter(k)}
    raise ValueError(f"adapters must be 'merge' or 'drop', not {adapters!r}")


def hf_tensors(arch: str, t, sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """trainlab state dict -> (transformers tensors, tied). A tied head is left out (transformers ties it on load);
    a head that LoRA's merge made differ from the embedding is written untied."""
    tied = False
    if arch != "BertForMaskedLM":
        tied = bool(t.tie_weights) and "head.weight" in sd and torch.equal(sd["head.weight"], sd["wte.weight"])
    lay = _layout(arch, t, tied)
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in lay.linears.items():
        w = sd[ours + ".weight"]
        b = sd.get(ours + ".bias")
        for name, part, bpart in zip(theirs, w.chunk(len(theirs), 0),
                                     b.chunk(len(theirs), 0) if b is not None else [None] * len(theirs)):
            conv = lay.conv and name != "lm_head"
            out[name + ".weight"] = (part.t() if conv else part).contiguous().clone()
            if bpart is not None:
                out[name + ".bias"] = bpart.contiguous().clone()
            elif lay.hf_bias and name != "lm_head":
                out[name + ".bias"] = torch.zeros(part.shape[0], dtype=part.dtype)
    for ours, theirs in lay.params.items():
        if ours in sd:
            out[theirs] = sd[ours].contiguous().clone()
        elif ours.endswith(".bias"):  # a LayerNorm without bias (model.bias = false): GPT-2's is zero
            out[theirs] = torch.zeros_like(sd[ours[:-len("bias")] + "weight"])
        else:
            raise AssertionError(ours)
    if arch == "BertForMaskedLM" and not t.type_vocab_size:  # BERT always adds a segment: ours has none
        out["bert.embeddings.token_type_embeddings.weight"] = torch.zeros(1, t.n_embd, dtype=sd["wte.weight"].dtype)
    return out, tied


def _mlp_width(t) -> int:
    """The GPT's / encoder's MLP hidden width, as its own code computes it (built on the meta device)."""
    with torch.device("meta"):
        if t.kind == "gpt":
            from trainlab.models.gpt import MLP

            return MLP(t).down.in_features
        from trainlab.models.encoder import MLP as EncoderMLP

        return EncoderMLP(t).down.in_features


def hf_config(arch: str, t, info: dict, tied: bool, ids: dict) -> dict:
    """config.json of the transformers model."""
    common = {"architectures": [arch], "vocab_size": info["vocab_size"], "torch_dtype": "float32",
              "dtype": "float32", "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"],
              "tie_word_embeddings": tied, "use_cache": True, "initializer_range": 0.02}
    if arch == "LlamaForCausalLM":
        return {**common, "model_type": "llama", "hidden_size": t.n_embd, "intermediate_size": _mlp_width(t),
                "num_hidden_layers": t.n_layer, "num_attention_heads": t.n_head, "num_key_value_heads": t.n_head,
                "head_dim": t.n_embd // t.n_head, "hidden_act": "silu", "max_position_embeddings": info["block_size"],
                "rms_norm_eps": t.norm_eps or RMS_EPS, "rope_theta": t.rope_base,
                "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_base},
                "attention_bias": bool(t.bias), "mlp_bias": bool(t.bias), "attention_dropout": float(t.dropout),
                "pretraining_tp": 1}
    if arch == "GPT2LMHeadModel":
        return {**common, "model_type": "gpt2", "n_embd": t.n_embd, "n_layer": t.n_layer, "n_head": t.n_head,
                "n_inner": _mlp_width(t), "n_positions": info["block_size"], "n_ctx": info["block_size"],
                "activation_function": "gelu_new", "layer_norm_epsilon": t.norm_eps or LAYER_EPS,
                "resid_pdrop": float(t.dropout), "embd_pdrop": float(t.dropout), "attn_pdrop": float(t.dropout),
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False}
    return {**common, "model_type": "bert", "hidden_size": t.n_embd, "num_hidden_layers": t.n_layer,
            "num_attention_heads": t.n_head, "intermediate_size": _mlp_width(t), "hidden_act": "gelu",
            "max_position_embeddings": t.max_positions, "type_vocab_size": t.type_vocab_size or 1,
            "layer_norm_eps": t.norm_eps, "hidden_dropout_prob": float(t.dropout),
            "attention_probs_dropout_prob": float(t.dropout), "position_embedding_type": "absolute",
            "tie_word_embeddings": True}


def _char_tokenizer_json(tokenizer) -> str:
    """trainlab's character tokenizer as a Hugging Face tokenizer.json: a WordLevel model over the same ids, a
    pre-tokenizer that isolates every character (newlines too) and a decoder that concatenates."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(dict(tokenizer.stoi), unk_token="<unk>"))  # no <unk>: unknown chars fail,
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # as trainlab's own encode
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in _char_specials(tokenizer)])
    return tok.to_str()


def _char_specials(tokenizer) -> list[str]:
    from trainlab.data import tokenizer as tok_lib

    return list(getattr(tokenizer, "specials", tok_lib.SPECIAL_TOKENS))


def write_tokenizer(tokenizer, info: dict, out: Path, arch: str, path: str | Path | None = None) -> dict:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json; returns the special ids for config.json.
    A BPE tokenizer.json is Hugging Face's own and is copied as is. The character one is rebuilt (see
    `_char_tokenizer_json`); its tokenizer_config sets split_special_tokens, because trainlab spells a literal
    "<|endoftext|>" in a text as characters, which transformers then does too."""
    if tokenizer.kind == "char":
        (out / "tokenizer.json").write_text(_char_tokenizer_json(tokenizer), encoding="utf-8")
        name = tokenizer.itos.__getitem__
    else:
        if path is not None:
            shutil.copyfile(path, out / "tokenizer.json")
        else:
            (out / "tokenizer.json").write_text(tokenizer.tok.to_str(), encoding="utf-8")
        name = tokenizer.tok.id_to_token
    eot, pad, mask = tokenizer.eot_id, tokenizer.pad_id, tokenizer.mask_id
    specials = {}
    if eot is not None:
        specials.update(eos_token=name(eot), bos_token=name(eot))
        if arch == "BertForMaskedLM":
            specials["sep_token"] = name(eot)
    if pad is not None:
        specials["pad_token"] = name(pad)
    if mask is not None and arch == "BertForMaskedLM":
        specials["mask_token"] = name(mask)
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **specials, "model_max_length": info["block_size"],
           "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False,
           "split_special_tokens": tokenizer.kind == "char"}
    if info.get("chat_template"):  # a post-trained model: the template it was trained with (trainlab.data.chat)
        cfg["chat_template"] = info["chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
    return {"bos": eot, "eos": eot, "pad": pad}


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def write_hf(model, info: dict, tokenizer_path: str | Path, out_dir: str | Path, adapters: str = "merge") -> str:
    """Write a trainlab GPT or encoder as a transformers folder into `out_dir` (created; the caller chooses it):
    model.safetensors, config.json, generation_config.json and the tokenizer. LoRA layers are merged in
    (`adapters="merge"`) or left out, giving the base model a PEFT adapter applies to (`adapters="drop"`).
    Returns the architecture written, e.g. "LlamaForCausalLM"."""
    from trainlab.data import tokenizer as tok_lib

    t = model.cfg
    arch = architecture(t)
    tokenizer = tok_lib.load(tokenizer_path)
    if tokenizer.vocab_size != info["vocab_size"]:
        raise UserError(f"the tokenizer {tokenizer_path} has {tokenizer.vocab_size} tokens but the model "
                        f"{info['vocab_size']}: they do not belong together",
                        "export a run folder as `trainlab train` wrote it")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors, tied = hf_tensors(arch, t, _state_dict(model, adapters))
    ids = write_tokenizer(tokenizer, info, out, arch, tokenizer_path)
    _save_safetensors(tensors, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(hf_config(arch, t, info, tied, ids), indent=2) + "\n")
    if arch != "BertForMaskedLM":
        gen = {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return arch


def _check_out(out: Path, force: bool, protect: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder", "choose a new folder for the export")
    try:
        run = protect.resolve().parent  # the run folder (model/'s parent): neither inside --out nor holding it
        inside = run.is_relative_to(out.resolve()) or out.resolve().is_relative_to(run)
    except OSError:
        inside = False
    if inside:
        raise UserError(f"--out {out} overlaps the run being exported ({protect.resolve().parent})",
                        "choose a folder outside the run")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} exists and is not empty", "choose a new folder, or pass --force to replace it")


def replace_dir(out: Path, fill) -> object:
    """Run fill(tmp) on a fresh sibling folder, then swap it in for `out`: a failure leaves nothing behind (and
    `out` as it was)."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out.parent} ({e.strerror or type(e).__name__})",
                        "choose a folder you can write to") from None
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        result = fill(tmp)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out, old)
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write {out} ({e.strerror or type(e).__name__})",
                        "choose a folder you can write to") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return result


def export(run_dir: str | Path, out_dir: str | Path, force: bool = False) -> str:
    """A finished run's model as a transformers folder (see the module docstring). Refuses a non-empty `out_dir`
    unless `force`; writes into a temporary folder and renames it. Returns the architecture written."""
    from trainlab import models, registry

    model_dir = models.model_folder(run_dir)
    meta = models.read_meta(model_dir)
    table = meta["table"]
    if table.kind not in ("gpt", "encoder"):
        what = "fitted by scikit-learn" if registry.fitted(table.kind) else "not a language model"
        raise UserError(f"{run_dir} holds a '{table.kind}' model ({what}): only language models export to "
                        "Hugging Face", "export the run of a GPT or an encoder")
    architecture(table)  # refuse before anything is loaded or written
    out = Path(out_dir)
    _check_out(out, force, model_dir)
    model, info = models.load(model_dir)
    if not (model_dir / "tokenizer.json").is_file():
        raise UserError(f"{model_dir} has no tokenizer.json", "export the model/ folder `trainlab train` wrote")
    with torch.no_grad():
        return replace_dir(out, lambda tmp: write_hf(model, info, model_dir / "tokenizer.json", tmp))


# ------------------------------------------------------------------------------------------ PEFT


def _targets(adapted: list[str], every: list[str]) -> list[str]:
    """PEFT's target_modules (a name matches a target when equal to it or ending in "." + target): for each
    adapted module the shortest tail that matches adapted modules only, so the list selects exactly them."""
    chosen, done = set(), set()
    adapted_set = set(adapted)
    for m in adapted:
        parts = m.split(".")
        for k in range(1, len(parts) + 1):
            tail = ".".join(parts[-k:])
            hits = {x for x in every if x == tail or x.endswith("." + tail)}
            if hits <= adapted_set:
                chosen.add(tail)
                done |= hits
                break
    assert done == adapted_set, (done, adapted_set)
    return sorted(chosen)


def peft_tensors(model, table) -> tuple[dict[str, torch.Tensor], dict]:
    """(adapter_model tensors, adapter_config) of a trainlab model's LoRA layers, in PEFT's names."""
    from trainlab.models import lora

    t = _as_table(table)
    arch = architecture(t)
    layers = lora.layers(model)
    if not layers:
        raise UserError("this model has no LoRA adapters to write", "train it with [model.lora] rank > 0")
    lay = _layout(arch, t, tied=False)
    ranks = {(m.rank, m.scale) for m in layers.values()}
    if len(ranks) != 1:
        raise UserError(f"the LoRA layers have different ranks or scales ({sorted(ranks)})",
                        "train with one [model.lora] rank and alpha")
    (rank, scale), = ranks
    if "head" in layers and t.kind == "gpt" and t.tie_weights:
        raise UserError("a LoRA on the output head of a GPT with tied embeddings does not write as a PEFT adapter: "
                        "PEFT's merge would fold the update into the shared embedding too",
                        "export the merged model instead (trainlab export), or train with model.tie_weights = false")
    tensors, adapted = {}, []
    for name, m in layers.items():
        if name not in lay.linears:
            raise UserError(f"the LoRA layer {name} has no counterpart in {arch}",
                            "adapt the attention and MLP layers (model.lora.targets)")
        theirs = lay.linears[name]
        A, B = m.lora_A.detach(), m.lora_B.detach()
        for hf, b in zip(theirs, B.chunk(len(theirs), 0)):  # a fused layer: one shared A, B by rows
            tensors[f"base_model.model.{hf}.lora_A.weight"] = A.contiguous().clone()
            tensors[f"base_model.model.{hf}.lora_B.weight"] = b.contiguous().clone()
            adapted.append(hf)
    drop = next(iter(layers.values())).lora_drop.p
    cfg = {"peft_type": "LORA", "task_type": None if arch == "BertForMaskedLM" else "CAUSAL_LM",
           "r": rank, "lora_alpha": scale * rank, "lora_dropout": drop,
           "target_modules": _targets(adapted, _hf_module_names(arch, t)),
           "fan_in_fan_out": lay.conv, "bias": "none", "use_rslora": False, "use_dora": False,
           "init_lora_weights": True, "inference_mode": True, "modules_to_save": None, "layers_to_transform": None,
           "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}
    return tensors, cfg


def write_peft(model, table, out_dir: str | Path, base_model_name_or_path: str = "") -> list[str]:
    """A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) for a trainlab model with
    LoRA layers; the base it applies to is `write_hf(model, ..., adapters="drop")`. A LoRA on a fused layer
    becomes one adapter per part sharing A (copied) with B split by rows: the same update, rank unchanged.
    GPT-2's c_attn stays fused (Conv1D, fan_in_fan_out). Returns target_modules."""
    tensors, cfg = peft_tensors(model, table)
    cfg["base_model_name_or_path"] = base_model_name_or_path or None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "adapter_model.safetensors.tmp"
    _save_safetensors(tensors, tmp)
    os.replace(tmp, out / "adapter_model.safetensors")
    tmp = out / "adapter_config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp, out / "adapter_config.json")
    return cfg["target_modules"]


# ------------------------------------------------------------------------------------------ read


def _need(c: dict, key: str, path: Path, *alts: str):
    for k in (key, *alts):
        if k in c and c[k] is not None:
            return c[k]
    raise UserError(f"{path / 'config.json'} lacks {key}", "give the config.json that save_pretrained wrote")


def _unsupported(path: Path, key: str, value, why: str) -> UserError:
    return UserError(f"{path}: {key} = {value!r} is not supported: {why}",
                     "trainlab's GPT cannot represent it; use a model without it")


def _valid_table(raw: dict, path: Path):
    """The [model] table a folder's config.json maps to, or one line naming what trainlab's tables reject."""
    from trainlab import config

    try:
        return config.table("model", raw)
    except config._TableInvalid as e:
        err = e.error.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise UserError(f"{path / 'config.json'} maps to model.{key} = {err.get('input')!r}, which trainlab "
                        f"rejects ({err['msg']})", "fix the folder's config.json, or use another model") from None


def _ratio(width: int, t_raw: dict, factor: float, path: Path, key: str) -> float:
    """An mlp_ratio for which trainlab builds an MLP exactly `width` wide (checked with the model's own code)."""
    r = width * factor / t_raw["n_embd"]
    for _ in range(8):
        t = _valid_table({**t_raw, "mlp_ratio": r}, path)
        if _mlp_width(t) == width:
            return r
        r = math.nextafter(r, math.inf)
    raise UserError(f"{path}: {key} = {width} is not a width trainlab's GPT builds (it rounds an MLP wider than 64 "
                    "up to a multiple of 64)", "use a model whose MLP width is a multiple of 64")


def _llama_table(c: dict, path: Path) -> tuple[dict, int]:
    hidden, heads = _need(c, "hidden_size", path), _need(c, "num_attention_heads", path)
    layers = _need(c, "num_hidden_layers", path)
    if hidden % heads or (hidden // heads) % 2:
        raise _unsupported(path, "num_attention_heads", heads, f"hidden_size = {hidden} must split into heads "
                           "of an even width")
    kv = c.get("num_key_value_heads") or heads
    if kv != heads:
        raise _unsupported(path, "num_key_value_heads", kv, f"grouped-query attention (the GPT has one key/value "
                           f"head per query head, {heads})")
    if (c.get("head_dim") or hidden // heads) != hidden // heads:
        raise _unsupported(path, "head_dim", c["head_dim"], f"the GPT's heads are hidden_size / heads = "
                           f"{hidden // heads} wide")
    if c.get("hidden_act", "silu") != "silu":
        raise _unsupported(path, "hidden_act", c["hidden_act"], "the GPT's SwiGLU gates with SiLU")
    rp = c.get("rope_parameters") or {}
    rs = c.get("rope_scaling")
    if rs:
        kind = rs.get("rope_type", rs.get("type", "default")) if isinstance(rs, dict) else rs
        if kind != "default":
            raise _unsupported(path, "rope_scaling", rs, "the GPT's RoPE has no scaling")
    if isinstance(rp, dict) and rp.get("rope_type", "default") != "default":
        raise _unsupported(path, "rope_parameters", rp, "the GPT's RoPE has no scaling")
    theta = (rp.get("rope_theta") if isinstance(rp, dict) else None) or c.get("rope_theta") or ROPE_THETA
    if float(c.get("partial_rotary_factor", 1.0) or 1.0) != 1.0:
        raise _unsupported(path, "partial_rotary_factor", c["partial_rotary_factor"], "the GPT rotates every "
                           "dimension")
    ab, mb = bool(c.get("attention_bias", False)), bool(c.get("mlp_bias", False))
    if ab != mb:
        raise _unsupported(path, "attention_bias / mlp_bias", (ab, mb), "the GPT has biases everywhere or nowhere")
    raw = {"kind": "gpt", "n_layer": layers, "n_head": heads, "n_embd": hidden,
           "dropout": float(c.get("attention_dropout", 0.0) or 0.0), "pos": "rope", "norm": "rms",
           "activation": "swiglu", "bias": ab, "tie_weights": bool(c.get("tie_word_embeddings", False)),
           "moe_experts": 0, "head": "lm", "norm_eps": float(c.get("rms_norm_eps", RMS_EPS)),
           "rope_base": float(theta)}
    raw["mlp_ratio"] = _ratio(_need(c, "intermediate_size", path), raw, 1.5, path, "intermediate_size")
    return raw, _need(c, "max_position_embeddings", path)


def _gpt2_table(c: dict, path: Path) -> tuple[dict, int]:
    n = _need(c, "n_embd", path, "hidden_size")
    heads = _need(c, "n_head", path, "num_attention_heads")
    if n % heads or (n // heads) % 2:
        raise _unsupported(path, "n_head", heads, f"n_embd = {n} must split into heads of an even width")
    act = c.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise _unsupported(path, "activation_function", act, "the GPT's GELU is the tanh approximation (gelu_new)")
    if not c.get("scale_attn_weights", True) or c.get("scale_attn_by_inverse_layer_idx", False):
        raise _unsupported(path, "scale_attn_weights / scale_attn_by_inverse_layer_idx",
                           (c.get("scale_attn_weights", True), c.get("scale_attn_by_inverse_layer_idx", False)),
                           "the GPT scales attention by 1/sqrt(head width) only")
    if c.get("add_cross_attention"):
        raise _unsupported(path, "add_cross_attention", True, "the GPT is decoder-only")
    raw = {"kind": "gpt", "n_layer": _need(c, "n_layer", path, "num_hidden_layers"), "n_head": heads, "n_embd": n,
           "dropout": float(c.get("resid_pdrop", 0.0) or 0.0), "pos": "learned", "norm": "layer",
           "activation": "gelu", "bias": True, "tie_weights": bool(c.get("tie_word_embeddings", True)),
           "moe_experts": 0, "head": "lm", "norm_eps": float(c.get("layer_norm_epsilon", LAYER_EPS))}
    raw["mlp_ratio"] = _ratio(c.get("n_inner") or 4 * n, raw, 1.0, path, "n_inner")
    return raw, _need(c, "n_positions", path, "max_position_embeddings")


def _bert_table(c: dict, path: Path) -> tuple[dict, int]:
    n, heads = _need(c, "hidden_size", path), _need(c, "num_attention_heads", path)
    if n % heads:
        raise _unsupported(path, "num_attention_heads", heads, f"hidden_size = {n} must split into heads")
    if c.get("hidden_act", "gelu") != "gelu":
        raise _unsupported(path, "hidden_act", c["hidden_act"], "the encoder's MLP uses exact GELU")
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise _unsupported(path, "position_embedding_type", c["position_embedding_type"],
                           "the encoder has learned absolute positions")
    if c.get("is_decoder") or c.get("add_cross_attention"):
        raise _unsupported(path, "is_decoder", True, "the encoder is bidirectional")
    raw = {"kind": "encoder", "n_layer": _need(c, "num_hidden_layers", path), "n_head": heads, "n_embd": n,
           "dropout": float(c.get("hidden_dropout_prob", 0.1)),
           "max_positions": _need(c, "max_position_embeddings", path),
           "type_vocab_size": int(c.get("type_vocab_size", 2)), "norm_eps": float(c.get("layer_norm_eps", 1e-12)),
           "head": "mlm"}
    width = _need(c, "intermediate_size", path)
    raw["mlp_ratio"] = _ratio(width, raw, 1.0, path, "intermediate_size")
    return raw, raw["max_positions"]


def _canonical(model_type: str, name: str) -> str:
    """A checkpoint's tensor name with the prefix its task class would give it (a bare trunk saves without)."""
    if model_type == "llama":
        return name if name.startswith(("model.", "lm_head.")) else "model." + name
    if model_type == "gpt2":
        return name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name
    name = name.replace(".gamma", ".weight").replace(".beta", ".bias")  # BERT checkpoints of the TF era
    return name if name.startswith(("bert.", "cls.")) else "bert." + name


def _weight_files(path: Path) -> list[Path]:
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(wm.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index} is not a safetensors index ({first_line(e)})",
                            "give the folder save_pretrained wrote") from None
        gone = [f for f in files if not (path / f).is_file()]
        if gone:
            raise UserError(f"{path}: the shard {gone[0]} named in model.safetensors.index.json is missing",
                            "copy every shard of the checkpoint")
        return [path / f for f in files]
    pickles = sorted(p.name for p in path.glob("pytorch_model*.bin"))
    if pickles:
        raise UserError(f"{path} has only {pickles[0]}, a pickle; trainlab loads safetensors only (a pickle can "
                        "run code when loaded)",
                        "convert it where you trust it: AutoModel.from_pretrained(DIR).save_pretrained(DIR, "
                        "safe_serialization=True)")
    raise UserError(f"{path} has no weights (model.safetensors or model.safetensors.index.json)",
                    "give the folder save_pretrained wrote")


def _open_weights(files: list[Path]) -> dict[str, tuple[Path, str]]:
    """name -> (file, name in file), without loading any tensor."""
    from safetensors import safe_open

    where = {}
    for f in files:
        try:
            with safe_open(str(f), "pt") as s:
                for k in s.keys():
                    where[k] = (f, k)
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise UserError(f"{f} cannot be read as safetensors ({first_line(e)})",
                            "the file is damaged; download or save it again") from None
    return where


def _load(where: dict[str, tuple[Path, str]], names: list[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out, by_file = {}, {}
    for n in names:
        by_file.setdefault(where[n][0], []).append(n)
    for f, ns in by_file.items():
        with safe_open(str(f), "pt") as s:
            for n in ns:
                out[n] = s.get_tensor(where[n][1])
    return out


def read(path: str | Path) -> Imported:
    """A transformers folder (Llama, GPT-2 or BERT; safetensors, sharded or not) in trainlab's terms; every
    problem is one UserError naming the file, key or tensor."""
    from trainlab import models
    from trainlab.data import tokenizer as tok_lib

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist", "give the folder of a Hugging Face model (config.json, "
                        "model.safetensors, tokenizer.json)")
    if not p.is_dir():
        raise UserError(f"{p} is not a folder", "give the folder of a Hugging Face model, not one of its files")
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{p} has no config.json: not a Hugging Face model folder",
                        "give the folder save_pretrained wrote")
    try:
        c = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{cfg_path} is not JSON ({first_line(e)})", "restore the config.json of the model") from None
    if not isinstance(c, dict):
        raise UserError(f"{cfg_path} is not a model config (not a JSON object)", "restore the config.json")
    mt = c.get("model_type")
    if mt not in SUPPORTED:
        raise UserError(f"{p}: model_type {mt!r} is not supported; trainlab reads {', '.join(SUPPORTED)}",
                        "use a Llama, GPT-2 or BERT checkpoint")
    archs = c.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else ""
    raw, block = {"llama": _llama_table, "gpt2": _gpt2_table, "bert": _bert_table}[mt](c, p)
    tok_path = p / "tokenizer.json"
    if not tok_path.is_file():
        extra = " (only vocab.txt: a slow tokenizer's files)" if (p / "vocab.txt").is_file() else ""
        raise UserError(f"{p} has no tokenizer.json{extra}",
                        "write one where transformers is installed: AutoTokenizer.from_pretrained(DIR)"
                        ".save_pretrained(DIR)")
    tokenizer = tok_lib.load(tok_path)
    vocab = _need(c, "vocab_size", p)
    eot, pad, mask = tokenizer.eot_id, tokenizer.pad_id, tokenizer.mask_id
    if eot is None and isinstance(c.get("eos_token_id"), int):
        eot = c["eos_token_id"]
    special = set()
    if hasattr(tokenizer, "tok"):
        special = {i for i, a in tokenizer.tok.get_added_tokens_decoder().items() if a.special and i < vocab}
    info = {"task": "language_modeling", "vocab_size": vocab, "block_size": block, "tokenizer": "bpe",
            "eot_id": eot, "pad_id": pad, "mask_id": mask,
            "special_ids": sorted(special | {i for i in (eot, pad) if i is not None})}
    table = _valid_table(raw, p)

    where = {}
    for name, loc in _open_weights(_weight_files(p)).items():
        if not any(name.endswith(b) for b in _BUFFERS):
            where[_canonical(mt, name)] = loc
    hf_arch = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel", "bert": "BertForMaskedLM"}[mt]
    tied = bool(raw.get("tie_weights", True)) if mt != "bert" else True
    lay = _layout(hf_arch, table, tied)
    with torch.device("meta"):
        own = models.build(table, info).state_dict()
    heads = ["lm_head.weight"] if mt != "bert" else ["cls.predictions.bias"] + [
        f"cls.predictions.transform.{m}.{w}" for m in ("dense", "LayerNorm") for w in ("weight", "bias")]
    # A bare trunk (LlamaModel, GPT2Model, BertModel) has no head: the caller trains one (Imported.missing).
    trunk_only = not any(h in where for h in heads) \
        and not arch.endswith(("ForCausalLM", "LMHeadModel", "ForMaskedLM"))
    needed, plan = [], {}  # plan: trainlab name -> (hf names, transpose)
    for ours, theirs in lay.linears.items():
        conv = lay.conv and ours != "head"
        plan[ours + ".weight"] = ([t + ".weight" for t in theirs], conv)
        if ours + ".bias" in own:
            plan[ours + ".bias"] = ([t + ".bias" for t in theirs], False)
    for ours, theirs in lay.params.items():
        plan[ours] = ([theirs], False)
    missing = []
    for ours, (theirs, _) in list(plan.items()):
        absent = [t for t in theirs if t not in where]
        if not absent:
            needed += theirs
            continue
        if trunk_only and ours.startswith(("head.", "mlm.")):  # a bare trunk: the caller trains a head
            missing.append(ours)
            del plan[ours]
            continue
        raise UserError(f"{p}: the weights lack {absent[0]}, which config.json implies ({mt}, "
                        f"{table.n_layer} layers{', untied head' if ours == 'head.weight' else ''})",
                        "the checkpoint is incomplete or belongs to another config.json; download it again")
    loaded = _load(where, needed)
    tensors = {}
    for ours, (theirs, conv) in plan.items():
        parts = [loaded[t].t() if conv else loaded[t] for t in theirs]
        tensors[ours] = (parts[0] if len(parts) == 1 else torch.cat(parts, 0)).contiguous()
    if "head.weight" in own and "head.weight" not in tensors and "head.weight" not in missing:
        tensors["head.weight"] = tensors["wte.weight"]  # tied: the same tensor under both names
    used = set(needed)
    if tied and "lm_head.weight" in where:  # a tied checkpoint that stores its head anyway
        used.add("lm_head.weight")
    if mt == "bert":
        used |= {k for k in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias") if k in where}
    shapes = [f"{where[plan[k][0][0]][1]}{' (with its other parts)' if len(plan[k][0]) > 1 else ''} makes {k} "
              f"{tuple(v.shape)} where config.json implies {tuple(own[k].shape)}"
              for k, v in tensors.items() if k in plan and tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        raise UserError(f"{p}: tensors do not fit config.json: {'; '.join(shapes[:2])}",
                        "the weights belong to another config.json")
    unused = sorted(where[k][1] for k in where if k not in used)  # as the checkpoint names them
    return Imported(table=raw, info=info, tensors=tensors, tokenizer_path=str(tok_path), unused=unused,
                    missing=sorted(missing), architecture=arch or hf_arch)
