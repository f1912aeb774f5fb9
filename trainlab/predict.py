"""Using a trained run: `trainlab.load(RUN_DIR)` in Python, `trainlab predict RUN_DIR INPUT` on the command line.

Inputs are raw, as a user has them: rows of numbers (lists, numpy arrays, pandas frames, dicts by column name,
a CSV file), images (PIL images, image files, a folder of them), text (prompts; texts to classify). The run's own
preprocessing is applied (the same code as training): CSV columns picked by the names the model was trained on,
standardization with the training split's statistics, images resized and converted as in training, the run's
tokenizer with its truncation and padding (trainlab.data.text_classes.encode).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from trainlab import config, models, registry
from trainlab.errors import UserError

BATCH = 256


class Predictor:
    """A trained run, ready to predict. Attributes: `model` (the bare nn.Module, or the fitted scikit-learn
    wrapper of a classical run), `info` (what the data was: task, input shape, classes, statistics), `config`
    (the run's resolved recipe), `run_dir`; `tokenizer` for language models and text classifiers."""

    def __init__(self, run_dir: str | Path, model: nn.Module | None = None):
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise UserError(f"run folder {run_dir} does not exist", "give the folder `trainlab train` printed")
        self.config = config.load_resolved(self.run_dir / "config.toml")
        if model is not None:
            from trainlab.checkpoint import load_weights

            meta = models.read_meta(self.run_dir / "model")
            try:
                load_weights(model, self.run_dir / "model" / "model.safetensors")
            except ValueError as e:
                raise UserError(f"the model you passed does not fit the weights in {self.run_dir}/model ({e})",
                                "pass an instance of the class the run trained, built with the same sizes") from None
            self.model, self.info = model.eval(), meta["info"]
            self._own = True
        else:
            self._own = False
            self.model, self.info = models.load(self.run_dir / "model")
        self.task = self.info["task"]
        self.class_names = list(self.info.get("class_names") or [])
        self.tokenizer = None
        # A classifier of text (data.source stdlib_classes, jsonl_classes): inputs are token ids of its tokenizer.
        self.text_classifier = self.task == "classification" and "tokens" in self.info.get("capabilities", ())
        if self.task in ("language_modeling", "chat") or self.text_classifier:
            from trainlab.data import tokenizer as tok_lib

            self.tokenizer = tok_lib.load(self.run_dir / "model" / "tokenizer.json")

    # ----------------------------------------------------------------------------------------- predictions

    def predict(self, inputs: Any) -> np.ndarray | list[str]:
        """Class names (classification; a text classifier takes a text or a list of texts), values in the
        target's units (regression), cluster ids or codes (unsupervised), continuations (language models: a
        prompt or a list of prompts)."""
        if self.task == "language_modeling":
            prompts = [inputs] if isinstance(inputs, str) else list(inputs)
            return [self.generate(p) for p in prompts]
        if self.task == "chat":
            messages = [inputs] if isinstance(inputs, str) else list(inputs)
            return [self.chat(m, temperature=0.0) for m in messages]
        return self.predict_features(self.features(inputs))

    def predict_features(self, x: torch.Tensor) -> np.ndarray | list[str]:
        """`predict` on inputs already preprocessed by `features`."""
        if not isinstance(self.model, nn.Module):  # a classical model: its clusters, else its embedding
            flat = x.flatten(1).numpy()
            clusters = self.model.clusters(flat)
            return clusters if clusters is not None else self.model.embed(flat)
        if registry.unsupervised(self.config.model.kind):
            return self._batched(lambda b: self.model.encode(b)[0], x).numpy()
        out = self._outputs(x)
        if self.task == "classification":
            idx = out.argmax(-1).numpy()
            if not self.class_names or self.class_names == [str(i) for i in range(len(self.class_names))]:
                return idx  # the labels were the integers 0..K-1: give them back as integers
            return np.array([self.class_names[i] for i in idx])
        y = out.reshape(len(out), -1)[:, 0].numpy().astype(np.float64)
        return y * self.info.get("y_std", 1.0) + self.info.get("y_mean", 0.0)

    def predict_proba(self, inputs: Any) -> np.ndarray:
        """(N, classes) probabilities of a classifier, columns in the order of `class_names`."""
        if self.task != "classification":
            raise UserError(f"predict_proba needs a classifier; this run's task is '{self.task}'", "use predict")
        return self.proba_features(self.features(inputs))

    def proba_features(self, x: torch.Tensor) -> np.ndarray:
        return torch.softmax(self._outputs(x).float(), -1).numpy()

    def evaluate(self, split: str = "test") -> dict:
        """`trainlab eval` from Python: the model's metrics on the run's own `split`, beside a baseline (also
        written to eval_<split>.json). Works for runs of your own module too."""
        from trainlab.eval import evaluate_run

        return evaluate_run(self.run_dir, split, model=(self.model, self.info) if self._own else None)

    def anomaly_score(self, inputs: Any) -> np.ndarray:
        """Reconstruction error per example (autoencoders, PCA), higher = stranger."""
        x = self.features(inputs)
        if isinstance(self.model, nn.Module):
            if not hasattr(self.model, "decode"):
                raise UserError("anomaly_score needs a model that reconstructs its input (autoencoder, vae, pca)",
                                "use predict")
            recon = self._batched(lambda b: self.model.decode(self.model.encode(b)[0]), x)
            return ((recon.flatten(1) - x.flatten(1)) ** 2).mean(1).numpy()
        score = self.model.score(x.flatten(1).numpy())
        if score is None:
            raise UserError(f"model.kind = '{self.config.model.kind}' gives no anomaly score", "use predict")
        return score

    def generate(self, prompt: str = "", max_new_tokens: int = 100, temperature: float = 0.8, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, stop: Iterable[str] = ()) -> str:
        """A continuation of `prompt` by a language model (the text after the prompt)."""
        if self.task not in ("language_modeling", "chat"):
            raise UserError(f"generate needs a language model; this run's task is '{self.task}'"
                            + (" (it classifies text)" if self.text_classifier else ""), "use predict")
        from trainlab.generate import generate_text, require_generator

        require_generator(self.model)
        return "".join(generate_text(self.model, self.tokenizer, prompt, max_new_tokens, temperature, top_k, top_p,
                                     seed, tuple(stop), True))

    def chat(self, message: str, system: str = "", max_new_tokens: int = 100, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stop: Iterable[str] = ()) -> str:
        """The reply of a post-trained model to a user's message, through the chat template it was trained with
        (what `trainlab sample --chat` prints)."""
        if self.task != "chat":
            raise UserError(f"chat needs a post-trained language model (data.source conversations, preferences or "
                            f"prompts); this run's task is '{self.task}'", "use generate for a pre-trained model")
        from trainlab.data import chat
        from trainlab.generate import require_generator

        require_generator(self.model)
        return chat.reply(self.model, chat.ChatTemplate(self.tokenizer), message, system, max_new_tokens,
                          temperature, top_k, top_p, seed, tuple(stop))

    # ---------------------------------------------------------------------------------------- preprocessing

    def features(self, inputs: Any) -> torch.Tensor:
        """Raw inputs -> the (N, *input_shape) float tensor the model was trained on (standardized)."""
        if self.task in ("language_modeling", "chat"):
            raise UserError("a language model takes text: use generate(prompt) (or chat(message))",
                            "call predictor.generate")
        if self.text_classifier:
            return self._token_ids(inputs)
        shape = list(self.info["input_shape"])
        x = self._raw(inputs, shape)
        size = math.prod(shape)
        if list(x.shape) == shape or (x.ndim == 1 and len(x) == size):  # one example
            x = x.reshape(1, *shape)
        elif len(shape) == 3 and shape[0] == 1 and list(x.shape[-2:]) == shape[1:] and x.ndim in (2, 3):
            x = x.reshape(-1, *shape)  # grayscale images given without their channel axis
        elif x.ndim == 2 and x.shape[1] == size:
            x = x.reshape(len(x), *shape)  # flattened examples
        if list(x.shape[1:]) != shape:
            raise UserError(f"the model takes inputs of shape {shape}; got {list(x.shape[1:])} per example",
                            f"give rows of {size} numbers" if len(shape) == 1 else
                            "give images (PIL images, files or a folder) or arrays of that shape")
        if not np.isfinite(x).all():
            raise UserError("the inputs have NaN or infinite values", "clean or impute them first")
        if "x_mean" in self.info:
            stat = (-1,) + (1,) * (len(shape) - 1) if len(shape) == 3 else (-1,)
            mean = np.asarray(self.info["x_mean"], dtype=np.float32).reshape(stat)
            std = np.asarray(self.info["x_std"], dtype=np.float32).reshape(stat)
            x = (x - mean) / std
            far = float(np.median(np.abs(x)))
            if far > 3:  # half the values beyond 3 standard deviations: typical inputs sit well within
                import warnings

                warnings.warn(f"these inputs are far from the training data (median {far:.0f} standard deviations "
                              "from its mean): check their units and scaling", stacklevel=3)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def _token_ids(self, inputs: Any) -> torch.Tensor:
        """Texts (a string, a list of strings, or a Path to a .txt/.jsonl file) -> (N, block_size) token ids,
        encoded, truncated and padded exactly as in training."""
        from trainlab.data.text_classes import encode

        if isinstance(inputs, Path):
            texts = [t for _, t in text_inputs(inputs, getattr(self.config.data, "text_field", "text"))]
        elif isinstance(inputs, str):
            texts = [inputs]
        else:
            texts = list(inputs)
            bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
            if bad is not None:
                raise UserError(f"this model classifies text; input {bad} is a {type(texts[bad]).__name__}",
                                "give a string or a list of strings")
        ids, _ = encode(self.tokenizer, texts, self.info["block_size"], what="input")
        return torch.from_numpy(ids)

    def _raw(self, inputs: Any, shape: list[int]) -> np.ndarray:
        images = len(shape) == 3
        if isinstance(inputs, (str, Path)):
            p = Path(inputs)
            if p.is_dir() or (images and p.suffix.lower() in _image_suffixes()):
                return np.stack([self._image(f) for f in image_files(p)])
            if p.suffix.lower() == ".csv" or p.is_file():
                from trainlab.data.tabular import read_rows

                return self._csv_rows(read_rows(p, "give a CSV file with a header row"), str(p))
            raise UserError(f"{inputs} does not exist", "give a CSV file, an image file or a folder of images")
        if _is_pil(inputs):
            return self._image(inputs)[None]
        if isinstance(inputs, (list, tuple)) and inputs and (_is_pil(inputs[0]) or isinstance(inputs[0], (str, Path))):
            return np.stack([self._image(i) for i in inputs])
        if hasattr(inputs, "columns") and hasattr(inputs, "to_numpy"):  # a pandas DataFrame
            header = [str(c) for c in inputs.columns]
            return self._csv_rows((header, [list(map(str, r)) for r in inputs.to_numpy().tolist()]))
        if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], dict):
            names = self.info.get("feature_names") or []
            missing = sorted({n for n in names for r in inputs if n not in r})
            if missing:
                raise UserError(f"rows given by column name lack {missing[:5]}", f"give every column of {names}")
            return np.array([[float(r[n]) for n in names] for r in inputs], dtype=np.float32)
        try:
            x = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs, np.float32)
        except (TypeError, ValueError) as e:
            raise UserError(f"cannot read the inputs as numbers ({str(e).splitlines()[0][:100]})",
                            "give rows of numbers, images or a file") from None
        return x.astype(np.float32)

    def _image(self, item) -> np.ndarray:
        from trainlab.data.images import load_image

        c, h, _ = self.info["input_shape"]
        if _is_pil(item):
            import io

            buf = io.BytesIO()
            item.save(buf, format="PNG")
            buf.seek(0)
            item = buf
        return load_image(item, h, grayscale=c == 1)

    def _csv_rows(self, table: tuple[list[str], list[list[str]]], source: str = "the input") -> np.ndarray:
        header, body = table
        names = self.info.get("feature_names") or []
        if names and all(n in header for n in names):
            cols = [header.index(n) for n in names]  # by name: extra columns (an id, the target) are ignored
        elif len(header) == math.prod(self.info["input_shape"]) and not names:
            cols = list(range(len(header)))
        elif names:
            lacking = [n for n in names if n not in header]
            raise UserError(f"the input lacks the model's features {_listing(lacking)} (its columns: "
                            f"{_listing(header)})", "give a CSV with the columns the model was trained on (extra "
                            "columns are ignored)")
        else:
            raise UserError(f"the input has {len(header)} columns; the model takes "
                            f"{math.prod(self.info['input_shape'])} features", "give one column per feature")
        from trainlab.data.tabular import numeric_columns

        return numeric_columns(source, header, body, cols).astype(np.float32)

    # --------------------------------------------------------------------------------------------- running

    @torch.no_grad()
    def _batched(self, fn, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(x[i:i + BATCH]).float() for i in range(0, len(x), BATCH)]) if len(x) else \
            torch.empty(0)

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.text_classifier and getattr(self.config.data, "trim", True):
            from trainlab.data.text_classes import trim

            pad = self.info["pad_id"]  # each batch cut to its longest text, as training's batches were
            return self._batched(lambda b: self.model(trim(b, pad)), x)
        return self._batched(self.model, x)


