"""Unit tests of invpbr.procedural: meshes, textures, environment maps and their writers.

Fast: no rendering. Mitsuba is used only to read back what was written (a PLY mesh, a PNG,
an EXR) and to evaluate its ``envmap`` emitter at a few directions.
"""

import numpy as np
import pytest

import invpbr
from invpbr.testing import procedural


MESHES = {
    "uv_sphere": lambda: procedural.uv_sphere(6, 12),
    "uv_sphere_welded_poles": lambda: procedural.uv_sphere(6, 12, split_poles=False),
    "torus": lambda: procedural.torus(1.0, 0.4, 12, 6),
}


@pytest.mark.parametrize("name", sorted(MESHES))
def test_mesh_is_consistent(name):
    vertices, faces, uvs, normals = MESHES[name]()
    n = vertices.shape[0]
    assert vertices.dtype == np.float32 and vertices.shape == (n, 3)
    assert faces.dtype == np.int32 and faces.shape[1] == 3
    assert uvs.dtype == np.float32 and uvs.shape == (n, 2)
    assert normals.shape == (n, 3)
    assert faces.min() == 0 and faces.max() == n - 1  # every vertex used
    assert uvs.min() >= 0.0 and uvs.max() <= 1.0
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    # Counter-clockwise from outside: face normals agree with the vertex normals.
    p0, p1, p2 = (vertices[faces[:, i]] for i in range(3))
    face_normals = np.cross(p1 - p0, p2 - p0)
    assert (np.linalg.norm(face_normals, axis=1) > 1e-8).all()
    assert ((face_normals * normals[faces].mean(axis=1)).sum(axis=1) > 0).all()


def test_uv_sphere_counts_and_surface():
    n_theta, n_phi, radius = 8, 16, 2.0
    vertices, faces, uvs, _ = procedural.uv_sphere(n_theta, n_phi, radius)
    # Interior rings have one duplicated seam column; each pole is split per segment.
    assert vertices.shape[0] == (n_theta - 1) * (n_phi + 1) + 2 * n_phi
    assert faces.shape[0] == 2 * n_phi * (n_theta - 1)
    np.testing.assert_allclose(np.linalg.norm(vertices, axis=1), radius, rtol=1e-6)
    # Only the seam column (u = 0 and u = 1) and the split poles share positions.
    interior = (uvs[:, 1] > 0) & (uvs[:, 1] < 1) & (uvs[:, 0] < 1)
    assert len(np.unique(vertices[interior].round(5), axis=0)) == interior.sum()
    seam0 = vertices[interior & (uvs[:, 0] == 0)]
    seam1 = vertices[(uvs[:, 0] == 1)]
    np.testing.assert_allclose(seam0, seam1, atol=1e-6)
    # v = 0 is the north pole (+Y), the top row of a texture.
    assert (vertices[uvs[:, 1] == 0] == [0, radius, 0]).all()


