"""The synthetic chest-X-ray-like generator: determinism, layout on disk, and where each class differs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.data.discover import discover
from cxr.data.synthetic import CLASSES, generate_dataset, make_image
from cxr.errors import CxrError

SIZE = 64


def _pair(label: str, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """`label` and Normal drawn from the same generator state: they differ only by the class pattern."""
    normal = make_image("Normal", np.random.default_rng(seed), size).astype(np.float64)
    return make_image(label, np.random.default_rng(seed), size).astype(np.float64), normal


def test_image_shape_dtype_and_range() -> None:
    for label in CLASSES:
        img = make_image(label, np.random.default_rng(0), SIZE)
        assert img.shape == (SIZE, SIZE) and img.dtype == np.uint8
        assert img.min() < 40 and img.max() > 150  # dark background, bright bone and tissue


def test_same_generator_seed_gives_the_same_image_and_others_differ() -> None:
    first = make_image("COVID", np.random.default_rng(3), SIZE)
    np.testing.assert_array_equal(first, make_image("COVID", np.random.default_rng(3), SIZE))
    assert not np.array_equal(first, make_image("COVID", np.random.default_rng(4), SIZE))


def test_normal_images_vary_between_draws() -> None:
    images = np.stack([make_image("Normal", np.random.default_rng(i), SIZE) for i in range(6)]).astype(float)
    assert images.std(axis=0).mean() > 3.0  # pose, anatomy and exposure are random, not one template


@pytest.mark.parametrize("label", ["COVID", "Lung_Opacity", "Viral_Pneumonia"])
def test_patterns_only_brighten_the_lungs(label: str) -> None:
    size = 128
    for seed in range(4):
        sick, normal = _pair(label, seed, size)
        diff = sick - normal
        assert diff.mean() > 1.0
        outside = np.zeros_like(diff, dtype=bool)
        outside[:, : size // 16] = outside[:, -size // 16 :] = True  # the body's flanks: no lung there
        outside[: size // 16] = True  # the neck
        assert np.abs(diff[outside]).max() <= 2.0  # at most a soft lung edge


def test_covid_is_bilateral_and_lower_zone() -> None:
    for seed in range(4):
        diff = np.subtract(*_pair("COVID", seed))
        left, right = diff[:, : SIZE // 2].sum(), diff[:, SIZE // 2 :].sum()
        assert min(left, right) > 0.3 * max(left, right)
        assert diff[SIZE // 2 :].sum() > diff[: SIZE // 2].sum()


def test_lung_opacity_is_one_sided_and_dense() -> None:
    for seed in range(4):
        diff = np.subtract(*_pair("Lung_Opacity", seed))
        left, right = diff[:, : SIZE // 2].sum(), diff[:, SIZE // 2 :].sum()
        assert min(left, right) < 0.1 * max(left, right)
        assert np.percentile(diff, 99) > 40  # dense: tens of grey levels brighter


def _roughness(diff: np.ndarray) -> float:
    """Mean horizontal gradient of a pattern relative to its mean: high for fine texture, low for haze."""
    return float(np.abs(np.diff(diff, axis=1)).mean() / np.abs(diff).mean())


def test_viral_pneumonia_is_a_fine_texture_in_both_lungs() -> None:
    for seed in range(4):
        diff = np.subtract(*_pair("Viral_Pneumonia", seed, size=128))
        smooth = [np.subtract(*_pair(label, seed, size=128)) for label in ("COVID", "Lung_Opacity")]
        assert _roughness(diff) > 2.5 * max(_roughness(d) for d in smooth)
        left, right = diff[:, :64].sum(), diff[:, 64:].sum()
        assert min(left, right) > 0.5 * max(left, right)


def test_bad_label_and_size_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrError, match="Pneumothorax"):
        make_image("Pneumothorax", np.random.default_rng(0))
    with pytest.raises(CxrError, match="8"):
        make_image("Normal", np.random.default_rng(0), size=8)
    with pytest.raises(CxrError, match="Cat"):
        generate_dataset(tmp_path, 1, SIZE, classes=["Cat"])
    with pytest.raises(CxrError, match="n_per_class"):
        generate_dataset(tmp_path, 0, SIZE)


def test_generate_dataset_writes_class_folders_deterministically(tmp_path: Path) -> None:
    out = generate_dataset(tmp_path / "a", n_per_class=3, size=SIZE, seed=1)
    assert out == tmp_path / "a"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(CLASSES)  # beside SYNTHETIC.txt
    files = sorted(out.rglob("*.png"))
    assert len(files) == 3 * len(CLASSES)
    assert (out / "Lung_Opacity" / "lung_opacity_0002.png").is_file()
    with Image.open(files[0]) as im:
        assert im.mode == "L" and im.size == (SIZE, SIZE)

    again = generate_dataset(tmp_path / "b", n_per_class=3, size=SIZE, seed=1)
    other = generate_dataset(tmp_path / "c", n_per_class=3, size=SIZE, seed=2)
    for path in files:
        relative = path.relative_to(out)
        assert (again / relative).read_bytes() == path.read_bytes()
        assert (other / relative).read_bytes() != path.read_bytes()


def test_a_class_subset_gives_the_same_files_for_that_class(tmp_path: Path) -> None:
    full = generate_dataset(tmp_path / "full", n_per_class=2, size=SIZE, seed=0)
    part = generate_dataset(tmp_path / "part", n_per_class=2, size=SIZE, seed=0, classes=["Viral_Pneumonia"])
    assert [p.name for p in part.iterdir() if p.is_dir()] == ["Viral_Pneumonia"]
    for path in (part / "Viral_Pneumonia").iterdir():
        assert path.read_bytes() == (full / "Viral_Pneumonia" / path.name).read_bytes()


def test_discovery_reads_the_generated_folder(tmp_path: Path) -> None:
    found = discover(generate_dataset(tmp_path, n_per_class=2, size=SIZE))
    assert found.classes == list(CLASSES)
    assert len(found.samples) == 2 * len(CLASSES)


def test_severity_scales_the_class_pattern_and_shared_patterns_add_another() -> None:
    normal = make_image("Normal", np.random.default_rng(5), SIZE).astype(np.float64)
    full = make_image("Lung_Opacity", np.random.default_rng(5), SIZE).astype(np.float64) - normal
    faint = make_image("Lung_Opacity", np.random.default_rng(5), SIZE, severity=0.3).astype(np.float64) - normal
    assert 0.15 * full.sum() < faint.sum() < 0.5 * full.sum()
    mixed = make_image("Normal", np.random.default_rng(5), SIZE, shared={"Lung_Opacity": 0.3}).astype(np.float64)
    np.testing.assert_allclose(mixed - normal, faint, atol=2.0)  # a Normal image with a faint opacity
    with pytest.raises(CxrError, match="shared pattern 'Normal'"):
        make_image("COVID", np.random.default_rng(0), SIZE, shared={"Normal": 0.5})


def test_overlap_draws_weak_cases_shared_patterns_and_wrong_labels() -> None:
    from cxr.data.synthetic import CLEAR, Overlap, draw_case

    cases = [draw_case("COVID", np.random.default_rng(i), Overlap()) for i in range(400)]
    relabelled = sum(c.drawn != "COVID" for c in cases)
    assert 5 <= relabelled <= 35  # ~4% label noise
    assert sum(bool(c.shared) for c in cases) > 40 and all("COVID" != n for c in cases for n in c.shared if c.drawn == "COVID")
    assert min(c.severity for c in cases) < 0.6
    clear = [draw_case("COVID", np.random.default_rng(i), CLEAR) for i in range(50)]
    assert all(c.drawn == "COVID" and c.severity == 1.0 and not c.shared for c in clear)


def test_the_dataset_folder_says_it_is_synthetic_and_lists_wrong_labels(tmp_path: Path) -> None:
    from cxr.data.synthetic import SYNTHETIC_MARKER, Overlap, is_synthetic

    out = generate_dataset(tmp_path / "noisy", n_per_class=4, size=SIZE, seed=0, overlap=Overlap(label_noise=0.5))
    text = (out / SYNTHETIC_MARKER).read_text()
    assert "no medical meaning" in text and "drawn as" in text
    assert is_synthetic(out) and not is_synthetic(tmp_path)
    manifest = out / "manifest.csv"
    manifest.write_text("path,label\n")
    assert is_synthetic(manifest)  # a manifest beside the images
