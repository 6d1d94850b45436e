"""Geometry estimates: pose and shape models, their errors, config checks, and
small recoveries with the discontinuity-correct integrators."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import invpbr
from invpbr.estimates import meshes as geometry
from invpbr.testing import procedural
from invpbr.config import ConfigError, parse_config



@pytest.fixture(autouse=True, scope="module")
def _backend():
    invpbr.init_backend()


BLOB_TRUTH_AXIS = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])


def _cameras(res: int, views) -> str:
    out = ""
    for i, (az, el) in enumerate(views):
        a, e = np.radians(az), np.radians(el)
        o = 5 * np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])
        out += f"""<sensor type="perspective" id="cam{i}"><float name="fov" value="35"/>
<transform name="to_world"><lookat origin="{o[0]:.4f},{o[1]:.4f},{o[2]:.4f}" target="0,0,0" up="0,1,0"/></transform>
<film type="hdrfilm"><integer name="width" value="{res}"/><integer name="height" value="{res}"/>
<boolean name="sample_border" value="true"/><rfilter type="box"/></film></sensor>
"""
    return out


def _blob_scene(mesh: str, transform: str, cameras: str) -> str:
    return f"""<scene version="3.0.0">
<emitter type="constant" id="env"><rgb name="radiance" value="0.3"/></emitter>
<emitter type="point" id="lamp"><point name="position" x="3" y="4" z="3"/><rgb name="intensity" value="30"/></emitter>
<shape type="ply" id="blob"><string name="filename" value="{mesh}"/>
<transform name="to_world">{transform}</transform>
<bsdf type="diffuse"><rgb name="reflectance" value="0.7,0.5,0.3"/></bsdf></shape>
{cameras}</scene>"""


def make_pose_folder(folder, res: int = 24, iterations: int = 40, extra: str = ""):
    """A blob at the identity pose; the truth rotated 15 degrees and moved."""
    folder.mkdir(parents=True, exist_ok=True)
    v, f = procedural.blob(2, seed=1)
    procedural.write_ply(folder / "blob.ply", v, f)
    cams = _cameras(res, [(0, 20), (110, 30), (230, 10)])
    ax = BLOB_TRUTH_AXIS
    truth = (f'<rotate x="{ax[0]:.6f}" y="{ax[1]:.6f}" z="{ax[2]:.6f}" angle="15"/>'
             '<translate x="0.15" y="-0.1" z="0.1"/>')
    (folder / "scene.xml").write_text(_blob_scene("blob.ply", "", cams))
    (folder / "truth.xml").write_text(_blob_scene("blob.ply", truth, cams))
    (folder / "invpbr.toml").write_text(f"""[render]
spp = 8
max_depth = 2
spp_final = 16

