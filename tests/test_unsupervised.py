import json

import numpy as np
import pytest
import torch

from trainlab import loop, models
from trainlab.config import data_table, model_table
from trainlab.data import build
from trainlab.errors import UserError
from trainlab.eval import unsupervised as U
from trainlab.models import classical
from trainlab.models.autoencoder import AutoEncoder
from trainlab.objectives.unsupervised import ELBO, Reconstruction
from tests.conftest import run_cli, tiny


def blobs(n=90, seed=0):
    """Three well separated clusters in 5-D, and their true labels."""
    rng = np.random.default_rng(seed)
    centers = np.eye(3, 5) * 10
    y = np.arange(n) % 3
    return (centers[y] + rng.normal(size=(n, 5))).astype(np.float32), y


@pytest.mark.parametrize("kind,extra", [("kmeans", {"n_clusters": 3}), ("dbscan", {"eps": 3.0, "min_samples": 4})])
def test_clustering_recovers_separated_blobs(kind, extra):
    x, y = blobs()
    m, fit_metrics = classical.fit(model_table(kind=kind, **extra), x, seed=0)
    xt, yt = blobs(seed=1)
    out = U.cluster_metrics(xt, m.clusters(xt), yt)
    assert out["ari"] > 0.95 and out["nmi"] > 0.95 and out["silhouette"] > 0.5
    assert (fit_metrics["inertia"] > 0) if kind == "kmeans" else fit_metrics["clusters"] == 3


def test_dbscan_marks_far_points_as_noise():
    x, _ = blobs()
    m, _ = classical.fit(model_table(kind="dbscan", eps=3.0, min_samples=4), x, seed=0)
    assert m.clusters(np.full((1, 5), 100.0, np.float32))[0] == -1
    assert m.score(np.full((1, 5), 100.0, np.float32))[0] > m.score(x).max()


@pytest.mark.parametrize("kind", ["pca", "tsne", "umap"])
def test_embeddings_keep_clusters_apart(kind):
    x, y = blobs(120)
    extra = {"pca": {}, "tsne": {"perplexity": 10, "n_neighbors": 10}, "umap": {"n_neighbors": 10}}[kind]
    m, _ = classical.fit(model_table(kind=kind, n_components=2, **extra), x, seed=0)
    z = m.embed(x)
    assert z.shape == (120, 2)
    from sklearn.cluster import KMeans

    assert U.cluster_metrics(z, KMeans(3, n_init=4, random_state=0).fit_predict(z), y)["ari"] > 0.95
    xt, _ = blobs(30, seed=2)
    assert m.embed(xt).shape == (30, 2)  # new points, through the nearest-neighbour map for t-SNE/UMAP


def test_pca_matches_scikit_learn_and_reconstructs():
    from sklearn.decomposition import PCA

    x, _ = blobs()
    m, fit_metrics = classical.fit(model_table(kind="pca", n_components=3), x, seed=0)
    ref = PCA(3).fit(x)
    np.testing.assert_allclose(np.abs(m.embed(x)), np.abs(ref.transform(x)), rtol=1e-3, atol=1e-3)
    assert fit_metrics["explained_variance"] == pytest.approx(ref.explained_variance_ratio_.sum(), rel=1e-5)
    assert ((m.reconstruct(x) - x) ** 2).mean() < 1.0


@pytest.mark.parametrize("kind", ["kmeans", "dbscan", "pca", "tsne"])
def test_saved_model_round_trip_without_pickle(tmp_path, kind):
    x, _ = blobs()
    cfg = model_table(kind=kind, n_clusters=3, **{"dbscan": {"eps": 3.0}, "tsne": {"perplexity": 10}}.get(kind, {}))
    m, _ = classical.fit(cfg, x, seed=0)
    m.save(tmp_path / "model", cfg, {"task": "unlabeled"})
    assert not list((tmp_path / "model").glob("*.pkl"))
    back, info = models.load(tmp_path / "model")
    xt, _ = blobs(20, seed=3)
    for method in ("clusters", "embed", "reconstruct", "score"):
        a, b = getattr(m, method)(xt), getattr(back, method)(xt)
        assert (a is None and b is None) or np.allclose(a, b)


def test_too_few_samples_for_k():
    with pytest.raises(UserError, match="n_clusters = 10 needs at least"):
        classical.fit(model_table(kind="kmeans", n_clusters=10), np.zeros((5, 2), np.float32), seed=0)


