"""Recipes: TOML files validated once, at the edge, into typed models.

A recipe has seven tables: run, data, model, objective, optim, schedule, loop. Every key has a default, so a
recipe only says what differs. `key.sub=value` overrides (from the command line) are parsed as TOML values.
Unknown keys, wrong types and out-of-range values raise `UserError` naming the dotted key, what was expected
and what came, with the nearest valid key for typos.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from trainlab.errors import UserError


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Table):
    name: str = "run"
    description: str = ""
    seed: int = 0
    out_dir: str = "runs"  # the run folder is out_dir/name (name-2, name-3, ... if taken)


class DataConfig(_Table):
    # Bundled (no download): digits, breast_cancer, diabetes; stdlib (the Python standard library's source as
    # text). Users' own: csv, image_folder, idx; text (files, folders, globs), jsonl, hf_disk (datasets on disk).
    source: Literal["digits", "breast_cancer", "diabetes", "csv", "image_folder", "idx",
                    "stdlib", "text", "jsonl", "hf_disk"] = "digits"
    path: str = ""  # csv: the file; image_folder: the root (one sub-folder per class); idx: the images file;
    # text: a file, folder or glob; jsonl: a file or glob; hf_disk: the folder of Dataset.save_to_disk
    labels_path: str = ""  # idx: the labels file
    target: str = ""  # csv: the target column (default: the last column)
    task: Literal["auto", "classification", "regression", "unlabeled"] = "auto"  # unlabeled: no target column
    num_classes: int = Field(0, ge=0)  # 0 = infer from the labels; otherwise labels must lie in [0, num_classes)
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    split_seed: int = 0  # the split is fixed by this seed, independent of run.seed
    subset: int = Field(0, ge=0)  # keep only this many training examples (0 = all)
    batch_size: PositiveInt = 64
    eval_batch_size: PositiveInt = 512
    standardize: bool = True  # z-score inputs (and regression targets) with training-split statistics
    image_size: PositiveInt = 28  # image_folder: images are resized to image_size x image_size
    grayscale: bool = True  # image_folder: one channel instead of three
    augment: bool = False  # images: random shifts and rotations of training batches
    augment_shift: float = Field(1.0, ge=0)  # pixels, at most
    augment_degrees: float = Field(10.0, ge=0, le=180)
    # Text (language models):
    text_field: str = "text"  # jsonl, hf_disk: the field holding the text
    tokenizer: Literal["bpe", "char"] = "bpe"  # byte-level BPE trained on the training split, or characters
    vocab_size: int = Field(4096, ge=2)  # bpe
    block_size: PositiveInt = 256  # tokens of context per training window
    split: Literal["documents", "tail"] = "documents"  # text: hold out whole documents (by a stable hash of
    # their names), or cut the concatenated text: the last val_fraction + test_fraction (one-file corpora)
    on_decode_error: Literal["skip", "error"] = "skip"  # a file that is not UTF-8: leave it out (counted) or stop
    max_bytes: int = Field(0, ge=0)  # use documents (in a stable hash order) up to this many bytes (0 = all)
    cache_dir: str = ""  # packed token files are cached here (default: ~/.cache/trainlab)
    anomaly_class: int = -1  # unsupervised: this class never reaches training and counts as the anomaly (-1 = none)


CLASSICAL_KINDS = ("kmeans", "dbscan", "pca", "tsne", "umap")  # fitted by scikit-learn / umap-learn, no loop
UNSUPERVISED_KINDS = CLASSICAL_KINDS + ("autoencoder", "vae")


class ModelConfig(_Table):
    # Supervised: mlp, cnn. Unsupervised, neural (the training loop): autoencoder, vae.
    # Unsupervised, classical (fitted once): kmeans, dbscan, pca, tsne, umap.
    # Language model: gpt.
    kind: Literal["mlp", "cnn", "autoencoder", "vae", "kmeans", "dbscan", "pca", "tsne", "umap", "gpt"] = "mlp"
    hidden: list[PositiveInt] = [128]  # mlp, and the mlp autoencoder/vae: hidden widths of the encoder
    channels: list[PositiveInt] = [32, 64]  # cnn, and the conv autoencoder/vae: width of each stage
    blocks: PositiveInt = 1  # cnn: residual blocks per stage
    dropout: float = Field(0.0, ge=0, lt=1)
    norm: Literal["batch", "layer", "rms", "none"] = "batch"  # gpt: layer or rms
    activation: Literal["relu", "gelu", "swiglu"] = "relu"  # gpt: gelu or swiglu
    arch: Literal["mlp", "conv"] = "mlp"  # autoencoder/vae: fully connected or convolutional encoder/decoder
    latent_dim: PositiveInt = 8  # autoencoder/vae: size of the code
    n_clusters: int = Field(10, ge=2)  # kmeans; and the k-means run on every other method's codes/embeddings
    elbow_max_k: int = Field(0, ge=0)  # kmeans: also fit k = 2..elbow_max_k for the elbow plot (0 = skip)
    eps: float = Field(0.5, gt=0)  # dbscan: neighbourhood radius (in standardized units)
    min_samples: PositiveInt = 5  # dbscan: neighbours that make a core point
    n_components: int = Field(2, ge=1)  # pca, tsne, umap: dimensions of the embedding
    perplexity: float = Field(30.0, gt=0)  # tsne
    n_neighbors: int = Field(15, ge=2)  # umap; also the k of the nearest-neighbour map that embeds new points
    min_dist: float = Field(0.1, ge=0)  # umap
    n_layer: PositiveInt = 4  # gpt: Transformer blocks
    n_head: PositiveInt = 4  # gpt: attention heads (n_embd must divide by it)
    n_embd: PositiveInt = 128  # gpt: residual stream width
    pos: Literal["rope", "learned"] = "rope"  # gpt: rotary or learned absolute positions
    mlp_ratio: float = Field(4.0, gt=0)  # gpt: MLP hidden width / n_embd (x 2/3 for swiglu)
    bias: bool = False  # gpt: biases in linear layers and LayerNorm
    tie_weights: bool = True  # gpt: the output head shares the token embedding
    moe_experts: int = Field(0, ge=0)  # gpt: experts per MLP (0 = dense)
    moe_top_k: PositiveInt = 2  # gpt: experts each token is routed to


class ObjectiveConfig(_Table):
    # auto: classification/regression from the data's task; reconstruction for autoencoders, elbo for VAEs
    kind: Literal["auto", "classification", "regression", "reconstruction", "elbo", "next_token"] = "auto"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    kl_weight: float = Field(1.0, ge=0)  # elbo: weight of the KL term (beta)
    kl_warmup_steps: int = Field(0, ge=0)  # elbo: the KL weight ramps linearly from 0 over these steps
    moe_aux_weight: float = Field(0.01, ge=0)  # next_token: weight of the MoE load-balancing loss


class OptimConfig(_Table):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)  # never applied to biases and norm weights
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd
    nesterov: bool = False  # sgd


class ScheduleConfig(_Table):
    name: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: int = Field(0, ge=0)  # linear warm-up from 0, then the decay
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # the decay ends at lr * min_lr_ratio


class LoopConfig(_Table):
    epochs: PositiveInt = 10  # used when steps = 0
    steps: int = Field(0, ge=0)  # optimizer steps; 0 = derived from epochs (written into config.toml)
    max_steps: int = Field(0, ge=0)  # a cap on optimizer steps for any recipe (0 = none)
    grad_accum: PositiveInt = 1  # micro-batches per optimizer step
    clip_grad_norm: float = Field(1.0, ge=0)  # 0 = no clipping (the norm is logged either way)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    device: str = "auto"  # auto: cuda, then mps, then cpu
    eval_every: int = Field(0, ge=0)  # steps between validations; 0 = once per epoch (derived)
    eval_batches: int = Field(0, ge=0)  # validation batches per evaluation; 0 = the whole split
    log_every: PositiveInt = 10
    checkpoint_every: int = Field(0, ge=0)  # steps between checkpoints/last; 0 = at every evaluation
    monitor: str = "loss"  # the validation metric that picks checkpoints/best and drives early stopping
    monitor_mode: Literal["min", "max"] = "min"
    patience: int = Field(0, ge=0)  # evaluations without improvement before stopping; 0 = never stop early
    restore_best: bool = True  # export the best weights (by monitor) rather than the last ones
    compile: bool = False  # torch.compile the model (worth it on GPUs; slow to start on a CPU)
    peak_flops: float = Field(0.0, ge=0)  # the device's peak FLOP/s for MFU (0 = known GPUs only)
    # Under torchrun (several processes): "ddp" keeps a whole model on every device and averages gradients;
    # "fsdp" shards parameters, gradients and optimizer state across devices (FSDP2): 1/N of the training state each.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: NCCL on CUDA GPUs, gloo on CPUs
    dist_timeout_s: PositiveInt = 600  # a collective that waits longer fails the run instead of hanging

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if v in ("auto", "cpu", "mps", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")


class Config(_Table):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loop: LoopConfig = LoopConfig()

    def to_toml(self) -> str:
        return tomli_w.dumps(self.model_dump(mode="json"))


# ---------------------------------------------------------------------------------------------- recipes


def recipe_dirs() -> list[Path]:
    """Where bundled recipes live: inside the installed wheel, or at the top of a source checkout."""
    pkg = Path(__file__).resolve().parent
    return [d for d in (pkg / "recipes", pkg.parent / "recipes") if d.is_dir()]


def bundled_recipes() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def find_recipe(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise UserError(f"recipe file {name_or_path} does not exist",
                            "give the path of a TOML recipe or a bundled name (`trainlab recipes` lists them)")
        return p
    recipes = bundled_recipes()
    if name_or_path in recipes:
        return recipes[name_or_path]
    near = difflib.get_close_matches(name_or_path, list(recipes), n=1)
    raise UserError(f"no recipe named '{name_or_path}' and no such file",
                    f"did you mean '{near[0]}'?" if near else "`trainlab recipes` lists the bundled recipes")


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    path = find_recipe(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"recipe {path} is not valid TOML: {e}", "fix the line named above") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read recipe {path}: {e}", "check the file's permissions and encoding") from None
    raw.setdefault("run", {}).setdefault("name", path.stem)
    for item in overrides:
        apply_override(raw, item)
    return validate(raw, source=str(path))


def parse_value(text: str) -> Any:
    """An override's value as TOML (`3`, `1e-3`, `true`, `[64, 32]`, `"x"`); anything else is a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"override '{item}' is not of the form key.sub=value", "for example: optim.lr=3e-4")
    *tables, leaf = key.split(".")
    node = raw
    for t in tables:
        node = node.setdefault(t, {})
        if not isinstance(node, dict):
            raise UserError(f"override '{item}': '{t}' is a value, not a table", "check the dotted key")
    node[leaf] = parse_value(value.strip())