[[estimate]]
key = "blob.vertex_positions"
kind = "pose"
{extra}
[optimize]
iterations = {iterations}
lr = 0.03
loss = "l2"
""")
    from invpbr.render import render_photos

    render_photos(folder, spp=64)
    return folder


@pytest.fixture(scope="module")
def pose_folder(tmp_path_factory):
    return make_pose_folder(tmp_path_factory.mktemp("pose") / "blob_pose")


# --- rotations and the pose model -------------------------------------------------------


@pytest.mark.parametrize("w", [[0.0, 0.0, 0.0], [0.3, -0.2, 0.5], [1e-5, 2e-5, 0.0], [2.0, 1.0, -1.0]])
def test_rotation_matrix_matches_numpy(w):
    import mitsuba as mi

    r = np.array(geometry.rotation_matrix(mi.Vector3f(*w)), dtype=np.float64).reshape(3, 3)
    expected = geometry.rotation_numpy(w)
    assert np.allclose(r, expected, atol=1e-5)
    assert np.allclose(expected @ expected.T, np.eye(3), atol=1e-12)


def test_rotation_derivative_at_identity_is_the_cross_product_matrix():
    import drjit as dr
    import mitsuba as mi

    w = mi.Vector3f(0.0, 0.0, 0.0)
    dr.enable_grad(w)
    r = geometry.rotation_matrix(w)
    dr.set_grad(w, mi.Vector3f(0.0, 0.0, 1.0))  # d/dwz
    dr.forward_to(r)
    d = np.array(dr.grad(r), dtype=np.float64).reshape(3, 3)
    assert np.all(np.isfinite(d))
    assert np.allclose(d, [[0, -1, 0], [1, 0, 0], [0, 0, 0]], atol=1e-6)


def test_pose_model_moves_vertices_rigidly():
    import mitsuba as mi

    v, _ = procedural.blob(1, seed=3)
    model = geometry.PoseModel(["m.vertex_positions"], {"m.vertex_positions": v}, scale=True)
    assert model.latent_size == 7
    moved = np.array(model.scene_values(mi.Float(model.initial_latent()))["m.vertex_positions"])
    assert np.allclose(moved.reshape(-1, 3), v, atol=1e-6)

    latent = np.array([0.1, -0.2, 0.05, 0.2, -0.1, 0.3, np.log(1.2)], np.float32)
    moved = np.array(model.scene_values(mi.Float(latent))["m.vertex_positions"]).reshape(-1, 3)
    r = geometry.rotation_numpy(latent[3:6])
    expected = model.centre + latent[:3] * model.size + 1.2 * (v - model.centre) @ r.T
    assert np.allclose(moved, expected, atol=1e-5)
    described = model.describe(latent)
    assert described["scale"] == pytest.approx(1.2, rel=1e-6)
    assert described["rotation_deg"] == pytest.approx(np.degrees(np.linalg.norm(latent[3:6])))


def test_pose_model_of_an_analytic_shape_transforms_its_matrix():
    import mitsuba as mi

    rest = np.diag([0.5, 0.5, 0.5, 1.0])
    rest[:3, 3] = [1.0, 2.0, 3.0]
    model = geometry.PoseModel(["s.to_world"], {"s.to_world": rest})
    assert np.allclose(model.centre, [1, 2, 3])
    latent = np.array([0.2, 0.0, 0.0, 0.0, 0.0, np.pi / 2], np.float32)
    value = model.scene_values(mi.Float(latent))["s.to_world"]
    m = np.array(value.matrix, dtype=np.float64).reshape(4, 4)
    # A quarter turn about z through the centre, then a shift along x.
    assert np.allclose(m[:3, 3], [1.0 + 0.2 * model.size, 2.0, 3.0], atol=1e-5)
    assert np.allclose(m[:3, :3], 0.5 * geometry.rotation_numpy([0, 0, np.pi / 2]), atol=1e-5)


# --- errors ------------------------------------------------------------------------------


def test_pose_error_recovers_a_known_motion():
    v, _ = procedural.blob(2, seed=1)
    r = geometry.rotation_numpy(np.radians(12) * BLOB_TRUTH_AXIS)
    moved = v @ r.T + [0.3, 0.0, -0.4]
    err = geometry.pose_error(v, moved)
    assert err["rotation_deg"] == pytest.approx(12.0, abs=1e-3)
    assert err["position"] == pytest.approx(np.linalg.norm(
        v.mean(axis=0) @ r.T + [0.3, 0.0, -0.4] - v.mean(axis=0)), rel=1e-6)
    assert geometry.pose_error(v, v)["rotation_deg"] < 1e-3


def test_chamfer_between_surfaces_of_concentric_spheres():
    v, f = procedural.icosphere(4)
    diagonal = np.linalg.norm([2.2, 2.2, 2.2])
    # Radii 1 and 1.1: every nearest distance is about 0.1 whichever way.
    d = geometry.chamfer_distance(v, 1.1 * v, faces_a=f, faces_b=f, normalize=True)
    assert d == pytest.approx(0.1 / diagonal, rel=0.05)
    same = geometry.chamfer_distance(v, v, faces_a=f, faces_b=f, normalize=True)
    assert same < 0.0015  # only the sampling: 0.004 of a unit sphere, over its diagonal


def test_vertex_error_falls_back_to_nearest_distances_after_remeshing():
    v, f = procedural.icosphere(2)
    v2, f2 = procedural.icosphere(3)
    assert geometry.vertex_error(v, v) == 0.0
    assert 0 < geometry.vertex_error(v, v2) < 0.1  # different counts: nearest vertices


# --- configuration and resolution --------------------------------------------------------


@pytest.mark.parametrize("table, message", [
    ({"key": "a.vertex_positions", "kind": "bend"}, "kind = 'bend'"),
    ({"key": "a.bsdf.reflectance.value", "scale": True}, "scale applies to kind = \"pose\""),
    ({"key": "a.vertex_positions", "kind": "pose", "lambda": 5}, "lambda and remesh"),
    ({"key": ["a.vertex_positions", "b.vertex_positions"]}, "list of keys only with kind"),
    ({"key": "a.vertex_positions", "kind": "shape", "remesh": -1}, "remesh must be >= 0"),
])
def test_geometry_config_errors(table, message):
    with pytest.raises(ConfigError, match="estimate\\[0\\]") as e:
        parse_config({"estimate": [table]}, source="x/invpbr.toml")
    assert message in str(e.value)
    assert "x/invpbr.toml" in str(e.value)


def test_lambda_is_read_from_toml():
    cfg = parse_config({"estimate": [{"key": "m.vertex_positions", "kind": "shape", "lambda": 7}]})
    assert cfg.estimate[0].lambda_ == 7


def _resolve(xml: str, estimates: list[dict]):
    import mitsuba as mi

    from invpbr.estimates import resolve_parameters

    scene = mi.load_string(xml, optimize=False)
    cfg = parse_config({"estimate": estimates}, source="t/invpbr.toml")
    return resolve_parameters(mi.traverse(scene), cfg.estimate, source="t/invpbr.toml")


CUBE_XML = """<scene version="3.0.0"><shape type="cube" id="box"/>
<shape type="sphere" id="ball"/></scene>"""


def test_vertex_positions_need_a_geometry_kind():
    with pytest.raises(ValueError, match="kind = \"pose\".*kind = \"shape\""):
        _resolve(CUBE_XML, [{"key": "box.vertex_positions"}])


def test_unknown_geometry_key_suggests_close_ones():
    with pytest.raises(ValueError, match="did you mean 'box.vertex_positions'"):
        _resolve(CUBE_XML, [{"key": "bx.vertex_positions", "kind": "pose"}])


def test_shape_of_an_analytic_shape_is_refused():
    with pytest.raises(ValueError, match="applies to shapes' vertex_positions"):
        _resolve(CUBE_XML, [{"key": "ball.to_world", "kind": "shape"}])


def test_trap_shapes_warn():
    with pytest.warns(UserWarning, match="built-in 'cube' has split vertices"):
        (p,) = _resolve(CUBE_XML, [{"key": "box.vertex_positions", "kind": "pose"}])
    assert p.kind == "pose" and p.targets == ["box.vertex_positions"]
    with pytest.warns(UserWarning, match="analytic 'sphere'"):
        _resolve(CUBE_XML, [{"key": "ball.to_world", "kind": "pose"}])


def test_pose_of_several_meshes_is_one_parameter(tmp_path):
    v, f = procedural.icosphere(1)
    procedural.write_ply(tmp_path / "a.ply", v, f)
    xml = f"""<scene version="3.0.0">
    <shape type="ply" id="a"><string name="filename" value="{tmp_path / 'a.ply'}"/></shape>
    <shape type="ply" id="b"><string name="filename" value="{tmp_path / 'a.ply'}"/>
      <transform name="to_world"><translate x="3"/></transform></shape></scene>"""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (p,) = _resolve(xml, [{"key": ["a.vertex_positions", "b.vertex_positions"], "kind": "pose"}])
    assert p.key == "a.vertex_positions+b.vertex_positions"
    assert p.initial.shape == (2 * len(v), 3)
    assert p.model.centre[0] == pytest.approx(1.5, abs=1e-5)  # between the two
    with pytest.raises(ValueError, match="already estimates"):
        _resolve(xml, [{"key": "a.vertex_positions", "kind": "pose"},
                       {"key": "a.vertex_positions", "kind": "shape"}])


# --- the integrator choice and gradients --------------------------------------------------


def test_auto_integrator_for_geometry(pose_folder):
    from invpbr.problem import load_problem
    from invpbr.render import choose_integrator_type

    problem = load_problem(pose_folder)
    assert choose_integrator_type(problem.config.render, problem.parameters) == "direct_projective"
    problem.config.render.max_depth = 4
    assert choose_integrator_type(problem.config.render, problem.parameters) == "prb_projective"


def test_gradcheck_pose_projective_agrees_prb_does_not(pose_folder):
    from invpbr.optimization.gradcheck import check_gradients
    from invpbr.problem import load_problem

    problem = load_problem(pose_folder)
    projective = {c.component: c for c in check_gradients(problem, spp=128, fd_spp=512,
                                                          epsilon=0.01)}
    problem.config.render.integrator = "prb"
    prb = {c.component: c for c in check_gradients(problem, spp=128, fd_spp=512, epsilon=0.01)}
    assert set(projective) == {"tx", "ty", "tz", "rx", "ry", "rz"}
    # Translation moves the whole silhouette: the image-sum derivative is all boundary term.
    for d in ("ty", "tz"):
        assert projective[d].sum_error < 0.3, projective[d]
        assert prb[d].sum_error > 1.0, prb[d]
        assert projective[d].reverse_error < 0.3


# --- recoveries ----------------------------------------------------------------------------


def test_pose_recovery_and_result_files(pose_folder, tmp_path):
    import mitsuba as mi

    from invpbr.optimization import optimize
    from invpbr.problem import load_problem
    from invpbr.results import save_result

    problem = load_problem(pose_folder)
    result = optimize(problem, progress=False)
    key = "blob.vertex_positions"
    assert result.integrator == "direct_projective"
    start, end = result.geometry_errors_initial[key], result.geometry_errors[key]
    assert start["rotation_deg"] == pytest.approx(15.0, abs=0.01)
    assert end["rotation_deg"] < 4.0 and end["position"] < 0.04, end
    assert result.errors[key] < 0.3 * result.initial_errors[key]
    out = save_result(result, tmp_path / "out")
    doc = json.loads((out / "result.json").read_text())
    assert doc["parameters"][key]["meshes"] == ["meshes/blob.ply"]
    assert doc["geometry_errors"][key]["rotation_deg"] == pytest.approx(end["rotation_deg"])
    assert 0 < doc["parameters"][key]["rotation_deg"] < 30
    mesh = mi.load_dict({"type": "ply", "filename": str(out / "meshes/blob.ply")})
    saved = np.array(mi.traverse(mesh)["vertex_positions"]).reshape(-1, 3)
    assert np.allclose(saved, result.estimates[key], atol=1e-5)


def make_shape_folder(folder, res: int = 24, iterations: int = 30, remesh: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    v, f = procedural.icosphere(2)
    procedural.write_ply(folder / "start.ply", v, f)
    v, f = procedural.blob(2, seed=1, amplitude=0.35)
    procedural.write_ply(folder / "target.ply", v, f)
    cams = _cameras(res, [(0, 15), (60, 35), (120, -10), (180, 20), (240, 40), (300, -5)])
    (folder / "scene.xml").write_text(_blob_scene("start.ply", "", cams))
    (folder / "truth.xml").write_text(_blob_scene("target.ply", "", cams))
    (folder / "invpbr.toml").write_text(f"""[render]