def test_umap_missing_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_umap(name, *args, **kwargs):
        if name == "umap":
            raise ImportError("No module named 'umap'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_umap)
    with pytest.raises(UserError) as e:
        classical.fit(model_table(kind="umap"), blobs()[0], seed=0)
    assert "umap-learn" in e.value.message and "trainlab[umap]" in e.value.hint


@pytest.mark.parametrize("arch,shape", [("mlp", [1, 8, 8]), ("conv", [1, 8, 8]), ("conv", [3, 10, 10]),
                                        ("mlp", [7])])
def test_autoencoder_shapes(arch, shape):
    for variational in (False, True):
        m = AutoEncoder(shape, 4, arch, [16], [8, 16], variational)
        x = torch.randn(5, *shape)
        mu, logvar = m.encode(x)
        assert mu.shape == (5, 4) and (logvar is not None) == variational
        assert m(x).shape == x.shape


def test_vae_kl_term_matches_torch_distributions():
    torch.manual_seed(0)
    m = AutoEncoder([6], 3, "mlp", [8], [], variational=True)
    x = torch.randn(4, 6)
    _, metrics = ELBO().loss(m, {"x": x})
    mu, logvar = m.encode(x)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref = torch.distributions.kl_divergence(q, p).sum(1).mean()
    assert float(metrics["kl"]) == pytest.approx(float(ref.detach()), rel=1e-5)


def test_kl_warmup_ramps_beta():
    obj = ELBO(kl_weight=2.0, kl_warmup_steps=100)
    obj.step = 0
    assert obj.beta() == 0.0
    obj.step = 50
    assert obj.beta() == pytest.approx(1.0)
    obj.step = 500
    assert obj.beta() == pytest.approx(2.0)


@pytest.mark.parametrize("objective,variational", [(Reconstruction(), False), (ELBO(), True)])
def test_autoencoders_overfit_a_single_batch(objective, variational):
    torch.manual_seed(0)
    m = AutoEncoder([1, 8, 8], 8, "mlp", [64], [], variational)
    x = torch.randn(16, 1, 8, 8)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss, metrics = objective.loss(m, {"x": x})
        first = first if first is not None else float(metrics["recon_mse"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(metrics["recon_mse"]) < 0.25 * first


def test_loop_trains_a_vae_and_logs_the_elbo(tmp_path):
    s = loop.train(tiny("digits-vae", "loop.max_steps=30", "loop.eval_every=10"), tmp_path / "r")
    rows = [json.loads(line) for line in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert {"elbo", "kl", "recon_mse"} <= set(val[-1]) and val[-1]["elbo"] > val[0]["elbo"]
    assert s["status"] == "completed"


def test_anomaly_class_never_reaches_training():
    d = build(data_table(source="digits", anomaly_class=8))
    assert (d.splits["train"].y != 8).all()
    assert (d.splits["val"].y == 8).any() and (d.splits["test"].y == 8).any()
    with pytest.raises(UserError, match="anomaly_class = 12"):
        build(data_table(source="digits", anomaly_class=12))


def test_threshold_and_anomaly_metrics():
    score = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.25])
    truth = np.array([0, 0, 0, 1, 1, 0], bool)
    t = U.best_f1_threshold(score, truth)
    assert 0.3 < t <= 0.8
    m = U.anomaly_metrics(score, truth, t)
    assert m["roc_auc"] == 1.0 and m["precision"] == 1.0 and m["recall"] == 1.0


def test_unlabeled_csv_clusters_without_labels(tmp_path):
    x, _ = blobs(60)
    (tmp_path / "u.csv").write_text("a,b,c,d,e\n" + "\n".join(",".join(f"{v:.3f}" for v in r) for r in x) + "\n")
    run = tmp_path / "run"
    r = run_cli("train", "digits-kmeans", "data.source=csv", f"data.path={tmp_path / 'u.csv'}", "data.task=unlabeled",
                "model.n_clusters=3", "model.elbow_max_k=5", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    out = json.loads(run_cli("eval", str(run), "--json").stdout)
    assert "ari" not in out["metrics"] and out["labels_used"] == [] and out["metrics"]["silhouette"] > 0.5
    assert run_cli("report", str(run)).returncode == 0 and (run / "elbow.png").is_file()


def test_bad_unsupervised_input_from_the_command_line(tmp_path):
    r = run_cli("train", "digits-kmeans", "data.subset=5", "model.elbow_max_k=0")
    assert r.returncode == 2 and "n_clusters = 10 needs at least" in r.stderr
    rows = "\n".join(f"{'nan' if i == 3 else i},{i % 2}" for i in range(30))
    (tmp_path / "n.csv").write_text("a,b\n" + rows + "\n")
    r = run_cli("train", "digits-kmeans", "data.source=csv", f"data.path={tmp_path / 'n.csv'}", "data.task=unlabeled")
    assert r.returncode == 2 and "NaN" in r.stderr
    (tmp_path / "s.csv").write_text("a,b\n1,x\n2,y\n")
    r = run_cli("train", "digits-kmeans", "data.source=csv", f"data.path={tmp_path / 's.csv'}", "data.task=unlabeled")
    assert r.returncode == 2 and "not numeric" in r.stderr
    r = run_cli("train", "digits-mlp", "data.anomaly_class=3")
    assert r.returncode == 2 and "unsupervised models" in r.stderr
    r = run_cli("train", "digits-tsne", "data.anomaly_class=3")
    assert r.returncode == 2 and "no anomaly score" in r.stderr
