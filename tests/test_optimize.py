"""The optimization loop on the tiny scene: bounds, learning rates, view
subsets, callbacks, interruption, divergence, coarse-to-fine textures and
their regularizer, seeds, parameters changed in Python, and every image loss.

Renders are tiny (24x24, 4 spp, 1 spp for the final renders) and runs are a
few steps long, so the whole file takes well under a minute on two cores.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import invpbr
from invpbr.config import EstimateConfig
from invpbr.problem import load_problem

BASE = "ball.bsdf.base_color.value"
ROUGH = "ball.bsdf.roughness.value"
FLOOR = "floor.bsdf.reflectance.data"


def toml(estimates: str, *, spp: int = 4, **optimize) -> str:
    """An invpbr.toml with cheap renders, the given [[estimate]] tables and
    [optimize] settings."""
    opt = "\n".join(f"{k} = {json.dumps(v)}" for k, v in optimize.items())
    return (f"[render]\nspp = {spp}\nmax_depth = 3\nspp_final = 1\n\n{estimates}\n"
            f"[optimize]\n{opt}\n")


def base_color(bounds: str | None = "[0.0, 1.0]", lr: float | None = None) -> str:
    text = f'[[estimate]]\nkey = "{BASE}"\n'
    if bounds is not None:
        text += f"bounds = {bounds}\n"
    if lr is not None:
        text += f"lr = {lr}\n"
    return text + "\n"


def load(folder, text: str):
    """The tiny scene folder with ``text`` as its invpbr.toml, loaded."""
    (folder / "invpbr.toml").write_text(text)
    return load_problem(folder)


class Recorder:
    """A callback keeping every StepInfo (estimates copied)."""

    def __init__(self, stop_at: int | None = None, interrupt_at: int | None = None):
        self.steps: list[invpbr.StepInfo] = []
        self.stop_at = stop_at
        self.interrupt_at = interrupt_at

    def __call__(self, info: invpbr.StepInfo):
        info.estimates = {k: np.array(v, copy=True) for k, v in info.estimates.items()}
        self.steps.append(info)
        if info.iteration == self.interrupt_at:
            raise KeyboardInterrupt
        return info.iteration == self.stop_at

    def values(self, key: str) -> np.ndarray:
        """The recorded values of a colour or scalar, one row per step."""
        return np.stack([s.estimates[key].ravel() for s in self.steps])


def run(problem, **kwargs):
    return invpbr.optimize(problem, progress=False, **kwargs)


def texture_tv(texture: np.ndarray) -> float:
    t = np.asarray(texture, dtype=np.float64)
    return float(np.abs(np.diff(t, axis=0)).mean() + np.abs(np.diff(t, axis=1)).mean())


# --- bounds and learning rates ---------------------------------------------------------


def test_bounds_hold_after_every_step(tiny_scene):
    lo, hi = 0.45, 0.55
    # Unclipped, one Adam step of lr 0.3 takes the colour (0.5 at the start) far outside.
    free = Recorder()
    run(load(tiny_scene, toml(base_color(bounds=None), iterations=4, lr=0.3)), callback=free)
    assert np.any(free.values(BASE) < lo) and np.any(free.values(BASE) > hi)

    rec = Recorder()
    result = run(load(tiny_scene, toml(base_color(bounds=f"[{lo}, {hi}]"), iterations=8, lr=0.3)),
                 callback=rec)
    assert result.status == "completed" and len(rec.steps) == 8
    values = rec.values(BASE)
    assert values.shape == (8, 3)
    assert np.all(values >= lo) and np.all(values <= hi)
    # Clipping did something: the truth (0.8, 0.25, 0.1) lies outside, so it sits on the bounds.
    assert np.any(values == np.float32(hi)) and np.any(values == np.float32(lo))
    assert np.all(result.estimates[BASE] >= lo) and np.all(result.estimates[BASE] <= hi)


def test_parameter_with_lr_zero_never_moves(tiny_scene):
    estimates = base_color(lr=0.0) + f'[[estimate]]\nkey = "{ROUGH}"\nbounds = [0.05, 1.0]\n\n'
    problem = load(tiny_scene, toml(estimates, iterations=6, lr=0.05))
    initial = {p.key: p.initial.copy() for p in problem.parameters}
    rec = Recorder()
    result = run(problem, callback=rec)
    assert result.status == "completed"
    for step in rec.steps:
        np.testing.assert_array_equal(step.estimates[BASE], initial[BASE])
    np.testing.assert_array_equal(result.estimates[BASE], initial[BASE])
    moved = np.abs(rec.values(ROUGH)[:, 0] - initial[ROUGH][0])
    assert np.all(moved > 0) and moved[-1] > 0.1  # ~lr per step


# --- views, callbacks, interruption, divergence -------------------------------------------


def test_one_view_per_step(tiny_scene):
    rec = Recorder()
    problem = load(tiny_scene, toml(base_color(), iterations=10, lr=0.03, views_per_step=1))
    assert len(problem.views) == 2
    result = run(problem, callback=rec)
    assert result.status == "completed" and result.iterations == 10
    assert [len(s.views) for s in rec.steps] == [1] * 10
    assert {s.views[0] for s in rec.steps} == {"front", "side"}
    assert all(math.isfinite(x) for x in result.loss)
    assert result.errors[BASE] < result.initial_errors[BASE]


def test_callback_returning_true_stops(tiny_scene):
    rec = Recorder(stop_at=2)
    result = run(load(tiny_scene, toml(base_color(), iterations=20, lr=0.03)), callback=rec)
    assert result.status == "stopped"
    assert [s.iteration for s in rec.steps] == [0, 1, 2]
    assert result.iterations == 3 == len(result.loss)
    assert result.loss == [s.loss for s in rec.steps]
    np.testing.assert_array_equal(result.estimates[BASE], rec.steps[-1].estimates[BASE])
    assert result.settings["iterations_run"] == 3


def test_keyboard_interrupt_keeps_last_finished_step(tiny_scene):
    problem = load(tiny_scene, toml(base_color(), iterations=20, lr=0.05))
    initial = problem.parameters[0].initial.copy()
    rec = Recorder(interrupt_at=3)
    result = run(problem, callback=rec)  # does not raise
    assert isinstance(result, invpbr.Result)
    assert result.status == "interrupted"
    assert result.iterations == 4 == len(result.loss)
    last = rec.steps[-1].estimates[BASE]
    np.testing.assert_array_equal(result.estimates[BASE], last)
    assert np.abs(result.estimates[BASE] - initial).max() > 0.1
    np.testing.assert_array_equal(result.initial[BASE], initial)
    # The scene holds the estimates, and renders made from them come back.
    np.testing.assert_array_equal(np.array(problem.params[BASE]), last)
    assert set(result.renders) == {"front", "side"}


def test_nan_loss_diverges_without_corrupting(tiny_scene, tmp_path):
    problem = load(tiny_scene, toml(base_color(), iterations=10, lr=0.05))
    initial = problem.parameters[0].initial.copy()
    problem.views[0].photo[5, 7, 1] = np.nan
    rec = Recorder()
    result = run(problem, callback=rec)
    assert result.status == "diverged"
    assert rec.steps == []  # the step with the NaN loss is not taken
    assert result.iterations == 0 and result.loss == []
    np.testing.assert_array_equal(result.estimates[BASE], initial)
    np.testing.assert_array_equal(np.array(problem.params[BASE]), initial)
    assert all(np.isfinite(r).all() for r in result.renders.values())
    assert math.isfinite(result.errors[BASE])

    # result.json is strict JSON: non-finite numbers (here also an injected NaN loss) become null.
    result.loss = [0.5, float("nan"), float("inf")]
    out = invpbr.save_result(result, tmp_path / "out")

    def reject(name):
        raise ValueError(f"result.json holds {name}")

    doc = json.loads((out / "result.json").read_text(), parse_constant=reject)
    assert doc["status"] == "diverged"
    assert doc["loss"] == [0.5, None, None]
    np.testing.assert_allclose(doc["parameters"][BASE], initial.ravel(), rtol=1e-6)


# --- textures ------------------------------------------------------------------------------


def texture_estimate(resolution: str | None = None, tv: float = 0.0,
                     bounds: str = "[0.0, 1.0]") -> str:
    text = f'[[estimate]]\nkey = "{FLOOR}"\nbounds = {bounds}\ntv = {tv}\n'
    if resolution is not None:
        text += f"resolution = {resolution}\n"
    return text + "\n"


def test_texture_coarse_to_fine_stages_and_bounds(tiny_scene):
    n = 9
    problem = load(tiny_scene, toml(texture_estimate("[4, 8, 16]", bounds="[0.35, 0.65]"),
                                    iterations=n, lr=0.1))
    assert problem.parameters[0].kind == "texture" and problem.parameters[0].shape == (16, 16, 3)
    rec = Recorder()
    result = run(problem, callback=rec)
    assert result.status == "completed"
    shapes = [s.estimates[FLOOR].shape for s in rec.steps]
    expected = [(4, 4, 3) if it < n // 3 else (8, 8, 3) if it < 2 * n // 3 else (16, 16, 3)
                for it in range(n)]
    assert shapes == expected
    for s in rec.steps:
        assert s.estimates[FLOOR].min() >= 0.35 and s.estimates[FLOOR].max() <= 0.65
    assert any(s.estimates[FLOOR].max() == np.float32(0.65) or s.estimates[FLOOR].min() == np.float32(0.35)
               for s in rec.steps)  # the bounds were reached: clipping was needed
    assert result.estimates[FLOOR].shape == (16, 16, 3)
    assert result.estimates[FLOOR].min() >= 0.35 and result.estimates[FLOOR].max() <= 0.65
    assert result.kinds[FLOOR] == "texture"


def test_texture_tv_gives_a_smoother_estimate(tiny_scene):
    tvs = {}
    for tv in (0.0, 1.0):
        result = run(load(tiny_scene, toml(texture_estimate(tv=tv), iterations=12, lr=0.05, seed=3)))
        assert result.status == "completed" and result.estimates[FLOOR].shape == (16, 16, 3)
        tvs[tv] = texture_tv(result.estimates[FLOOR])
    assert tvs[0.0] > 0.0
    assert tvs[1.0] < 0.5 * tvs[0.0], tvs  # ~0.2 in practice


# --- seeds ---------------------------------------------------------------------------------


def test_same_seed_same_run_other_seed_other_run(tiny_scene):
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        runs[name] = run(load(tiny_scene, toml(base_color(), iterations=6, lr=0.05, seed=seed,
                                               views_per_step=1)))
    a, b, c = runs["a"], runs["b"], runs["c"]
    # Identical up to float rounding: the CPU backend accumulates the gradients of the
    # renders with atomic adds from 2 threads, whose order (and so the last bit) varies.
    np.testing.assert_allclose(b.estimates[BASE], a.estimates[BASE], rtol=0, atol=1e-6)
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-5)
    assert len(c.loss) == len(a.loss)
    assert not np.allclose(c.loss, a.loss, rtol=1e-3)


# --- parameters changed in Python, no parameters ------------------------------------------


def test_refresh_parameters_adds_an_estimate(tiny_scene):
    problem = load(tiny_scene, toml(base_color(), iterations=4, lr=0.05))
    assert [p.key for p in problem.parameters] == [BASE]
    problem.config.estimate.append(EstimateConfig(key=ROUGH, bounds=(0.05, 1.0)))
    problem.refresh_parameters()
    assert [p.key for p in problem.parameters] == [BASE, ROUGH]
    rough = problem.parameters[1]
    assert rough.kind == "value" and rough.config.bounds == (0.05, 1.0)
    np.testing.assert_allclose(rough.initial.ravel(), [0.6], rtol=1e-6)
    result = run(problem)
    assert set(result.estimates) == {BASE, ROUGH}
    assert abs(float(result.estimates[ROUGH].ravel()[0]) - 0.6) > 0.05


def test_no_parameters_raises(tiny_scene):
    problem = load(tiny_scene, toml("", iterations=3))
    assert problem.parameters == []
    with pytest.raises(ValueError, match=r"tiny: nothing to estimate"):
        run(problem)


# --- image losses --------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["relative_l2", "l1"])
def test_loss_recovers_base_color(tiny_scene, loss):
    result = run(load(tiny_scene, toml(base_color(), iterations=60, lr=0.03, loss=loss)))
    assert result.status == "completed"
    assert result.settings["optimize"]["loss"] == loss
    assert result.errors[BASE] < 0.5 * result.initial_errors[BASE], result.errors


def test_spp_schedule_and_gradient_spp_are_used(tiny_scene, monkeypatch):
    import sys

    steps_module = sys.modules["invpbr.optimization.strategies"]  # where steps call render_view

    problem = load_problem(tiny_scene)
    problem.config.render.spp = [2, 6]
    problem.config.render.spp_grad = 3
    problem.config.optimize.batch = False  # one render_view call per view
    problem.config.optimize.freeze = False  # (a replayed step calls no Python)
    calls = []
    real = steps_module.render_view

    def spy(*args, spp, seed, spp_grad=0):
        calls.append((spp, spp_grad))
        return real(*args, spp=spp, seed=seed, spp_grad=spp_grad)

    monkeypatch.setattr(steps_module, "render_view", spy)
    result = invpbr.optimize(problem, iterations=4, progress=False)
    assert result.status == "completed"
    steps = calls[:4 * 2]  # 2 views per step, then the final renders
    assert [c[0] for c in steps] == [2, 2, 2, 2, 6, 6, 6, 6]
    assert all(c[1] == 3 for c in steps)


def test_batched_views_render_like_separate_sensors(tiny_scene):
    import drjit as dr
    import mitsuba as mi

    from invpbr.render import make_batch_sensor, render_batch, render_view

    problem = load_problem(tiny_scene)
    batch = make_batch_sensor(problem.scene, [0, 1])
    assert batch is not None
    integrator = mi.load_dict({"type": "prb", "max_depth": 3})
    with dr.suspend_grad():
        together = [np.array(i) for i in render_batch(problem.scene, problem.params, integrator,
                                                      batch, 2, spp=256, seed=1)]
        apart = [np.array(render_view(problem.scene, problem.params, integrator, i, spp=256,
                                      seed=5 + i)) for i in (0, 1)]
        again = [np.array(render_view(problem.scene, problem.params, integrator, i, spp=256,
                                      seed=9 + i)) for i in (0, 1)]
    for t, a, b in zip(together, apart, again):
        assert t.shape == a.shape
        noise = np.abs(a - b).mean()
        assert np.abs(t - a).mean() < 1.5 * noise  # differences are noise only
        assert abs(t.mean() - a.mean()) < 0.01 * a.mean()


def test_batched_and_separate_runs_recover_the_same(tiny_scene):
    runs = {}
    for batch in (True, False):
        problem = load_problem(tiny_scene)
        problem.config.optimize.batch = batch
        result = invpbr.optimize(problem, iterations=30, progress=False)
        assert result.settings["batched"] is batch
        runs[batch] = result
    key = "ball.bsdf.base_color.value"
    assert np.allclose(runs[True].estimates[key], runs[False].estimates[key], atol=0.03)
    assert runs[True].errors[key] < 0.5 * runs[True].initial_errors[key]


def test_views_with_different_films_are_not_batched(tiny_scene):
    from invpbr.render import make_batch_sensor

    xml = (tiny_scene / "scene.xml").read_text()
    first = xml.index('<integer name="width"')
    end = xml.index("/>", first)
    (tiny_scene / "scene.xml").write_text(xml[:first] + '<integer name="width" value="8"'
                                          + xml[end:])
    from invpbr.problem import load_scene

    scene = load_scene(tiny_scene / "scene.xml")
    assert make_batch_sensor(scene, [0, 1]) is None
    assert make_batch_sensor(scene, [1]) is None  # one view: nothing to batch


def test_lr_decay_shrinks_the_steps(tiny_scene):
    """lr_decay = 1e-4: the last step's learning rate is 1e-4 of the first's (constant
    for the first half, then geometric), so the last step moves the estimate ~1e-4 as
    far as the first (Adam's steps are ~lr)."""
    from invpbr.optimization import decay_factor

    assert [decay_factor(0.01, i, 5) for i in range(5)] == pytest.approx([1, 1, 1, 0.1, 0.01])
    problem = load(tiny_scene, toml(base_color(), iterations=12, lr=0.05))
    problem.config.optimize.lr_decay = 1e-4
    seen = []
    run(problem, callback=lambda info: seen.append(info.estimates[BASE].copy()))
    first = np.abs(seen[0] - problem.parameters[0].initial).max()
    last = np.abs(seen[-1] - seen[-2]).max()
    assert first > 0.02, first
    assert last < 1e-3 * first, (first, last)


def test_lr_decay_is_validated():
    from invpbr.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="optimize.lr_decay must be"):
        parse_config({"optimize": {"lr_decay": 0}}, source="x.toml")
    assert parse_config({"optimize": {"lr_decay": 0.1}}).optimize.lr_decay == 0.1


