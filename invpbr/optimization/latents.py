"""The optimizer's variables: every estimate's latents in one store, stepped
by Adam (``mi.ad.Adam``; large-steps shapes by a uniform Adam; rigid motions by
a grouped Adam, :class:`GroupedAdam`), written into the scene through each
estimate's own mapping.

The store knows no kind: it asks the estimates (see
:class:`invpbr.estimates.Estimate`) for their latents, scene values, bounds,
stages and regularizers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..estimates import Estimate
from ..estimates.meshes import dr_width


def grouped_adam(lr: float):
    """A :class:`GroupedAdam` (built here: Dr.Jit's classes are not bound at import)."""
    import drjit as dr
    import mitsuba as mi

    class GroupedAdam(dr.opt.Adam):
        """Adam whose second moment is shared within groups of a latent's components:
        each component's step is normalized by the largest second moment of its group
        (UniformAdam, Nicolet et al. 2021, within each group instead of over the whole
        latent). ``groups[name]`` (set before the latent is registered) gives the sizes
        of consecutive groups, e.g. ``(3, 3)``: a translation and a rotation vector.

        Why (rigid motions): per-component Adam scales every component's step to about
        the learning rate whatever its gradient's size, so a component the images hardly
        constrain (the rotation of a small or roundish object) takes learning-rate-sized
        steps of Monte Carlo noise; within a group its step is its gradient's share.
        """

        def __init__(self, lr):
            super().__init__(lr)
            self.groups: dict[str, tuple[int, ...]] = {}

        def _reset(self, key, value, promoted, /):
            sizes = self.groups[key]
            if sum(sizes) != dr.width(value.array):
                raise ValueError(f"GroupedAdam: latent {key!r} has {dr.width(value.array)} "
                                 f"components, its groups {sizes} add up to {sum(sizes)}")
            super()._reset(key, value, promoted)
            t, m, v, _ = self.state[key][3]
            # the group of each component, kept where AMSGrad keeps its maximum (unused here)
            index = mi.UInt32(np.repeat(np.arange(len(sizes)), sizes).astype(np.uint32))
            self.state[key] = (*self.state[key][:3], (t, m, v, index))

        def _step(self, cache, value, grad, lr, extra, /):
            t_p, m_tp, v_tp, index = extra
            t = t_p + 1
            m_t = dr.lerp(grad, m_tp, self.beta_1)
            v_t = dr.lerp(dr.square(grad), v_tp, self.beta_2)
            high = dr.float64_array_t(dr.leaf_t(grad))
            ema_factor = dr.leaf_t(grad)(-dr.sqrt(1 - high(self.beta_2) ** t)
                                         / (1 - high(self.beta_1) ** t))
            scale = cache.product(dr.leaf_t(grad), lr, ema_factor)
            largest = dr.zeros(type(v_t), dr.width(v_t))  # (at most one group per component)
            dr.scatter_reduce(dr.ReduceOp.Max, largest, v_t, index)
            v_group = dr.gather(type(v_t), largest, index)
            step = m_t * dr.rsqrt(v_group + self.epsilon ** 2)
            return dr.fma(step, scale, value), (t, m_t, v_t, index)

    return GroupedAdam(lr)


class Latents:
    """Every estimate's latent variables and their optimizers.

    Args:
        problem: the problem (its ``params`` receive the scene values).
        estimates: what is estimated (each already :meth:`~Estimate.setup`).
        iterations: the run's length (for coarse-to-fine stages).
        lr: the default learning rate.
        half: textures in float16, with Dr.Jit's GradScaler.
    """

    def __init__(self, problem, estimates: list[Estimate], iterations: int, *, lr: float,
                 half: bool = False):
        import drjit as dr
        import mitsuba as mi

        self.problem = problem
        self.params = problem.params
        self.estimates = estimates
        self.iterations = iterations
        self.lr = lr
        self.half = half
        self.opt = mi.ad.Adam(lr=lr)
        # Large-steps shapes step with one step size for all coordinates (Nicolet et al.).
        self.uniform_opt = mi.ad.Adam(lr=lr, uniform=True)
        # Rigid motions step with one step size per group (translation, rotation).
        self.grouped_opt = grouped_adam(lr)
        # Scales the loss against float16 gradients underflowing (and backs off on overflow).
        self.scaler = dr.opt.GradScaler() if half else None
        self.own_lr: dict[str, float] = {}
        self.where: dict[str, Any] = {}
        self.released: dict[str, Any] | None = None
        for e in estimates:
            e.start(self)
        self.write_scene()

    # -- the store protocol (invpbr.estimates.LatentStore) -----------------------------------

    def add(self, name: str, value, *, lr: float | None = None, uniform: bool = False,
            groups: tuple[int, ...] | None = None) -> None:
        """Register (or replace, resetting its optimizer state if its shape
        changed) the latent ``name`` with its own learning rate ``lr``; Adam
        normalizes each component's step by its own second moment, or by the
        largest of the whole latent (``uniform``), or of its group (``groups``:
        sizes of consecutive groups of components, see :func:`grouped_adam`)."""
        if uniform and groups is not None:
            raise ValueError(f"Latents.add(): latent {name!r}: uniform and groups exclude "
                             "each other")
        opt = self.uniform_opt if uniform else self.grouped_opt if groups is not None else self.opt
        before = self.where.get(name)
        if before is not None and before is not opt:  # (moved to another optimizer)
            del before[name]
        if groups is not None:
            opt.groups[name] = tuple(int(g) for g in groups)
        opt[name] = value
        if lr is not None:
            self.own_lr[name] = lr
        if name in self.own_lr:
            opt.set_learning_rate({name: self.own_lr[name]})
        self.where[name] = opt

    def __getitem__(self, name: str):
        if self.released is not None:
            return self.released[name]
        return self.where[name][name]

    def __setitem__(self, name: str, value) -> None:
        self.where[name][name] = value

    def names(self) -> list[str]:
        return [n for e in self.estimates for n in e.latent_names()]

    # -- the scene ---------------------------------------------------------------------------

    def scene_values(self, view_index: int | None = None) -> dict[str, Any]:
        """key -> value of every estimate, moved for sensor ``view_index`` by
        per-view estimates (None: at rest)."""
        values: dict[str, Any] = {}
        for e in self.estimates:
            values.update(e.scene_values(self, self.params))
        for e in self.estimates:
            values.update(e.view_values(self, values, view_index))
        return values

    def write_scene(self, view_index: int | None = None) -> None:
        """Put every estimate's scene values (functions of the latents) into the
        scene, moved for sensor ``view_index`` by per-view estimates."""
        for key, value in self.scene_values(view_index).items():
            self.params[key] = value
        self.params.update()

    def apply_to_image(self, image, view: int):
        """``image`` of view number ``view`` as its photo saw it (gains)."""
        for e in self.estimates:
            if e.transforms_images:
                image = e.apply_to_image(self, image, view)
        return image

    # -- a step ------------------------------------------------------------------------------

    def regularizer(self):
        """The estimates' regularizers summed (None when there is none)."""
        total = None
        for e in self.estimates:
            term = e.regularizer(self)
            if term is not None:
                total = term if total is None else total + term
        return total

    def backward(self, loss) -> None:
        """``dr.backward`` of ``loss``, scaled by the GradScaler in half precision."""
        import drjit as dr

        dr.backward(loss if self.scaler is None else self.scaler.scale(loss))

    def step(self) -> None:
        """One Adam step of every latent, bounds, and the scene written."""
        import drjit as dr

        if self.scaler is not None:
            unscale = dr.rcp(self.scaler.scale_factor)
            self.scaler.step(self.opt)
            if len(self.uniform_opt):
                self.uniform_opt.step(grad_scale=unscale)
            if len(self.grouped_opt):
                self.grouped_opt.step(grad_scale=unscale)
        else:
            self.opt.step()
            if len(self.uniform_opt):
                self.uniform_opt.step()
            if len(self.grouped_opt):
                self.grouped_opt.step()
        for e in self.estimates:
            e.project(self)
        self.write_scene()

    def decay(self, factor: float) -> None:
        """Set every learning rate to ``factor`` times its start (``lr_decay``)."""
        self.opt.set_learning_rate(self.lr * factor)
        self.uniform_opt.set_learning_rate(self.lr * factor)
        self.grouped_opt.set_learning_rate(self.lr * factor)
        for name, lr in self.own_lr.items():
            self.where[name].set_learning_rate({name: lr * factor})

    def clear_gradients(self) -> None:
        import drjit as dr

        for name in self.names():
            dr.clear_grad(self[name])

    # -- the NaN guard and checkpoints -------------------------------------------------------

    def gradients_finite(self) -> bool:
        """Whether every latent's gradient is finite (one read-back). In half
        precision the GradScaler already skips such steps (and lowers its scale),
        so this is True there."""
        import drjit as dr
        import mitsuba as mi

        if self.scaler is not None:
            return True
        ok = None
        for name in self.names():
            grad = dr.grad(self[name])
            flat = grad.array if dr.is_tensor_v(grad) else grad
            good = dr.all(dr.isfinite(flat), axis=None)
            ok = good if ok is None else ok & good
        return True if ok is None else bool(mi.Bool(ok)[0])

    def skip_step(self) -> None:
        """Drop the gradients of a step that is not taken and write the scene
        again (its AD graph was used up by the backward pass)."""
        self.clear_gradients()
        self.write_scene()

    def optimizer_state(self) -> dict[str, dict[str, Any]]:
        """name -> each latent and its Adam state (numpy arrays and floats),
        for a checkpoint: ``value``, ``t`` (step count), ``m``, ``v`` (moments),
        ``lr`` (its own learning rate, or None), ``uniform`` and ``groups``."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.names():
            opt = self.where[name]
            value, promoted, lr, (t, m, v, _) = opt.state[name]
            out[name] = {"value": np.array(value), "shape": list(value.shape),
                         "t": int(np.array(t).ravel()[0]), "m": np.array(m), "v": np.array(v),
                         "lr": None if lr is None else float(np.array(lr).ravel()[0]),
                         "promoted": bool(promoted), "uniform": opt is self.uniform_opt,
                         "groups": list(getattr(opt, "groups", {}).get(name, [])) or None}
        return out

    def load_optimizer_state(self, state: dict[str, dict[str, Any]]) -> None:
        """Put back an :meth:`optimizer_state` (every latent already registered
        by its estimate, at the checkpoint's stage) and write the scene."""
        import drjit as dr

        for name, s in state.items():
            opt = self.where.get(name)
            if opt is None:
                raise ValueError(f"checkpoint: latent {name!r} is not one of this run's "
                                 f"({', '.join(self.names())}); was invpbr.toml changed?")
            old = opt.state[name]
            value_type, flat_type = type(old[0]), type(old[3][1])
            value = np.asarray(s["value"])
            if list(old[0].shape) != list(s["shape"]):
                value = value_type(value.reshape(s["shape"]))
            else:
                value = value_type(value.reshape(old[0].shape))
            dr.make_opaque(value)
            dr.enable_grad(value)
            t = type(old[3][0])(s["t"])
            m, v = flat_type(np.asarray(s["m"]).ravel()), flat_type(np.asarray(s["v"]).ravel())
            dr.make_opaque(t, m, v)
            opt.state[name] = (value, bool(s["promoted"]), s["lr"], (t, m, v, old[3][3]))
        self.write_scene()

    def scaler_state(self) -> dict[str, float] | None:
        """The GradScaler's scale and count of good steps (half precision), or None."""
        if self.scaler is None:
            return None
        return {"scale": float(np.array(self.scaler.scale_factor).ravel()[0]),
                "it": int(np.array(self.scaler.it).ravel()[0])}

    def load_scaler_state(self, state: dict[str, float] | None) -> None:
        import mitsuba as mi

        if self.scaler is not None and state is not None:
            self.scaler.scale_factor = mi.Float(state["scale"])
            self.scaler.it = mi.UInt32(state["it"])

    # -- stages ------------------------------------------------------------------------------

    def advance(self, iteration: int) -> bool:
        """Move estimates to the stage due at ``iteration``; whether any moved."""
        changed = False
        for e in self.estimates:
            changed |= bool(e.advance(self, self.params, iteration, self.iterations))
        if changed:
            self.write_scene()
        return changed

    def stage_key(self) -> tuple:
        """Every estimate's stage: what a frozen step's recording depends on
        beyond its arguments."""
        return tuple(sorted((e.key, e.current_stage()) for e in self.estimates))

    def finish(self) -> bool:
        """Bring every estimate to its final stage, also when the run stopped early;
        whether that changed the scene."""
        changed = False
        for e in self.estimates:
            changed |= bool(e.finish(self))
        if changed:
            self.write_scene()
        return changed

    # -- results -----------------------------------------------------------------------------

    def values(self) -> dict[str, np.ndarray]:
        """key -> each reported estimate's current value (numpy, scene space)."""
        return {e.key: e.value(self, self.params) for e in self.estimates if e.reported}

    def snapshot(self) -> dict:
        """References to the current latents (Dr.Jit arrays are not changed in
        place by the optimizer, so this costs no copy)."""
        import drjit as dr

        return {name: dr.detach(self[name]) for name in self.names()}

    def restore(self, snapshot: dict) -> None:
        """Put a :meth:`snapshot` back (latents whose size changed since, by a
        remeshing or a stage, keep their current value)."""
        for name, value in snapshot.items():
            if name in self.where and dr_width(value) == dr_width(self[name]):
                self[name] = value
        self.write_scene()

    def release(self) -> None:
        """Leave the scene holding the estimates without gradient tracking, and
        drop the optimizers, so no AD graph outlives the optimization; the
        latents stay readable (detached)."""
        import drjit as dr

        self.released = {name: dr.detach(self.where[name][name]) for name in self.names()}
        written = set()
        for e in self.estimates:
            for key, value in e.scene_values(self, self.params).items():
                self.params[key] = dr.detach(value)
                written.add(key)
        for e in self.estimates:  # the scene at rest, not moved for a view
            for key, value in e.restore_scene(self, self.params).items():
                if key not in written:
                    self.params[key] = value
        self.params.update()
        self.opt = self.uniform_opt = self.grouped_opt = None
        self.where = {}

    def move_for_view(self, view_index: int | None) -> None:
        """After :meth:`release`: the scene as sensor ``view_index`` sees it
        (per-view estimates), or at rest (None)."""
        moved: dict[str, Any] = {}
        for e in self.estimates:
            if e.per_view:
                moved.update(e.view_values(self, {}, view_index))
        for key, value in moved.items():
            self.params[key] = value
        if moved:
            self.params.update()