def test_torus_counts():
    vertices, faces, _, _ = procedural.torus(1.0, 0.25, 20, 10)
    assert vertices.shape[0] == 21 * 11
    assert faces.shape[0] == 2 * 20 * 10
    distance_to_axis = np.linalg.norm(vertices[:, [0, 2]], axis=1)
    assert distance_to_axis.min() == pytest.approx(0.75, abs=1e-5)
    assert distance_to_axis.max() == pytest.approx(1.25, abs=1e-5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: procedural.uv_sphere(1, 8), "n_theta"),
        (lambda: procedural.uv_sphere(4, 8, radius=0.0), "radius"),
        (lambda: procedural.torus(1.0, 1.5), "minor_radius"),
        (lambda: procedural.torus(1.0, 0.5, 2, 8), "n_major"),
    ],
)
def test_mesh_arguments_are_checked(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_ply_round_trip_through_mitsuba(mi, tmp_path):
    vertices, faces, uvs, normals = procedural.torus(1.0, 0.4, 12, 6)
    path = procedural.write_ply(tmp_path / "meshes" / "torus.ply", vertices, faces, uvs, normals)
    mesh = mi.load_dict({"type": "ply", "filename": str(path)})
    assert mesh.vertex_count() == vertices.shape[0]
    assert mesh.face_count() == faces.shape[0]
    assert mesh.has_vertex_texcoords() and mesh.has_vertex_normals()
    params = mi.traverse(mesh)
    np.testing.assert_allclose(np.array(params["vertex_positions"]).reshape(-1, 3), vertices,
                               atol=1e-6)
    np.testing.assert_allclose(np.array(params["vertex_texcoords"]).reshape(-1, 2), uvs,
                               atol=1e-6)
    np.testing.assert_array_equal(np.array(params["faces"]).reshape(-1, 3), faces)


def test_ply_without_attributes(mi, tmp_path):
    vertices, faces, _, _ = procedural.uv_sphere(4, 8)
    path = procedural.write_ply(tmp_path / "plain.ply", vertices, faces)
    mesh = mi.load_dict({"type": "ply", "filename": str(path)})
    assert mesh.vertex_count() == vertices.shape[0]
    assert not mesh.has_vertex_texcoords()


def test_write_ply_checks_shapes(tmp_path):
    vertices, faces, uvs, _ = procedural.uv_sphere(4, 8)
    with pytest.raises(ValueError, match="uvs must be"):
        procedural.write_ply(tmp_path / "x.ply", vertices, faces, uvs=uvs[:-1])
    with pytest.raises(ValueError, match="face indices"):
        procedural.write_ply(tmp_path / "x.ply", vertices, faces + 1000)
    with pytest.raises(ValueError, match="vertices must be"):
        procedural.write_ply(tmp_path / "x.ply", vertices[:, :2], faces)


def test_checker_texture():
    img = procedural.checker_texture((8, 12), 4, ((1, 0, 0), (0, 0, 1)))
    assert img.shape == (8, 12, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img[0, 0], [1, 0, 0])
    np.testing.assert_array_equal(img[0, 3], [0, 0, 1])  # squares are 3 pixels wide
    np.testing.assert_array_equal(img[2, 0], [0, 0, 1])  # and 2 pixels high
    with pytest.raises(ValueError, match="colors"):
        procedural.checker_texture(8, 2, ((1, 0, 0),))


def test_albedo_pattern_range_determinism_and_tiling():
    a = procedural.albedo_pattern(64, seed=3)
    assert a.shape == (64, 64, 3) and a.dtype == np.float32
    assert a.min() >= 0.05 - 1e-6 and a.max() <= 0.95 + 1e-6
    assert a.max() - a.min() > 0.5  # not flat
    np.testing.assert_array_equal(a, procedural.albedo_pattern(64, seed=3))
    assert np.abs(a - procedural.albedo_pattern(64, seed=4)).mean() > 0.05
    assert procedural.albedo_pattern((16, 32), seed=0).shape == (16, 32, 3)
    # Periodic: the jump across the wrap-around is like any other neighbour step.
    step = np.abs(np.diff(a, axis=1)).max()
    assert np.abs(a[:, 0] - a[:, -1]).max() <= 1.5 * step
    step = np.abs(np.diff(a, axis=0)).max()
    assert np.abs(a[0] - a[-1]).max() <= 1.5 * step


def test_sky_envmap_shape_positivity_and_sun():
    sun = np.array([0.3, 0.5, -0.8])
    sky = procedural.sky_envmap(64, 32, sun_direction=sun, sun_intensity=40.0)
    assert sky.shape == (32, 64, 3) and sky.dtype == np.float32
    assert np.isfinite(sky).all() and (sky > 0).all()
    directions = procedural.envmap_directions(64, 32)[:, :, 0]
    brightest = directions[np.unravel_index(np.argmax(sky.sum(axis=2)), sky.shape[:2])]
    assert brightest @ (sun / np.linalg.norm(sun)) > np.cos(np.radians(8))
    # Sky above (row 8: 45 degrees up, away from the sun) is bluer than the ground below.
    assert sky[8, 0, 2] > sky[24, 0, 2]
    with pytest.raises(ValueError, match="sun_direction"):
        procedural.sky_envmap(sun_direction=(0, 0, 0))


def test_envmap_directions_match_mitsuba(mi):
    """A map that stores its own pixel index is read back at envmap_directions()."""
    import drjit as dr

    width, height = 16, 8
    index = np.zeros((height, width, 3), np.float32)
    index[..., 0] = np.arange(width)[None, :] + 1
    index[..., 1] = np.arange(height)[:, None] + 1
    emitter = mi.load_dict({"type": "envmap", "bitmap": mi.Bitmap(index)})
    d = procedural.envmap_directions(width, height)[1:-1, :, 0]  # poles have no azimuth
    si = dr.zeros(mi.SurfaceInteraction3f, d.shape[0] * d.shape[1])
    si.wi = mi.Vector3f(*(-d.reshape(-1, 3).T.astype(np.float32)))
    value = np.array(emitter.eval(si)).reshape(3, -1).T.reshape(d.shape[0], width, 3)
    np.testing.assert_allclose(value, index[1:-1], atol=1e-3)


def test_write_png_srgb_round_trip(mi, tmp_path):
    linear = procedural.albedo_pattern(16, seed=1)
    path = procedural.write_png_srgb(tmp_path / "textures" / "a.png", linear)
    bitmap = mi.Bitmap(str(path))
    assert bitmap.component_format() == mi.Struct.Type.UInt8
    assert bitmap.srgb_gamma()
    back = np.array(bitmap.convert(mi.Bitmap.PixelFormat.RGB, mi.Struct.Type.Float32,
                                   srgb_gamma=False))
    # 8-bit sRGB steps are at most ~0.013 in linear units at the top of the range.
    np.testing.assert_allclose(back, linear, atol=0.01)
    grey = procedural.write_png_srgb(tmp_path / "grey.png", np.full((4, 4), 0.5))
    assert mi.Bitmap(str(grey)).channel_count() == 1


def test_write_exr_round_trip(mi, tmp_path):
    sky = procedural.sky_envmap(16, 8)
    path = procedural.write_exr(tmp_path / "envmaps" / "sky.exr", sky)
    np.testing.assert_array_equal(np.array(mi.Bitmap(str(path))), sky)
    with pytest.raises(ValueError, match="expected an image"):
        procedural.write_exr(tmp_path / "bad.exr", np.zeros((4, 4, 2)))
