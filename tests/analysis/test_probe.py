import pytest
import torch
from torch import nn

from zflight.analysis._linear import cross_validate, fit_linear_classifier, standardize
from zflight.analysis.probe import linear_probe, probe_features

pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegression  # noqa: E402 (after the skip)
from sklearn.svm import LinearSVC  # noqa: E402


def _blobs(n=150, d=12, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, d, generator=g)
    x[:, :k] += 1.2 * torch.nn.functional.one_hot(y, k)
    return x, y


class _Images(torch.utils.data.Dataset):
    """Tiny labelled images: class c brightens channel c in its own quadrant, plus noise."""

    def __init__(self, per_class=12, classes=("a", "b", "c"), seed=0, size=16):
        g = torch.Generator().manual_seed(seed)
        self.classes = list(classes)
        self.targets = [c for _ in range(per_class) for c in range(len(classes))]
        self.x = torch.randn(len(self.targets), 3, size, size, generator=g) * 0.5
        for i, c in enumerate(self.targets):
            h = size // 2
            self.x[i, c % 3, (c // 2) * h:(c // 2 + 1) * h, (c % 2) * h:(c % 2 + 1) * h] += 2.0

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 16), nn.ReLU(), nn.Linear(16, 3),
    )


def _relative(ours, theirs):
    theirs = torch.as_tensor(theirs, dtype=torch.float64)
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_softmax_probe_agrees_with_sklearn_logistic_regression(C):
    x, y = _blobs()
    (xs,) = standardize(x)
    ours = fit_linear_classifier(xs, y, loss="logistic", C=C)
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(xs.numpy(), y.numpy())
    assert _relative(ours.weight, ref.coef_) < 1e-3
    assert _relative(ours.bias, ref.intercept_) < 1e-3
    assert torch.equal(ours.predict(xs), torch.as_tensor(ref.predict(xs.numpy())))


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_svm_probe_agrees_with_sklearn_linear_svc(C):
    x, y = _blobs(seed=1)
    xs, xt = standardize(x[:100], x[100:])
    ours = fit_linear_classifier(xs, y[:100], loss="svm", C=C)
    ref = LinearSVC(C=C, tol=1e-10, max_iter=100_000).fit(xs.numpy(), y[:100].numpy())
    assert _relative(ours.weight, ref.coef_) < 1e-3
    assert _relative(ours.bias, ref.intercept_) < 1e-3  # the intercept is penalized, as LinearSVC's
    assert float((ours.predict(xt) == y[100:]).double().mean()) == ref.score(xt.numpy(), y[100:].numpy())


@pytest.mark.parametrize("loss", ["svm", "logistic"])
def test_fewer_images_than_features_still_agree_with_sklearn(loss):
    # The solver works in the span of the rows when N < D (here with a repeated row, so that
    # span has a zero direction); the answer must not change.
    x, y = _blobs(n=45, d=120, seed=2)
    x[44] = x[41]
    (xs,) = standardize(x)
    ours = fit_linear_classifier(xs, y, loss=loss, C=0.1)
    if loss == "svm":
        ref = LinearSVC(C=0.1, tol=1e-10, max_iter=100_000).fit(xs.numpy(), y.numpy())
    else:
        ref = LogisticRegression(C=0.1, tol=1e-10, max_iter=10_000).fit(xs.numpy(), y.numpy())
    assert ours.converged
    assert _relative(ours.weight, ref.coef_) < 1e-3
    assert _relative(ours.bias, ref.intercept_) < 1e-3


def test_features_without_any_variance_fit_only_the_intercept_as_sklearn():
    # A dead layer (all ReLUs off, as in some random networks) gives all-zero features.
    x, y = torch.zeros(40, 60), torch.arange(40) % 4
    ours = fit_linear_classifier(x, y, loss="svm", C=1.0)
    ref = LinearSVC(C=1.0, tol=1e-10, max_iter=100_000).fit(x.numpy(), y.numpy())
    assert ours.converged and not ours.weight.any()
    assert _relative(ours.bias, ref.intercept_) < 1e-3


def test_two_classes_fit_one_weight_vector_as_sklearn():
    x, y = _blobs(k=2)
    (xs,) = standardize(x)
    ours = fit_linear_classifier(xs, y, loss="logistic", C=0.1)
    ref = LogisticRegression(C=0.1, tol=1e-10, max_iter=10_000).fit(xs.numpy(), y.numpy())
    assert ours.weight.shape == (1, 12)
    assert _relative(ours.weight, ref.coef_) < 1e-3


