"""Seam-lab scenes: determinism, any-size rendering, prompts, and the object counter."""

from dataclasses import replace

import kornia
import pytest
import torch
import torch.nn.functional as F

from lab import seamlab


def test_same_seed_same_scenes_and_prompts():
    a, b = seamlab.sample_scenes(12, seed=3), seamlab.sample_scenes(12, seed=3)
    assert a.prompts == b.prompts
    assert torch.equal(seamlab.render(a, 48, 40), seamlab.render(b, 48, 40))
    c = seamlab.sample_scenes(12, seed=4)
    assert a.prompts != c.prompts
    assert (seamlab.render(a, 48, 40) - seamlab.render(c, 48, 40)).abs().mean() > 0.05


def test_render_any_size_is_the_same_scene():
    scenes = seamlab.sample_scenes(8, seed=1)
    small = seamlab.render(scenes, 64, 64)
    big = seamlab.render(scenes, 192, 192)
    assert small.shape == (8, 3, 64, 64) and big.shape == (8, 3, 192, 192)
    assert float(small.min()) >= 0.0 and float(small.max()) <= 1.0
    down = F.interpolate(big, size=(64, 64), mode="area")
    assert float((down - small).abs().mean()) < 0.02  # same geometry, only finer sampling
    wide = seamlab.render(scenes, 64, 160)
    assert wide.shape == (8, 3, 64, 160)


def test_kinds_cover_the_tiling_hard_cases():
    scenes = seamlab.sample_scenes(400, seed=0)
    kinds = torch.bincount(scenes.kind, minlength=len(seamlab.KINDS))
    assert (kinds > 60).all(), kinds
    assert int(scenes.present[:, 0].sum()) > 40 and int(scenes.present[:, 1].sum()) > 20
    assert int(scenes.present[:, 2].sum()) > 20
    assert float((scenes.vignette > 0).float().mean()) == pytest.approx(0.3, abs=0.08)


def test_prompts_describe_colours_objects_and_layout():
    scenes = seamlab.sample_scenes(64, seed=5)
    vocab = set(seamlab.prompt_vocabulary())
    for i, p in enumerate(scenes.prompts):
        assert seamlab.COLOR_NAMES[int(scenes.color1[i])] in p
        for j, name in enumerate(seamlab.OBJECTS):
            assert (f"one {name}" in p) == bool(scenes.present[i, j]), p
        assert set(p.replace(",", " ,").split()) <= vocab, p


def test_count_objects_matches_the_scene():
    scenes = seamlab.sample_scenes(24, seed=2, kinds=("sky", "gradient"))
    images = seamlab.render(scenes, 64, 64)
    counts, expected = seamlab.count_objects(images), scenes.expected_counts()
    for name in seamlab.OBJECTS:
        assert torch.equal(counts[name], expected[name]), name
    assert seamlab.duplicated_object_rate(images, scenes) == 0.0


def test_connected_labels_agree_with_kornia():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 1, 24, 24, generator=g) > 0.55
    ours = seamlab.connected_labels(mask)
    ref = kornia.contrib.connected_components(mask.float(), num_iterations=600)
    for a, b in zip(ours.view(2, -1), ref.view(2, -1), strict=True):  # same partition, labels may differ
        pairs = torch.unique(torch.stack([a, b]), dim=1)
        assert pairs.shape[1] == len(torch.unique(a)) == len(torch.unique(b))


def test_duplicated_sun_is_counted_twice():
    skies = seamlab.sample_scenes(32, seed=2, kinds=("sky",))
    scenes = skies[int(torch.nonzero(skies.present[:, 0])[0])]  # the first day sky with a sun
    one = seamlab.render(scenes, 64, 64)
    two = torch.cat([one, one], dim=-1)  # the classic tiling failure: each tile draws the sun
    assert int(seamlab.count_objects(one)["sun"][0]) == 1
    assert int(seamlab.count_objects(two)["sun"][0]) == 2
    assert seamlab.duplicated_object_rate(two, scenes) == 1.0