def all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += all_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def validate(raw: dict, source: str = "recipe") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise _user_error(e, source) from None


def _user_error(e: ValidationError, source: str) -> UserError:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    got = err.get("input")
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    if err["type"] == "extra_forbidden":
        near = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
        hint = f"did you mean '{near[0]}'?" if near else "`trainlab recipes --keys` lists every valid key"
        return UserError(f"{source}: unknown key '{key}'{more}", hint)
    msg = err["msg"].removeprefix("Value error, ")
    return UserError(f"{source}: '{key}' {_expectation(msg)}; got {got!r}{more}",
                     "fix the value in the recipe or override it with " + f"{key}=...")


def _expectation(msg: str) -> str:
    # pydantic says "Input should be greater than 0"; we say "must be greater than 0".
    for prefix in ("Input should be ", "Input should "):
        if msg.startswith(prefix):
            return "must be " + msg[len(prefix):] if prefix.endswith("be ") else "must " + msg[len(prefix):]
    return msg


def save(cfg: Config, path: Path) -> None:
    path.write_text(cfg.to_toml(), encoding="utf-8")


def load_resolved(path: Path) -> Config:
    """The fully resolved config.toml of a run folder."""
    if not path.is_file():
        raise UserError(f"{path} does not exist", "is this a run folder written by `trainlab train`?")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid TOML: {e}", "the run folder is damaged; rerun the recipe") from None
    return validate(raw, source=str(path))