def test_standardize_uses_the_training_rows_statistics():
    train, test = standardize(torch.tensor([[1.0, 5.0], [3.0, 5.0]]), torch.tensor([[5.0, 6.0]]))
    assert train.tolist() == [[-1.0, 0.0], [1.0, 0.0]]  # a constant feature is centred, not scaled
    assert test.tolist() == [[3.0, 1.0]]


def test_cross_validation_picks_the_c_of_best_held_out_accuracy():
    x, y = _blobs(n=90)
    C, scores = cross_validate(x, y, loss="svm", num_classes=3, Cs=[1e-4, 1e-2, 1.0])
    assert set(scores) == {1e-4, 1e-2, 1.0}
    assert scores[C] == max(scores.values())


def test_features_of_all_layers_come_from_one_forward_pass_per_batch():
    net, ds = _net(), _Images(per_class=5)
    calls = {"first": 0, "head": 0}
    net[0].register_forward_hook(lambda *a: calls.__setitem__("first", calls["first"] + 1))
    net[8].register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    feats, labels = probe_features(net, ds, ["0", "3", "6"], batch_size=4, progress=False)
    assert calls == {"first": 4, "head": 0}  # 15 images in 4 batches; stops after the deepest layer
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"0": (15, 32), "3": (15, 32), "6": (15, 16)}
    assert labels.tolist() == ds.targets


def test_poolings_give_documented_sizes_and_see_conv_output_before_an_inplace_relu():
    net, ds = _net(), _Images(per_class=2)
    sizes = {}
    for pooling in ("grid", "avg", "max", "flatten"):
        feats, _ = probe_features(net, ds, ["0"], pooling=pooling, progress=False)
        sizes[pooling] = feats["0"].shape[1]
        if pooling == "avg":
            assert float(feats["0"].min()) < 0  # conv output, not the in-place ReLU's
    assert sizes == {"grid": 8 * 4, "avg": 8, "max": 8, "flatten": 8 * 16 * 16}


def test_model_is_left_as_found():
    net, ds = _net().train(), _Images(per_class=4)
    linear_probe(net, ds, ["3"], train_per_class=2, C=1.0, progress=False)
    assert all(m.training for m in net.modules())
    assert all(not m._forward_hooks for m in net.modules())


def test_separable_classes_are_learned_and_reported_per_split():
    result = linear_probe(_net(), _Images(per_class=12), ["0", "6"], train_per_class=4, splits=3,
                          classifier="logistic", progress=False)
    conv = result.layers["0"]
    assert result.num_train == [12, 12, 12] and result.num_test == [24, 24, 24]
    assert len(conv.test_accuracy) == 3 and int(conv.confusion.sum()) == 72
    mean, std = conv.mean_std("mean_class_accuracy")
    assert mean > 0.9 and std >= 0.0
    assert set(result.to_dict()["layers"]["6"]) >= {"train_accuracy", "test_accuracy", "mean_class_accuracy", "C"}


def test_a_separate_test_set_and_its_cap():
    result = linear_probe(_net(), _Images(per_class=6), ["0"], test=_Images(per_class=9, seed=1),
                          test_per_class=5, C=0.1, progress=False)
    assert result.num_train == [18] and result.num_test == [15]


def test_drop_class_leaves_a_class_out():
    result = linear_probe(_net(), _Images(per_class=6), ["0"], train_per_class=3, drop_class=["b"], C=0.1,
                          progress=False)
    assert result.classes == ["a", "c"] and result.layers["0"].confusion.shape == (2, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layers=["conv9"]), "layer='conv9' is not a module"),
        (dict(train_per_class=12), "train_per_class=12 is more than class 'a' can give: it holds 6 images"),
        (dict(test=_Images(per_class=2, classes=("a", "b", "z"))), "test: its classes differ from train's (only in train: c; only in test: z)"),
        (dict(drop_class=["b", "c"]), "a probe needs at least two classes"),
        (dict(drop_class=["bb"]), "drop_class: 'bb' is not a class of the data set; did you mean 'b'?"),
        (dict(splits=2, train_per_class=None, test=_Images(per_class=2)), "splits=2 needs train_per_class"),
    ],
)
def test_bad_input_is_one_clear_error(kwargs, message):
    args = dict(layers=["0"], train_per_class=2, C=0.1, progress=False)
    args.update(kwargs)
    layers = args.pop("layers")
    with pytest.raises(ValueError) as err:
        linear_probe(_net(), _Images(per_class=6), layers, **args)
    assert message in str(err.value)