def test_grouped_adam_steps_a_weak_component_by_its_share(mi):
    """Rigid motions (adam = "group" / "motion"): a component whose gradient is 1000x
    smaller than its group's largest steps ~1000x less than the learning rate, where
    plain Adam steps every component by about the learning rate; groups are separate
    (the translation's strong gradient does not slow the rotation's own); the groups
    must cover the latent."""
    import drjit as dr

    from invpbr.estimates.meshes import motion_groups
    from invpbr.optimization.latents import grouped_adam

    assert motion_groups("component", 2) is None and motion_groups("auto", 1) is None
    assert motion_groups("auto", 1, auto="motion") == (6,)
    assert motion_groups("group", 2) == (3, 3, 3, 3)
    assert motion_groups("motion", 1, scale=True) == (6, 1)
    # gradient scales: a strong and two weak translation components, weak rotations
    weight = mi.Float([1.0, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6])

    def steps(opt) -> np.ndarray:
        opt["x"] = mi.Float(np.zeros(6))
        for _ in range(3):
            dr.backward(dr.sum(weight * dr.square(opt["x"] - 1.0)))
            opt.step()
        return np.array(opt["x"])

    plain = steps(mi.ad.Adam(lr=0.1))
    assert plain == pytest.approx(np.full(6, 0.3), rel=0.03)  # ~lr per step, all of them
    for groups, rotation in (((3, 3), 0.3), ((6,), 3e-7)):
        opt = grouped_adam(0.1)
        opt.groups["x"] = groups
        x = steps(opt)
        assert x[0] == pytest.approx(0.3, rel=0.01)
        assert np.all(x[1:3] < 1e-6), (groups, x)  # weak within the strong one's group
        assert x[3:] == pytest.approx(np.full(3, rotation), rel=0.1), (groups, x)
    opt = grouped_adam(0.1)
    opt.groups["x"] = (3, 2)
    with pytest.raises(ValueError, match="'x' has 6 components, its groups"):
        opt["x"] = mi.Float(np.zeros(6))


