"""One place per method: the hyperparameter tables, the phases, the registry, the shared pieces.

The tables give the constructor, validation, docstring and command-line flags
(nbclust.methods.params); phases are objects (nbclust.methods.phases); the registry
(nbclust.methods.METHODS) is what the package, the CLI and the experiments runner read;
soft assignments, targets, k-means and the codes' optimiser live once.
"""

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest

import nbclust
from nbclust import methods
from nbclust.cli import experiments, fit
from nbclust.methods import clustering
from nbclust.methods.params import ANY, COMMON_PARAMS, Param, Params, read_hyperparameters
from nbclust.methods.phases import Phase, Step

METHOD_DIR = Path(methods.__file__).parent
TABLED = list(methods.METHODS)  # every registered method declares a table


# ------------------------------------------------------------------ the registry
def test_one_registry_read_by_package_cli_and_runner():
    assert fit.METHODS is methods.METHODS
    assert set(methods.ESTIMATORS) <= set(nbclust.__all__)
    for method, (module, name) in methods.METHODS.items():
        assert experiments._estimator_class(method) is methods.estimator_class(method)
        assert methods.estimator_class(method).__name__ == name and module.startswith("nbclust.")
    assert {n: getattr(nbclust, n) for n in methods.ESTIMATORS} == methods.available()


