"""Expression basis math on synthetic landmark sets, and the shipped basis file."""

from __future__ import annotations

import numpy as np
import pytest

from expnet_stream.train.basis import (
    DEFAULT_BASIS_ID,
    align_to,
    fit_blendshape_basis,
    fit_procrustes_basis,
    generalized_procrustes,
    load_basis,
    similarity_transform,
)

pytestmark = pytest.mark.unit


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_procrustes_removes_rotation_scale_translation_exactly() -> None:
    rng = np.random.default_rng(0)
    shape = rng.normal(size=(478, 3))
    r = _rotation(rng)
    moved = 3.7 * shape @ r.T + np.array([10.0, -4.0, 2.5])
    s, rot, t = similarity_transform(moved, shape)
    np.testing.assert_allclose(s * moved @ rot.T + t, shape, atol=1e-9)
    np.testing.assert_allclose(align_to(moved, shape), shape, atol=1e-4)
    assert np.linalg.det(rot) == pytest.approx(1.0)


def test_generalized_procrustes_aligns_similar_copies() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(50, 3))
    copies = np.stack([rng.uniform(0.5, 2) * base @ _rotation(rng).T + rng.normal(size=3) for _ in range(6)])
    aligned, mean = generalized_procrustes(copies)
    assert np.abs(aligned - aligned[0]).max() < 1e-4
    assert np.sqrt((mean**2).sum(1).mean()) == pytest.approx(1.0, abs=1e-5)


def _synthetic_faces(n_people: int = 12, per: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = 478
    mean = rng.normal(size=(v, 3))
    expr = rng.normal(size=(3, v, 3)) * 0.05
    expr[:, :200] = 0.0  # a rigid part, as on a face
    lms, subj, codes = [], [], []
    for p in range(n_people):
        ident = mean + rng.normal(size=(v, 3)) * 0.02
        for _ in range(per):
            c = rng.normal(size=3)
            shape = ident + np.tensordot(c, expr, 1)
            lms.append(rng.uniform(50, 150) * shape @ _rotation(rng).T + rng.normal(size=3) * 20)
            subj.append(f"p{p}")
            codes.append(c)
    return np.asarray(lms, np.float32), np.asarray(subj), np.asarray(codes)


def test_procrustes_pca_reconstructs_and_normalises() -> None:
    lms, subj, codes = _synthetic_faces()
    basis = fit_procrustes_basis(lms, subj, k=5)
    coeffs = basis.encode_landmarks(lms)
    assert coeffs.shape == (lms.shape[0], 5)
    np.testing.assert_allclose(coeffs.std(0), 1.0, rtol=1e-3)
    # three true expression directions: the first three components explain nearly all within-person variance
    assert basis.explained[:3].sum() > 0.9
    # coefficients carry the expression codes linearly
    design = np.c_[coeffs[:, :3], np.ones(len(coeffs))]
    fit, *_ = np.linalg.lstsq(design, codes, rcond=None)
    resid = codes - design @ fit
    assert resid.var() / codes.var() < 0.1
    # reconstruction of an aligned shape with all coefficients lies close to it
    aligned = basis.align(lms[:4])
    recon = basis.coeffs_to_mesh(coeffs[:4])
    assert recon.shape == (4, 478, 3)
    assert np.abs(recon - aligned).mean() < np.abs(basis.mean - aligned).mean()


def test_coeffs_to_mesh_shapes_and_save_roundtrip(tmp_path: object) -> None:
    lms, subj, _ = _synthetic_faces(n_people=6, per=6)
    basis = fit_procrustes_basis(lms, subj, k=4)
    assert basis.coeffs_to_mesh(np.zeros(4)).shape == (478, 3)
    np.testing.assert_allclose(basis.coeffs_to_mesh(np.zeros(4)), basis.mean)
    path = basis.save(tmp_path / "b.npz")  # type: ignore[operator]
    again = type(basis).from_file(path)
    np.testing.assert_array_equal(again.encode_landmarks(lms[:3]), basis.encode_landmarks(lms[:3]))


def test_blendshape_basis_encodes_blendshapes() -> None:
    lms, subj, _ = _synthetic_faces(n_people=6, per=10)
    ref = fit_procrustes_basis(lms, subj, k=4)
    bs = np.random.default_rng(2).uniform(size=(lms.shape[0], 52)).astype(np.float32)
    b = fit_blendshape_basis(bs, lms, reference=ref, k=4)
    assert b.encode_blendshapes(bs).shape == (lms.shape[0], 4)
    assert b.coeffs_to_mesh(np.ones((2, 4))).shape == (2, 478, 3)


def test_shipped_basis_loads() -> None:
    basis = load_basis(DEFAULT_BASIS_ID)
    assert basis.num_coeffs == 29
    assert basis.mean.shape == (478, 3)
    assert basis.components.shape == (29, 478, 3)
    assert basis.triangles.shape[1] == 3 and basis.triangles.shape[0] > 800
    assert np.all(basis.std > 0)
    assert np.isfinite(basis.coeffs_to_mesh(np.ones(29))).all()