def _sky_with(name: str, centres: list[tuple[float, float]], radius: float = 0.025) -> torch.Tensor:
    """A 512×256 seam-lab sky with one `name` at each canvas-relative centre, small and soft as the
    embedded model draws them at this size (radius 0.025 of the height: about 6 px; edges blurred)."""
    j = seamlab.OBJECTS.index(name)
    skies = seamlab.sample_scenes(32, seed=2, kinds=("sky",))
    scene = skies[int(torch.nonzero(skies.present[:, j])[0])]
    scene = replace(scene, vignette=torch.zeros(1), obj_r=torch.full((1, 3), radius))
    height, width = 256, 512
    background = seamlab.render(replace(scene, present=torch.zeros(1, 3, dtype=torch.bool)), height, width)
    image = background.clone()
    only = torch.zeros(1, 3, dtype=torch.bool)
    only[0, j] = True
    for centre in centres:
        xy = scene.obj_xy.clone()
        xy[0, j] = torch.tensor(centre)
        image += seamlab.render(replace(scene, present=only, obj_xy=xy), height, width) - background
    return kornia.filters.gaussian_blur2d(image.clamp(0, 1), (7, 7), (1.5, 1.5), border_type="replicate")


@pytest.mark.parametrize("name", ["sun", "moon"])
def test_small_soft_objects_are_counted_one_by_one(name):
    """The embedded model's suns and moons on a 512×256 canvas are a few pixels across and soft; each one
    counts, the one cut in half by the right border too."""
    centres = [(0.12, 0.3), (0.45, 0.7), (0.995, 0.45)]
    for n in range(len(centres) + 1):
        counts = seamlab.count_objects(_sky_with(name, centres[:n]))
        assert int(counts[name][0]) == n, (name, n, counts)


def test_a_glow_without_an_outline_is_not_a_sun():
    background = _sky_with("sun", [])
    y, x = torch.meshgrid(torch.arange(256.0), torch.arange(512.0), indexing="ij")
    glow = 0.9 * torch.exp(-(((x - 512) ** 2 + (y - 256) ** 2) / (2 * 45.0**2)))  # fades over ~100 px
    image = torch.lerp(background, torch.tensor(seamlab.SUN_RGB).view(1, 3, 1, 1), glow)
    assert int(seamlab.count_objects(image)["sun"][0]) == 0
    assert int(seamlab.count_objects(_sky_with("sun", [(0.95, 0.9)]))["sun"][0]) == 1


def test_a_sun_smeared_along_a_diagonal_is_one_sun():
    """Causal tiles can paint a sun as a diagonal streak (here 3.8× longer than wide, where a bounding box
    is mostly sky): a person counts one sun."""
    sky = _sky_with("sun", [])
    y, x = torch.meshgrid(torch.arange(256.0), torch.arange(512.0), indexing="ij")
    along, across = ((x - 100) + (y - 80)) / 2**0.5, ((x - 100) - (y - 80)) / 2**0.5
    streak = torch.sigmoid(4 * (1 - ((along / 23) ** 2 + (across / 6) ** 2).sqrt()))
    image = torch.lerp(sky, torch.tensor(seamlab.SUN_RGB).view(1, 3, 1, 1), streak)
    assert int(seamlab.count_objects(image)["sun"][0]) == 1


def test_a_speckled_moon_is_one_moon():
    """Guided tiles can paint the guide's moon as a pale blob of rainbow speckles: still one moon."""
    g = torch.Generator().manual_seed(0)
    sky, moon = _sky_with("moon", []), _sky_with("moon", [(0.3, 0.4)], radius=0.15)
    speckles = F.interpolate(torch.rand(1, 3, 64, 128, generator=g), size=(256, 512), mode="nearest")
    image = sky + (moon - sky) * (0.3 + 1.4 * speckles)  # each 4 px speckle tinted its own way
    assert int(seamlab.count_objects(image.clamp(0, 1))["moon"][0]) == 1


def test_specular_bands_and_stripes_are_not_counted_as_moons():
    scenes = seamlab.sample_scenes(24, seed=9, kinds=("metal", "texture"))
    counts = seamlab.count_objects(seamlab.render(scenes, 64, 64))
    assert int(counts["moon"].sum()) <= 2 and int(counts["sun"].sum()) == 0


def test_random_crops_are_tile_views():
    g = torch.Generator().manual_seed(0)
    big = seamlab.render(seamlab.sample_scenes(4, seed=1), 128, 128)
    crops = seamlab.random_crops(big, 64, g)
    assert crops.shape == (4, 3, 64, 64)
    with pytest.raises(seamlab.SceneError, match="larger than the image"):
        seamlab.random_crops(big, 200, g)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: seamlab.sample_scenes(0), "at least one"),
        (lambda: seamlab.sample_scenes(2, kinds=("forest",)), "unknown scene kind"),
        (lambda: seamlab.render(seamlab.sample_scenes(1), 4, 64), "at least 8x8"),
        (lambda: seamlab.count_objects(torch.rand(1, 1, 8, 8)), r"\[B,3,H,W\]"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