def test_load_finds_a_class_whose_module_is_not_imported_yet(tmp_path):
    import subprocess
    import sys

    from nbclust.methods.dcae import DCAE

    x = np.random.default_rng(0).random((20, 8, 8))
    DCAE(2, random_state=0, epochs=1).fit(x).save(tmp_path / "m.npz")
    code = ("import sys, numpy as np; from nbclust.methods.base import DeepClusterer; "
            f"e = DeepClusterer.load({str(tmp_path / 'm.npz')!r}); print(type(e).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "DCAE"


# ------------------------------------------------------------------ the tables
@pytest.mark.parametrize("method", TABLED)
def test_table_read_without_import_equals_the_class_table(method):
    """The CLI reads the tables from the source (no numpy); they are the classes' own."""
    module, name = methods.METHODS[method]
    cls = methods.estimator_class(method)
    assert read_hyperparameters(module, name) == cls.hyperparameters


@pytest.mark.parametrize("method", TABLED)
def test_constructor_and_docstring_come_from_the_table(method):
    cls = methods.estimator_class(method)
    table = cls.hyperparameters
    sig = inspect.signature(cls)
    assert list(sig.parameters) == list(table.names)
    assert sig.parameters["n_clusters"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(sig.parameters.values())[1:])
    assert cls().get_params() == {p.name: p.default for p in table}
    doc = cls.__doc__
    assert "\nParameters\n----------\n" in doc
    documented = dict(re.findall(r"^(\w+) : .*, default=(.*)$", doc.split("Parameters\n----------\n")[1], re.M))
    for name, p in sig.parameters.items():  # numpydoc: every constructor argument with its default
        assert documented.get(name) == Param.value_text(p.default), (method, name)


@pytest.mark.parametrize("method", TABLED)
def test_every_estimator_documents_its_fitted_attributes(method):
    cls = methods.estimator_class(method)
    if issubclass(cls, methods.base.DeepClusterer):
        attrs = cls.__doc__.split("Attributes\n----------\n")[1]
        for name in ("labels_", "cluster_centers_", "history_", *cls._state_attrs, *cls._state_meta):
            assert re.search(rf"^{name} : ", attrs, re.M), (method, name)


def test_params_validation_messages():
    table = Params(
        Param("k", int, 2, "count", ge=2),
        Param("rate", float, 0.1, "rate", gt=0, lt=1),
        Param("mode", str, "a", "mode", choices=("a", "b")),
        Param("flag", bool, True, "flag"),
        Param("step", float, 0.1, "step", gt=0, none=True),
        Param("free", ANY, None, "anything"),
    )

    class Est:
        def __init__(self, **kw):
            self.__dict__.update({p.name: p.default for p in table}, **kw)

    table.validate(Est())
    table.validate(Est(k=np.int64(3), rate=np.float32(0.5), flag=np.bool_(False), step=None, free=object()))
    for bad, message in [({"k": 1}, "k must be an integer >= 2, got 1"), ({"k": 2.0}, "k must be an integer"),
                         ({"k": True}, "k must be an integer"),
                         ({"rate": 1.0}, r"rate must be a finite number in \(0, 1\)"),
                         ({"rate": float("nan")}, "rate must be"), ({"mode": "c"}, "mode must be one of 'a', 'b'"),
                         ({"flag": "yes"}, "flag must be True or False"), ({"step": 0.0}, "step must be None or a")]:
        with pytest.raises(ValueError, match=message):
            table.validate(Est(**bad))


def test_paper_readings_are_collected():
    from nbclust import DCAE, DCTL, DEPICT

    assert DCAE.PAPER == {"epochs": 500, "activation": "sigmoid", "lr_pixels": None}
    assert DEPICT.PAPER == {"target": "paper"}
    assert set(DCTL.PAPER) == {"pool", "loss_scale", "assign"}
    assert "The paper's value: \"sigmoid\"" in DCAE.__doc__


def test_subclass_table_extends_the_parent():
    from nbclust import DBC, FCAEKMeans

    assert DBC.hyperparameters[: len(FCAEKMeans.hyperparameters)] == FCAEKMeans.hyperparameters
    assert DBC.hyperparameters.names[:4] == COMMON_PARAMS.names


# ------------------------------------------------------------------ the command line
def test_cli_flags_come_from_the_tables():
    flags = fit.method_flags()
    help_text = fit.build_parser().format_help()
    fixed = set(fit.DEFAULTS) | {"method", "resume", "config", "seed"}
    for name, (flag, by_method) in flags.items():
        assert name not in fixed and flag in help_text
        for method, p in by_method.items():
            assert p is methods.estimator_class(method).hyperparameters[name] or \
                p == methods.estimator_class(method).hyperparameters[name]
    assert {"n_clusters", "backend", "random_state", "verbose"}.isdisjoint(flags)  # --n-clusters, --backend, --seed
    for old in ("--epochs", "--pretrain-epochs", "--batch-size", "--lr", "--tol", "--alpha", "--lam", "--mu",
                "--gamma", "--target", "--normalization", "--n-layers", "--pool", "--z-lr", "--reading",
                "--loss-scale", "--assign", "--final", "--activation", "--momentum", "--weight-decay",
                "--cluster-lr", "--update-interval", "--embedding-dim", "--dropout", "--n-init", "--joint",
                "--standardize"):
        assert old in help_text, old
    assert "(default: relu; paper: sigmoid)" in " ".join(help_text.split())


def test_adding_a_method_is_a_module_and_a_registry_line(tmp_path, monkeypatch, capsys):
    """A new method: its own module (table, phase, estimator) plus one line in METHODS; the CLI
    then has its flag, help and validation, and runs it."""
    (tmp_path / "toy_method.py").write_text('''
import numpy as np
from nbclust.engine import nn, optim
from nbclust.engine.optable import OPS
from nbclust.methods.base import DeepClusterer
from nbclust.methods.params import COMMON_PARAMS, Param, Params
from nbclust.methods.phases import KMeansInit, Phase

TOY_PARAMS = COMMON_PARAMS + Params(
    Param("epochs", int, 1, "epochs", ge=0),
    Param("batch_size", int, 16, "mini-batch size", ge=1),
    Param("toy_weight", float, 0.5, "weight of the toy shrinkage", ge=0),
    Param("n_init", int, 2, "k-means restarts", ge=1),
)


class Shrink(Phase):
    name = "cluster"

    def optimizers(self, est):
        return {"sgd": optim.SGD(est.modules_["encoder"].parameters(), 0.01)}

    def step(self, est, X, idx):
        z = est.modules_["encoder"](X[idx])
        value, ctx = OPS.frobenius(est._backend, z)
        est.modules_["encoder"].backward(est.toy_weight * ctx.backward()[0] / len(idx), input_grad=False)
        return {"loss": est.toy_weight * float(value) / len(idx)}


class Toy(DeepClusterer):
    """A toy method."""

    hyperparameters = TOY_PARAMS
    phases = (Shrink(), KMeansInit())

    def _build(self, image_shape):
        kw = dict(backend=self.backend, dtype=self._dtype, rng=self._seed())
        return {"encoder": nn.Sequential(nn.Flatten(**kw), nn.Linear(int(np.prod(image_shape)), 3, **kw))}

    def _embed(self, xb):
        return self.modules_["encoder"](xb)
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(methods.METHODS, "toy", ("toy_method", "Toy"))  # the one registry line
    help_text = " ".join(fit.build_parser().format_help().split())
    assert "--toy-weight X toy: weight of the toy shrinkage (default: 0.5)" in help_text
    x = np.random.default_rng(0).random((40, 8, 8))
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 3)
    argv = ["--method", "toy", "--data", tmp_path / "d.npz", "--toy-weight", "0.2", "--quiet", "--out", tmp_path / "o"]
    assert fit.main([str(a) for a in argv]) == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["params"]["toy_weight"] == 0.2 and m["epochs"] == 1
    with pytest.raises(SystemExit):
        fit.main([str(a) for a in argv[:-2]] + ["--toy-weight", "-1", "--out", str(tmp_path / "p")])
    assert "toy_weight must be a finite number >= 0, got -1.0" in capsys.readouterr().err


# ------------------------------------------------------------------ the phases
@pytest.mark.parametrize("method", [m for m, (_, cls) in methods.METHODS.items() if cls in methods.ESTIMATORS])
def test_phases_are_objects_in_order(method):
    cls = methods.estimator_class(method)
    names = [s.name for s in cls.phases]
    assert len(set(names)) == len(names) and all(isinstance(s, (Phase, Step)) for s in cls.phases)
    assert any(isinstance(s, Phase) for s in cls.phases)


def test_no_method_module_branches_on_a_phase_name():
    for path in METHOD_DIR.glob("*.py"):
        if path.name == "base.py":  # the loop itself tracks the current phase
            continue
        text = path.read_text()
        assert not re.search(r"phase_?\s*[!=]=", text), path.name


def test_phase_lists_follow_the_algorithms():
    from nbclust import DBC, DCAE, DCEC, DCTL, DEPICT, FCAEKMeans

    assert [s.name for s in DBC.phases] == ["pretrain", "kmeans-init", "cluster"]
    assert [s.name for s in FCAEKMeans.phases] == ["pretrain", "kmeans-init"]
    assert [s.name for s in DCEC.phases] == ["pretrain", "kmeans-init", "cluster"]
    assert [s.name for s in DCAE.phases] == ["init", "cluster"]
    assert [s.name for s in DEPICT.phases] == ["pretrain", "init", "warmup", "cluster"]
    assert [s.name for s in DCTL.phases] == ["codes", "pretrain", "cluster", "final"]
    piecemeal = DCTL(joint=False, pretrain_epochs=2, epochs=3)
    assert [s.name for s in piecemeal._stages()] == ["codes", "pretrain", "final"] and piecemeal.epoch_budget() == 5
    assert DEPICT(weights="w.npz", warmup_epochs=2, epochs=3).epoch_budget() == 5


# ------------------------------------------------------------------ shared pieces
def test_soft_assign_is_students_t():
    rng = np.random.default_rng(0)
    Z, C = rng.normal(size=(7, 3)), rng.normal(size=(4, 3))
    d2 = ((Z[:, None] - C[None]) ** 2).sum(-1)
    for v in (1.0, 2.0):
        q = (1 + d2 / v) ** (-(v + 1) / 2)
        np.testing.assert_allclose(clustering.soft_assign(Z, C, v), q / q.sum(1, keepdims=True), rtol=1e-12)
    from nbclust.engine.backend import get_backend
    from nbclust.engine.optable import OPS

    s, _ = OPS.student_t(get_backend("reference"), Z, C, v=1.0)  # the op of the training step
    np.testing.assert_allclose(clustering.soft_assign(Z, C), s, rtol=1e-12)


def test_targets_of_dec_dbc_and_depict():
    S = np.random.default_rng(1).dirichlet(np.ones(4), size=9)
    f = S.sum(0)
    norm = lambda R: R / R.sum(1, keepdims=True)  # noqa: E731
    np.testing.assert_array_equal(clustering.dec_target(S), norm(S**2 / f))
    np.testing.assert_allclose(clustering.target(S, 3.0, "boosted"), norm(S**3 / (S**3).sum(0)))
    np.testing.assert_allclose(clustering.target(S, 3.0, "none"), norm(S**3))
    np.testing.assert_array_equal(clustering.depict_target(S, "code"), clustering.dec_target(S))
    np.testing.assert_allclose(clustering.depict_target(S, "paper"), norm(S / np.sqrt(f)))
    with pytest.raises(ValueError, match="normalization"):
        clustering.target(S, 2.0, "median")


def test_kmeans_helpers():
    rng = np.random.default_rng(0)
    a = np.repeat(np.array([[0.0, 0.0], [10.0, 0.0]]), 20, 0) + rng.normal(size=(40, 2))
    km = clustering.kmeans(a, 2, seed=3, n_init=2)
    np.testing.assert_array_equal(clustering.nearest(a, km.cluster_centers_), km.labels_)
    again = clustering.kmeans(a, 2, seed=3, n_init=1, init=km.cluster_centers_)
    np.testing.assert_allclose(again.cluster_centers_, km.cluster_centers_)


def test_row_adam_updates_only_its_rows_with_per_row_steps():
    from nbclust.engine.optim import RowAdam

    rng = np.random.default_rng(0)
    data = rng.normal(size=(5, 3))
    start = data.copy()
    opt = RowAdam(data, lr=0.1, low=0.0)
    steps = [(np.array([0, 2]), rng.normal(size=(2, 3))), (np.array([2, 4]), rng.normal(size=(2, 3)))]
    m, v, t, want = np.zeros_like(data), np.zeros_like(data), np.zeros(5), start.copy()
    for idx, g in steps:
        opt.zero_grad()
        opt.rows(idx, g)
        opt.step()
        t[idx] += 1
        m[idx] = 0.9 * m[idx] + 0.1 * g
        v[idx] = 0.999 * v[idx] + 0.001 * g * g
        mh, vh = m[idx] / (1 - 0.9 ** t[idx, None]), v[idx] / (1 - 0.999 ** t[idx, None])
        want[idx] = np.maximum(want[idx] - 0.1 * mh / (np.sqrt(vh) + 1e-8), 0)
    np.testing.assert_allclose(data, want, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(data[[1, 3]], start[[1, 3]])
    np.testing.assert_array_equal(opt.row_steps, [1, 0, 2, 0, 1])
    other = RowAdam(np.zeros_like(data), lr=1.0)
    other.load_state_dict(opt.state_dict())
    np.testing.assert_array_equal(other.exp_avg, opt.exp_avg)
    assert other.lr == 0.1 and list(other.row_steps) == [1, 0, 2, 0, 1]
    opt.step()  # no rows given: nothing moves
    np.testing.assert_allclose(data, want, rtol=1e-6, atol=1e-12)


def test_losses_through_the_op_table():
    """DCTL's objective calls the op table like every method (no private copy)."""
    import nbclust.methods.dctl as dctl

    assert "def _op" not in Path(dctl.__file__).read_text()
    from nbclust.engine.backend import get_backend
    from nbclust.engine.optable import OPS

    value, ctx = OPS.frobenius(get_backend("reference"), np.array([[1.0, 2.0]]))
    assert value == 5.0 and np.array_equal(ctx.backward()[0], [[2.0, 4.0]])


def test_cpu_compiles_every_op_but_reshape():
    from nbclust.engine.backend import get_backend
    from nbclust.engine.optable import OPS

    assert "balance_kl" not in OPS  # no method used it
    assert get_backend("cpu").fallbacks == {"reshape"}


def test_readme_method_table_names_real_flags():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("### Methods\n")[1].strip().split("\n\n")[0]
    flags = fit.method_flags()
    rows = [line for line in table.splitlines() if line.startswith("| `") and "--method" not in line]
    assert {re.match(r"\| `([\w-]+)`", r).group(1) for r in rows} == set(methods.METHODS)
    for row in rows:
        method = re.match(r"\| `([\w-]+)`", row).group(1)
        for flag in re.findall(r"`(--[\w-]+)", row.split("|")[3]):
            if flag == "--param":
                continue
            name = flag[2:].replace("-", "_")
            assert name in flags and method in flags[name][1], (method, flag)