spp = 4
max_depth = 2
spp_final = 8

[[estimate]]
key = "blob.vertex_positions"
kind = "shape"
lambda = 19
remesh = {remesh}

[optimize]
iterations = {iterations}
lr = 0.1
loss = "l2"
""")
    from invpbr.render import render_photos

    render_photos(folder, spp=32)
    return folder


def test_shape_recovery_with_remeshing(tmp_path):
    from invpbr.optimization import optimize
    from invpbr.problem import load_problem

    problem = load_problem(make_shape_folder(tmp_path / "shape", remesh=1))
    n_start = len(problem.parameters[0].initial)
    result = optimize(problem, progress=False)
    key = "blob.vertex_positions"
    assert len(result.estimates[key]) != n_start  # remeshed half way
    vertices, faces = result.meshes["blob"]
    assert len(vertices) == len(result.estimates[key]) and faces.max() < len(vertices)
    start = result.geometry_errors_initial[key]["chamfer"]
    end = result.geometry_errors[key]["chamfer"]
    assert end < 0.6 * start, (start, end)


def test_guiding_structure_is_rebuilt_every_n_renders_per_sensor():
    from types import SimpleNamespace

    from invpbr.render import reuse_guiding

    builds = []

    def build(scene, sensor, seed):
        builds.append((sensor, seed))
        detail.guiding_distr = f"octree {len(builds)}"

    detail = SimpleNamespace(guiding_distr=None, init_indirect_silhouette=build)
    integrator = SimpleNamespace(proj_detail=detail)
    reuse_guiding(integrator, 3)
    a, b = object(), object()
    used = []
    for i in range(7):
        detail.init_indirect_silhouette(None, a, i)
        used.append(detail.guiding_distr)
        detail.init_indirect_silhouette(None, b, i)
    assert [s for s, _ in builds].count(a) == 3 and [s for s, _ in builds].count(b) == 3
    assert [seed for s, seed in builds if s is a] == [0, 3, 6]
    assert used == ["octree 1"] * 3 + ["octree 3"] * 3 + ["octree 5"]


def test_projective_integrators_get_the_guiding_settings():
    from invpbr.config import RenderConfig
    from invpbr.render import make_integrator

    render = RenderConfig(integrator="direct_projective", max_depth=2, guiding="grid")
    assert make_integrator(render, []).guiding == "grid"
    none = make_integrator(RenderConfig(integrator="prb_projective", guiding="none"), [])
    assert none.guiding == "none"


def test_point_lights_with_geometry_warn(pose_folder):
    from invpbr.problem import load_problem

    with pytest.warns(UserWarning, match="PointLight emitters: Mitsuba 3.9.1's projective"):
        load_problem(pose_folder)


def test_projective_seed_rays_are_set():
    from invpbr.config import RenderConfig
    from invpbr.render import make_integrator

    integrator = make_integrator(RenderConfig(integrator="direct_projective", proj_seed_spp=777), [])
    assert integrator.proj_seed_spp == 777


def test_failed_guiding_falls_back_to_unguided_sampling():
    from types import SimpleNamespace

    from invpbr.render import reuse_guiding

    def build(scene, sensor, seed):
        detail.guiding_distr = "uniform" if integrator.guiding == "none" else None

    detail = SimpleNamespace(guiding_distr=None, init_indirect_silhouette=build)
    integrator = SimpleNamespace(proj_detail=detail, guiding="octree")
    reuse_guiding(integrator, 10)
    with pytest.warns(UserWarning, match="sampled without guiding"):
        detail.init_indirect_silhouette(None, object(), 0)
    assert detail.guiding_distr == "uniform" and integrator.guiding == "octree"


def test_guiding_is_built_from_a_low_resolution_copy(pose_folder):
    import mitsuba as mi

    from invpbr.problem import load_scene
    from invpbr.render.integrators import low_resolution_copy as _low_resolution_copy

    sensor = load_scene(pose_folder / "scene.xml").sensors()[0]
    copy = _low_resolution_copy(sensor, 8)
    assert [int(v) for v in copy.film().size()] == [8, 8]
    # It sees the same: a ray through the centre of the image is the same ray.
    a, _ = sensor.sample_ray(0.0, 0.0, mi.Point2f(0.5, 0.5), mi.Point2f(0.5, 0.5))
    b, _ = copy.sample_ray(0.0, 0.0, mi.Point2f(0.5, 0.5), mi.Point2f(0.5, 0.5))
    assert np.allclose(np.array(a.d), np.array(b.d), atol=1e-6)
    assert np.allclose(np.array(a.o), np.array(b.o), atol=1e-6)
    a, _ = sensor.sample_ray(0.0, 0.0, mi.Point2f(0.1, 0.8), mi.Point2f(0.5, 0.5))
    b, _ = copy.sample_ray(0.0, 0.0, mi.Point2f(0.1, 0.8), mi.Point2f(0.5, 0.5))
    assert np.allclose(np.array(a.d), np.array(b.d), atol=1e-5)
    assert _low_resolution_copy(sensor, 64) is None  # not smaller


def test_cli_run_summarizes_a_pose(pose_folder, tmp_path, capsys):
    from invpbr.run.cli import main

    out = tmp_path / "out"
    assert main(["run", str(pose_folder), "--out", str(out), "--iterations", "2",
                 "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    line = next(x for x in stdout.splitlines() if x.strip().startswith("blob.vertex_positions"))
    assert "pose: translation" in line and "rotation_deg" in line and len(line) < 300
    assert (out / "meshes" / "blob.ply").is_file()