def test_hybrid_adam_moves_a_motion_to_plain_adam_half_way(mi):
    """adam = "hybrid": a motion steps with one second moment (a weak component by
    its gradient's share) until half the run, then with plain Adam (every
    component by about the learning rate), stepped by that optimizer alone."""
    from types import SimpleNamespace

    import drjit as dr

    from invpbr.estimates.meshes import motion_groups, plain_adam_from, to_plain_adam
    from invpbr.optimization.latents import Latents

    assert motion_groups("hybrid", 1) == (6,) and plain_adam_from("hybrid", 80) == 40
    assert plain_adam_from("motion", 80) is None
    store = Latents(SimpleNamespace(params=SimpleNamespace(update=lambda: None)), [], 4, lr=0.1)
    store.add("x", mi.Float(np.zeros(6)), groups=(6,))
    weight = mi.Float([1.0, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6])
    moved = []
    for it in range(4):  # (as an estimate's advance: until it moved)
        if True not in moved:
            moved.append(to_plain_adam(store, "x", it, 4, "hybrid"))
        dr.backward(dr.sum(weight * dr.square(store["x"] - 1.0)))
        store.step()
    x = np.array(store["x"])
    assert moved == [False, False, True]
    assert "x" in store.opt and "x" not in store.grouped_opt
    # 2 shared steps (weak: ~1e-6 of lr), then 2 plain ones (~lr each, not 2x: one optimizer)
    assert x[0] == pytest.approx(0.4, rel=0.03)
    assert x[1:] == pytest.approx(np.full(5, 0.2), rel=0.05), x
    assert not to_plain_adam(store, "x", 3, 4, "motion")
