"""Stream 2 — real data: scikit-learn's bundled digits (1,797 8×8 images; nothing is downloaded).

The structure copies X-TAIL (spec §6) at toy scale:
* a frozen base MLP encoder ``64 → H → E`` is "pretrained" on a held-out chunk of plain digits; it is
  pre-LN like a transformer block (each linear layer sees its input standardised per sample), so the
  adapters' key responses measure the input's direction — as MoRAM's q/k/v/c_fc atoms do in CLIP —
  rather than its overall brightness (``layer_norm=False`` gives the raw-pixel MLP, where the newest
  task's atoms win every input: ``moram-ref demo --no-layer-norm`` shows it);
* the stream is 5 *domains*, each a fixed transformation of its own disjoint chunk of images
  (rotated, inverted, upside-down, block-shuffled, rotated-and-inverted), each with its own 10
  classes, so the label space grows to 50 classes and test time is task-agnostic over all of them;
* every class has a fixed embedding, the mean base embedding of a few held-out exemplars (the role
  CLIP's text tower plays: it makes zero-shot prediction, hence Transfer, meaningful);
* evaluation after each domain is task-agnostic over every class seen so far (a domain not yet
  learned is scored over the seen classes plus its own, which is its zero-shot Transfer entry);
* training uses the two-term loss of spec §6: image→class cross-entropy with the classes of earlier
  domains masked out (only the current domain's classes compete), plus class→image cross-entropy.
Adapters sit on both linear layers of the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moram_ref.config import MoRAMConfig
from moram_ref.experiments.toy.methods import activation_mass, count_trainable, key_norms, make_layer, silent_fraction
from moram_ref.experiments.toy.pretrain import layer_norm, layer_norm_backward, pretrain_encoder
from moram_ref.numpy.losses import two_term_loss
from moram_ref.numpy.optim import Adam

DOMAINS = ("rotate90", "invert", "upside_down", "shuffle_blocks", "rotate270_invert")


@dataclass(frozen=True)
class DigitsSettings:
    hidden: int = 128
    embed: int = 32
    exemplars: int = 1  # one image per class makes the class embedding: a weak zero-shot classifier
    steps: int = 300
    batch: int = 32
    lr: float = 1e-3
    logit_scale: float = 20.0
    pretrain_steps: int = 1500
    domain_offset: float | None = None
    layer_norm: bool = True  # pre-LN encoder (as a transformer block); False = the raw-pixel MLP of earlier versions


def transform(images: np.ndarray, domain: str, rng_perm: np.ndarray) -> np.ndarray:
    """Apply a domain's fixed transformation to (N, 8, 8) images in [0, 1]."""
    if domain == "rotate90":
        return np.rot90(images, 1, axes=(1, 2))
    if domain == "invert":
        return 1.0 - images
    if domain == "upside_down":
        return images[:, ::-1, :]
    if domain == "shuffle_blocks":  # 16 blocks of 2×2 pixels, in a fixed random order
        blocks = images.reshape(-1, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(-1, 16, 2, 2)
        blocks = blocks[:, rng_perm]
        return blocks.reshape(-1, 4, 4, 2, 2).transpose(0, 1, 3, 2, 4).reshape(-1, 8, 8)
    if domain == "rotate270_invert":
        return 1.0 - np.rot90(images, 3, axes=(1, 2))
    raise ValueError(f"unknown domain {domain!r}; known: {DOMAINS}")


def make_stream(settings: DigitsSettings, rng: np.random.Generator) -> dict:
    """Split the digits into a pretraining chunk and one chunk per domain; build class embeddings."""
    from sklearn.datasets import load_digits  # noqa: PLC0415  (optional dependency: the demo extra)

    data = load_digits()
    images, labels = data.images / 16.0, data.target
    order = rng.permutation(len(images))
    chunks = np.array_split(order, len(DOMAINS) + 1)
    pre = chunks[0]
    base = pretrain_encoder(images[pre].reshape(len(pre), 64), labels[pre], settings, rng)
    perm = rng.permutation(16)
    domains = []
    for d, (name, idx) in enumerate(zip(DOMAINS, chunks[1:])):
        x = transform(images[idx], name, perm).reshape(len(idx), 64)
        y = labels[idx] + 10 * d  # the domain's own classes: 10d … 10d+9
        idx_ex, idx_train, idx_test = _split(y, settings.exemplars, rng)
        domains.append({"name": name, "x_ex": x[idx_ex], "y_ex": y[idx_ex],
                        "x_train": x[idx_train], "y_train": y[idx_train],
                        "x_test": x[idx_test], "y_test": y[idx_test]})
    class_emb = np.zeros((10 * len(DOMAINS), settings.embed))
    if settings.domain_offset is None:
        for dom in domains:
            z = base.embed(dom["x_ex"])
            for c in np.unique(dom["y_ex"]):
                mean = z[dom["y_ex"] == c].mean(axis=0)
                class_emb[c] = mean / np.linalg.norm(mean)
    else:
        z = base.embed(images[pre].reshape(len(pre), 64))
        proto = np.stack([z[labels[pre] == c].mean(axis=0) for c in range(10)])
        proto /= np.linalg.norm(proto, axis=1, keepdims=True)
        style = rng.standard_normal((len(DOMAINS), settings.embed))
        style /= np.linalg.norm(style, axis=1, keepdims=True)
        for d in range(len(DOMAINS)):
            e = proto + settings.domain_offset * style[d]
            class_emb[10 * d: 10 * d + 10] = e / np.linalg.norm(e, axis=1, keepdims=True)
    return {"base": base, "domains": domains, "class_emb": class_emb}


def validation_stream(stream: dict, rng: np.random.Generator, share: float = 1 / 3) -> dict:
    """The same stream with each domain's test set replaced by a validation split carved from its
    training images (a ``share`` of each class); test images are never seen. Used to choose a setting."""
    domains = []
    for dom in stream["domains"]:
        y = dom["y_train"]
        train, val = [], []
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            cut = max(1, int(round(share * len(idx))))
            val += list(idx[:cut])
            train += list(idx[cut:])
        domains.append({**dom, "x_train": dom["x_train"][train], "y_train": y[train],
                        "x_test": dom["x_train"][val], "y_test": y[val]})
    return {**stream, "domains": domains}


def _split(y: np.ndarray, exemplars: int, rng: np.random.Generator):
    """Per class: ``exemplars`` images for the class embedding, then 2/3 train, 1/3 test."""
    ex, train, test = [], [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        rest = idx[exemplars:]
        cut = (2 * len(rest)) // 3
        ex += list(idx[:exemplars])
        train += list(rest[:cut])
        test += list(rest[cut:])
    return np.array(ex), np.array(train), np.array(test)


class AdaptedEncoder:
    """The base encoder with an adapter on each linear layer: ``z = L2(relu(L1(x)))``, normalised."""

    def __init__(self, method: str, base, config: MoRAMConfig, layer_factory=make_layer) -> None:
        self.layers = [layer_factory(method, base.w1, base.b1, config), layer_factory(method, base.w2, base.b2, config)]
        self.normalised = base.normalised

    def forward(self, x: np.ndarray, training: bool, rng=None):
        h_pre, c1 = self.layers[0].forward(layer_norm(x, self.normalised)[0], training, rng)
        hn, sigma = layer_norm(np.maximum(h_pre, 0.0), self.normalised)
        z, c2 = self.layers[1].forward(hn, training, rng)
        norm = np.linalg.norm(z, axis=1, keepdims=True)
        return z / norm, (c1, c2, h_pre, hn, sigma, z, norm)

    def backward(self, grad_e: np.ndarray, cache) -> list[dict]:
        c1, c2, h_pre, hn, sigma, z, norm = cache
        e = z / norm
        grad_z = (grad_e - e * np.sum(e * grad_e, axis=1, keepdims=True)) / norm
        g2 = self.layers[1].backward(grad_z, c2)
        g1 = self.layers[0].backward(layer_norm_backward(g2["x"], hn, sigma, self.normalised) * (h_pre > 0), c1)
        return [g1, g2]


def evaluate(encoder: AdaptedEncoder, stream: dict, seen: int) -> np.ndarray:
    """Task-agnostic accuracy on every domain's test set after ``seen`` domains were learned.

    Label space for domain ``j``: the classes of domains ``0 … max(seen − 1, j)`` — every class seen so
    far, plus domain ``j``'s own classes when it is not learned yet (its zero-shot score, for Transfer).
    """
    accs = []
    for j, dom in enumerate(stream["domains"]):
        n_classes = 10 * max(seen, j + 1)
        e, _ = encoder.forward(dom["x_test"], training=False)
        pred = np.argmax(e @ stream["class_emb"][:n_classes].T, axis=1)
        accs.append(float(np.mean(pred == dom["y_test"])))
    return np.array(accs)


def run_method(method: str, config: MoRAMConfig, settings: DigitsSettings, stream: dict, seed: int, *,
               layer_factory=make_layer, on_task_end=None) -> dict:
    """Train one method through the domains; returns its accuracy matrix and diagnostics.

    ``layer_factory(method, weight, bias, config)`` builds each adapted layer (ablations pass their own);
    ``on_task_end(t, encoder)``, when given, is called after domain ``t`` is frozen and evaluated (probes).
    """
    rng = np.random.default_rng(seed)
    enc = AdaptedEncoder(method, stream["base"], config, layer_factory)
    doms = stream["domains"]
    n = len(doms)
    acc = np.zeros((n, n))
    trainable, norms = [], []
    for t, dom in enumerate(doms):
        if method != "frozen":
            for layer in enc.layers:
                layer.begin_task(rng)
            trainable.append(count_trainable(enc.layers))
            opt = [Adam(lr=settings.lr) for _ in enc.layers]
            n_seen = 10 * (t + 1)
            for _ in range(settings.steps):
                idx = rng.choice(len(dom["y_train"]), size=settings.batch, replace=False)
                e, cache = enc.forward(dom["x_train"][idx], training=True, rng=rng)
                _, grads = two_term_loss(e, stream["class_emb"][:n_seen], dom["y_train"][idx],
                                          n_masked=10 * t, logit_scale=settings.logit_scale)
                for layer, g, o in zip(enc.layers, enc.backward(grads["image"], cache), opt):
                    o.step(layer.current_parameters(), {k: v for k, v in g.items() if k != "x"})
            for layer in enc.layers:
                layer.end_task()
            if method in ("moram", "dense_moram"):
                norms.append([key_norms(layer) for layer in enc.layers])  # (layers, tasks so far)
        acc[t] = evaluate(enc, stream, seen=t + 1)
        if on_task_end is not None:
            on_task_end(t, enc)
    out = {"accuracy": acc, "trainable_per_task": trainable}
    if method in ("moram", "dense_moram"):
        out["key_norms"] = norms
        x = np.concatenate([d["x_test"] for d in doms])
        groups = np.concatenate([np.full(len(d["x_test"]), i) for i, d in enumerate(doms)])
        layer = enc.layers[0]
        out["activation_mass"] = activation_mass(layer, x, groups, n)
        out["silent_fraction"] = silent_fraction(layer, x)
        out["weights"] = layer.forward(x, training=False)[1]["w"]
        out["groups"] = groups
    return out
