"""Why the lidc model hedges where all four radiologists drew the nodule (issue #28).

Three measurements on one split of the LIDC-IDRI slices (the validation patients by default),
as reported in docs/model-card-lidc.md ("Toward the clear nodule"):

- ``components``: per component of the mixture prior, its mean weight and how often 32 of its
  draws decode to an empty mask, by how many radiologists marked the slice;
- ``temperature T,s ...``: GED(16), HM-IoU(16) and the empty share per row with the weights
  raised to 1/T (renormalised) and the components' sigmas scaled by s;
- ``probe``: how well the slice predicts the radiologists' share of empty masks: a logistic
  regression (soft targets) on the U-Net's pooled features of training slices, scored by binary
  cross-entropy on the chosen split, beside a constant (the training mean).

    python benchmarks/lidc_empty_probe.py components
    python benchmarks/lidc_empty_probe.py temperature 1,1 0.6,1 1.5,1
    python benchmarks/lidc_empty_probe.py probe --train-slices 3000
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from napari_probunet.model.images import as_model_image
from napari_probunet.model.modelfile import load_model
from napari_probunet.session import Session
from napari_probunet.training.evaluate import evaluate_model, open_data

SPEC = "../shared/data/lidc-idri-slices#part={}&fractions=0.75,0.05,0.2&seed=0&by=patient"


def _marked(case) -> int:
    return int((case.masks.reshape(case.masks.shape[0], -1).max(1) > 0).sum())


def _rounded(values) -> list[float]:
    return [round(float(v), 2) for v in values]


def components(model, cases, n_slices: int) -> None:
    session = Session(model, device="cpu")
    rng = np.random.default_rng(0)
    rows: dict[int, list] = {}
    for i in rng.permutation(len(cases))[:n_slices]:
        case = cases[int(i)]
        session.set_image(case.image)
        w, mu, sigma = session.prior_components()
        empty = []
        for k in range(len(w)):
            z = mu[k] + sigma[k] * rng.standard_normal((32, mu.shape[1])).astype(np.float32)
            empty.append(float((session.decode(z).reshape(32, -1).max(1) == 0).mean()))
        rows.setdefault(_marked(case), []).append((w, np.array(empty)))
    for marked, got in sorted(rows.items()):
        weights = np.stack([w for w, _ in got])
        empty = np.stack([e for _, e in got])
        print(json.dumps({"marked": marked, "slices": len(got),
                          "weight": _rounded(weights.mean(0)),
                          "weight_sd": _rounded(weights.std(0)),
                          "empty_draws": _rounded(empty.mean(0))}))


class _Tempered(Session):
    """A session whose mixture weights are raised to 1/T and whose sigmas are scaled by s."""

    T, s = 1.0, 1.0

    def set_image(self, *args, **kwargs):
        out = super().set_image(*args, **kwargs)
        if self._mixture is not None:
            w, mu, sigma = self._mixture
            w = w.clamp_min(1e-12) ** (1.0 / self.T)
            self._mixture = (w / w.sum(), mu, sigma * self.s)
        return out


def temperature(model, cases, grid: list[str]) -> None:
    for item in grid:
        session = _Tempered(model, device="cpu")
        session.T, session.s = (float(v) for v in item.split(","))
        r = evaluate_model(session, cases, n_samples=[16], progress=False)
        rows = {k: [round(v["ged16"], 3), round(v["empty_samples"], 3)]
                for k, v in r["by_graders_marking"].items()}
        print(json.dumps({"T": session.T, "s": session.s, "ged16": round(r["ged16"], 4),
                          "hm_iou16": round(r["hm_iou16"], 4), "rows_ged_empty": rows}))


@torch.inference_mode()
def _pooled(model, cases, indices) -> tuple[np.ndarray, np.ndarray]:
    feats, shares = [], []
    cfg = model.config
    for start in range(0, len(indices), 64):
        batch = [cases[int(i)] for i in indices[start:start + 64]]
        x = torch.from_numpy(np.stack([
            cfg.preprocessing.apply(as_model_image(c.image, cfg.in_channels).astype(np.float32))
            .transpose(2, 0, 1) for c in batch]))
        _, skips = model.unet(x, with_skips=True)
        pooled = [s.mean(dim=(2, 3)) for s in skips] + [s.amax(dim=(2, 3)) for s in skips]
        feats.append(torch.cat(pooled, 1).float().numpy())
        shares += [1 - _marked(c) / c.masks.shape[0] for c in batch]
    return np.concatenate(feats), np.array(shares, np.float32)


def _bce(p, y) -> float:
    p = np.clip(p, 1e-5, 1 - 1e-5)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def probe(model, cases, train_slices: int, l2: float) -> None:
    train, _ = open_data(SPEC.format("train"))
    pick = np.random.default_rng(0).permutation(len(train))[:train_slices]
    x_tr, y_tr = _pooled(model, train, pick)
    x_ev, y_ev = _pooled(model, cases, np.arange(len(cases)))
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    a, b = (torch.tensor((x - mu) / sd) for x in (x_tr, x_ev))
    w = torch.zeros(a.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=500)
    target = torch.tensor(y_tr)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a @ w + bias, target)
        loss = loss + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    p = torch.sigmoid(b @ w + bias).detach().numpy()
    by_share = {f"{s:.2f}": round(float(p[np.isclose(y_ev, s)].mean()), 3)
                for s in np.unique(y_ev)}
    print(json.dumps({"bce_probe": round(_bce(p, y_ev), 4),
                      "bce_constant": round(_bce(np.full_like(y_ev, y_tr.mean()), y_ev), 4),
                      "mean_prediction_by_true_share": by_share}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["components", "temperature", "probe"])
    ap.add_argument("grid", nargs="*", default=["1,1"], help="T,s pairs (temperature)")
    ap.add_argument("--model", default="lidc")
    ap.add_argument("--part", default="val", help="the split to measure on (val; test counts "
                    "as a look at the test patients)")
    ap.add_argument("--slices", type=int, default=200, help="slices for components")
    ap.add_argument("--train-slices", type=int, default=3000)
    ap.add_argument("--l2", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    cases, _ = open_data(SPEC.format(args.part))
    if args.what == "components":
        components(model, cases, args.slices)
    elif args.what == "temperature":
        temperature(model, cases, args.grid)
    else:
        probe(model, cases, args.train_slices, args.l2)


if __name__ == "__main__":
    main()
