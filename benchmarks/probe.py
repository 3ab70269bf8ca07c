"""Cost of the linear probes: features against one forward pass, and the solves against scikit-learn.

Targets (issue 23):

- probing conv1-conv5, fc6 and fc7 of the quickstart network (quarter-width ZFNet at 64 px) on
  5,000 images costs at most 1.5x one forward pass over those images, plus the solves;
- the solves are faster than scikit-learn's on the same features, side by side.

Timings are the best of ``--repeats`` runs, interleaved, in one process, on images rendered
before the clock starts (a TensorDataset), with ``--threads`` threads for torch and for
scikit-learn's BLAS alike:

- ``forward``: the whole network over the images, one pass per batch;
- ``probe features``: :func:`zflight.analysis.probe.probe_features` of the seven layers (one
  pass per batch that stops after fc7, each layer pooled in its hook);
- per layer, on the features of the first ``--solve_images`` images (standardized), at one C:
  zflight's solver (SVM and softmax, default tolerance) against ``LinearSVC`` and
  ``LogisticRegression(lbfgs)``, with each one's test accuracy on the remaining images and its
  distance from the exact optimum, ``||W - W*|| / ||W*||``, where ``W*`` is zflight's solve at
  a gradient of 1e-10. scikit-learn is timed twice: at its defaults (tolerance 1e-4, and
  ``LogisticRegression`` stops after 100 iterations), which leave its coefficients further from
  the optimum than zflight's, and *matched*: at the first tolerance of 1e-4, 1e-5, ..., 1e-10
  (no iteration cap) whose answer is as close to the optimum as zflight's, so both sides give
  the same answer.

Run:
    python benchmarks/probe.py --ckpt_path quickstart.ckpt
    python benchmarks/probe.py --num_images 1000 --repeats 2    # quicker
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

# conv1-conv5, fc6, fc7 as the issue names them, read after their ReLUs (what a probe should see:
# a conv's pooled output is linear in the pixels); the forward stops after relu7 either way.
LAYERS = ["relu1", "relu2", "relu3", "relu4", "relu5", "relu6", "relu7"]


def _model(ckpt_path: str | None) -> torch.nn.Module:
    import zflight

    if ckpt_path:
        from zflight.checkpoint import load_classifier

        return load_classifier(ckpt_path).model.eval()
    torch.manual_seed(0)
    return zflight.zfnet(num_classes=10, width=0.25, image_size=64, init="kaiming").eval()


def _forward(model: torch.nn.Module, data: TensorDataset, batch_size: int) -> None:
    device = next(model.parameters()).device
    with torch.no_grad():
        for x, _ in DataLoader(data, batch_size=batch_size):
            model(x.to(device))
    _sync(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # the clock must see the GPU's work, not its queueing
        torch.cuda.synchronize(device)


def _best(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _matched(loss: str, C: float, x: torch.Tensor, y: torch.Tensor, exact: torch.Tensor,
             target: float) -> tuple[float, Any, float]:
    """scikit-learn at the first tolerance whose coefficients are within ``target`` of ``exact``.

    Returns ``(tol, the unfitted estimator, its distance)``; the tolerances are tried untimed.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    def make(tol: float) -> Any:
        if loss == "svm":
            return LinearSVC(C=C, tol=tol, max_iter=1_000_000)
        return LogisticRegression(C=C, tol=tol, max_iter=1_000_000)

    xn, yn = x.numpy(), y.numpy()
    for tol in (1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10):
        err = float((torch.as_tensor(make(tol).fit(xn, yn).coef_, dtype=torch.float64) - exact).norm() / exact.norm())
        if err <= target:
            break
    return tol, make(tol), err


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", default=None)
    parser.add_argument("--num_images", type=int, default=5000)
    parser.add_argument("--solve_images", type=int, default=1000)
    parser.add_argument("--C", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cpu",
                        help="where the network and zflight's solves run (scikit-learn stays on the CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # scikit-learn's BLAS (numpy's OpenBLAS) gets the same number of threads as torch.
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)

    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    from zflight.analysis._linear import fit_linear_classifier, standardize
    from zflight.analysis.probe import probe_features
    from zflight.data.transfer import TransferShapesDataset

    device = torch.device(args.device)
    model = _model(args.ckpt_path).to(device)
    ds = TransferShapesDataset(args.num_images).render_all(progress=False)
    items = [ds[i] for i in range(len(ds))]
    data = TensorDataset(torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]))

    times = {"forward": float("inf"), "probe features": float("inf")}
    feats: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):  # interleaved: a slow minute hits both alike
        times["forward"] = min(times["forward"], _best(lambda: _forward(model, data, args.batch_size), 1))
        t = time.perf_counter()
        feats, labels = probe_features(model, data, LAYERS, batch_size=args.batch_size, progress=False)
        _sync(device)
        times["probe features"] = min(times["probe features"], time.perf_counter() - t)
    ratio = times["probe features"] / times["forward"]
    print(f"{args.num_images} images: forward {times['forward']:.2f} s, probe features {times['probe features']:.2f} s "
          f"= {ratio:.2f}x", flush=True)

    n = args.solve_images
    solves: dict[str, Any] = {}
    for layer in LAYERS:
        # zflight solves where the features are (--device); scikit-learn gets CPU copies.
        x_tr, x_te = standardize(feats[layer][:n], feats[layer][n:])
        y_tr, y_te = labels[:n], labels[n:]
        x_cpu, y_cpu = x_tr.cpu(), y_tr.cpu()
        row: dict[str, Any] = {"dims": int(x_tr.shape[1])}
        for loss, ref in (("svm", LinearSVC(C=args.C)), ("logistic", LogisticRegression(C=args.C))):
            exact = fit_linear_classifier(x_tr, y_tr, loss=loss, C=args.C, num_classes=10, tol=1e-10,
                                          max_iter=20_000).weight
            clf = fit_linear_classifier(x_tr, y_tr, loss=loss, C=args.C, num_classes=10)
            ours_err = float((clf.weight - exact).norm() / exact.norm())  # on the device
            exact = exact.cpu()
            matched_tol, matched, matched_err = _matched(loss, args.C, x_cpu, y_cpu, exact, ours_err)
            ours_t, theirs_t, matched_t = float("inf"), float("inf"), float("inf")
            for _ in range(args.repeats):  # the three interleaved: a slow moment hits them alike
                t = time.perf_counter()
                clf = fit_linear_classifier(x_tr, y_tr, loss=loss, C=args.C, num_classes=10)
                _sync(device)
                ours_t = min(ours_t, time.perf_counter() - t)
                with warnings.catch_warnings():  # LogisticRegression's iteration cap, reported below
                    warnings.simplefilter("ignore")
                    t = time.perf_counter()
                    ref.fit(x_cpu.numpy(), y_cpu.numpy())
                    theirs_t = min(theirs_t, time.perf_counter() - t)
                t = time.perf_counter()
                matched.fit(x_cpu.numpy(), y_cpu.numpy())
                matched_t = min(matched_t, time.perf_counter() - t)
            theirs_w = torch.as_tensor(ref.coef_, dtype=torch.float64)
            row[loss] = {
                "zflight_s": ours_t,
                "sklearn_s": theirs_t,
                "zflight_acc": float((clf.predict(x_te) == y_te).double().mean()),
                "sklearn_acc": float(ref.score(x_te.cpu().numpy(), y_te.cpu().numpy())),
                "zflight_err": ours_err,
                "sklearn_err": float((theirs_w - exact).norm() / exact.norm()),
                "sklearn_matched_tol": matched_tol,
                "sklearn_matched_s": matched_t,
                "sklearn_matched_err": matched_err,
                "zflight_iter": clf.iterations,
                "sklearn_iter": int(max(torch.as_tensor(ref.n_iter_).flatten().tolist())),
            }
        solves[layer] = row
        print(f"{layer:6s} {row['dims']:5d} dims", flush=True)
        for loss, name in (("svm", "LinearSVC"), ("logistic", "LogisticRegression")):
            r = row[loss]
            print(f"  {loss:8s} zflight {r['zflight_s']:.3f} s (err {r['zflight_err']:.0e}, acc {r['zflight_acc']:.3f}) | "
                  f"{name} defaults {r['sklearn_s']:.3f} s = {r['sklearn_s'] / r['zflight_s']:.1f}x (err "
                  f"{r['sklearn_err']:.0e}, acc {r['sklearn_acc']:.3f}, {r['sklearn_iter']} it) | matched tol "
                  f"{r['sklearn_matched_tol']:.0e} {r['sklearn_matched_s']:.3f} s = "
                  f"{r['sklearn_matched_s'] / r['zflight_s']:.1f}x (err {r['sklearn_matched_err']:.0e})", flush=True)
    result = {"machine": platform.processor() or platform.machine(), "device": str(device), "threads": args.threads,
              "num_images": args.num_images, "solve_images": n, "C": args.C, "times": times,
              "features_over_forward": ratio, "solves": solves}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