def _listing(names: list[str], most: int = 12) -> str:
    return str(names) if len(names) <= most else f"{names[:most - 2]} ... and {len(names) - most + 2} more"


def _is_pil(x) -> bool:
    return type(x).__module__.startswith("PIL.")


def _image_suffixes() -> set[str]:
    from trainlab.data.images import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def image_files(p: Path) -> list[Path]:
    """An image file itself, or every image under a folder (sub-folders too: a class-per-folder tree), sorted."""
    if p.is_file():
        return [p]
    found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _image_suffixes()
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not found:
        raise UserError(f"{p} holds no image files ({', '.join(sorted(_image_suffixes()))})", "give a folder of images")
    return found


# ------------------------------------------------------------------------------------------ the command


def predict_command(run_dir: str, inputs: list[str], out: str | None, max_new_tokens: int = 100) -> str:
    """`trainlab predict`: a CSV with one row per input (its name, the prediction, class probabilities),
    written to `out` or returned for printing."""
    import io

    p = Predictor(run_dir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if p.task in ("chat", "language_modeling"):  # an input is a prompt, or a file of one prompt per line
        prompts = []
        for item in inputs:
            path = Path(item)
            prompts += [line for line in _read_text(path).splitlines() if line.strip()] if path.is_file() else [item]
    if p.task == "chat":  # a message to reply to, answered greedily
        w.writerow(["message", "reply"])
        for message in prompts:
            w.writerow([message, p.chat(message, max_new_tokens=max_new_tokens, temperature=0.0)])
    elif p.task == "language_modeling":
        w.writerow(["prompt", "continuation"])
        for prompt in prompts:
            w.writerow([prompt, p.generate(prompt, max_new_tokens, temperature=0.0)])
    elif p.text_classifier:  # a file is one text per line (JSONL: its text field); anything else is a text
        names, texts = [], []
        for item in inputs:
            path = Path(item)
            if path.is_file():
                for n, t in text_inputs(path, getattr(p.config.data, "text_field", "text")):
                    names.append(f"{path.name}:{n}")
                    texts.append(t)
            elif path.suffix.lower() in (".txt", ".jsonl", ".json") and "\n" not in item:
                raise UserError(f"{item} does not exist",
                                "give a .txt file (one text per line), a .jsonl file, or a text")
            else:
                names.append(item)
                texts.append(item)
        _write_classes(w, p, names, p.features(texts))
    else:
        names, x = [], []
        for item in inputs:
            path = Path(item)
            if len(p.info["input_shape"]) == 3:
                if not path.exists():
                    raise UserError(f"{item} does not exist", "give image files or folders of images")
                if not path.is_dir() and path.suffix.lower() not in _image_suffixes():
                    raise UserError(f"this model takes images; {item} is not an image file "
                                    f"({', '.join(sorted(_image_suffixes()))}) or a folder",
                                    "give image files or folders of images")
                files = image_files(path)
                names += [str(f) for f in files]
                x.append(p.features([str(f) for f in files]))
            else:
                rows = p.features(path)
                names += [f"{path.name}:{i + 2}" for i in range(len(rows))]  # file:line of the row
                x.append(rows)
        feats = torch.cat(x)
        if p.task == "classification":
            _write_classes(w, p, names, feats)
        else:
            arr = np.asarray(p.predict_features(feats))
            if arr.ndim == 2:
                w.writerow(["input", *[f"z{i}" for i in range(arr.shape[1])]])
                for n, row in zip(names, arr):
                    w.writerow([n, *[f"{v:.6g}" for v in row]])
            else:
                w.writerow(["input", "prediction"])
                for n, v in zip(names, arr):
                    w.writerow([n, f"{v:.6g}" if isinstance(v, (float, np.floating)) else v])
    text = buf.getvalue()
    if out:
        from trainlab.runs import write_text

        write_text(Path(out), text)
        return f"wrote {len(text.splitlines()) - 1} predictions to {out}"
    return text.rstrip("\n")


def _write_classes(w, p: Predictor, names: list[str], feats: torch.Tensor) -> None:
    pred, proba = p.predict_features(feats), p.proba_features(feats)
    w.writerow(["input", "prediction", *[f"p_{c}" for c in (p.class_names or range(proba.shape[1]))]])
    for n, c, pr in zip(names, pred, proba):
        w.writerow([n, c, *[f"{v:.6f}" for v in pr]])


def text_inputs(path: Path, text_field: str = "text") -> list[tuple[int, str]]:
    """(line number, text) of each non-blank line of a text file; of a .jsonl file, each line's `text_field`."""
    import json

    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix.lower() != ".jsonl":
            rows.append((n, line))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {n} is not JSON: {e.msg}", "give one JSON object per line") from None
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise UserError(f"{path} line {n} has no text field '{text_field}'",
                            f"give each line's text as a string in '{text_field}' (the run's data.text_field)")
        rows.append((n, row[text_field]))
    return rows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} as UTF-8 text ({type(e).__name__})", "give a UTF-8 text file") from None
