"""Profiles and variants: validation, defaults, recipe digests, libvips format support."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rindle_async import profiles
from rindle_async.errors import ConfigurationError
from rindle_async.profiles import RECIPE_VERSION, Profile, Variant, index_profiles, recipe_digest

SRC = Path(profiles.__file__).resolve().parents[1]


def raises_config(prefix: str, *also: str) -> Any:
    """pytest.raises for a ConfigurationError whose message starts with ``prefix`` and holds ``also``."""
    pattern = re.escape(prefix) + "".join(f"(?=.*{re.escape(part)})" for part in also)
    return pytest.raises(ConfigurationError, match=pattern)


# --- Variant -------------------------------------------------------------------------------


def test_variant_defaults() -> None:
    variant = Variant(width=128, height=128)
    assert (variant.fit, variant.format, variant.quality) == ("cover", "webp", 80)
    assert variant.keep_metadata is False
    assert variant.background == (255, 255, 255)


@pytest.mark.parametrize("fmt,content_type,extension", [
    ("jpeg", "image/jpeg", "jpg"), ("png", "image/png", "png"), ("webp", "image/webp", "webp"),
    ("avif", "image/avif", "avif"), ("gif", "image/gif", "gif"),
])
def test_variant_content_type_and_extension(fmt: str, content_type: str, extension: str) -> None:
    variant = Variant(width=10, height=10, format=fmt)
    assert (variant.content_type, variant.extension) == (content_type, extension)


@pytest.mark.parametrize("field", ["width", "height"])
@pytest.mark.parametrize("value", [0, -1, 16385, True, 1.5, "100"])
def test_variant_dimension_out_of_range_or_wrong_type(field: str, value: object) -> None:
    kwargs: dict[str, Any] = {"width": 100, "height": 100, field: value}
    with raises_config(f"Variant.{field}={value!r}", "1..16384"):
        Variant(**kwargs)


def test_variant_dimension_bounds_are_inclusive() -> None:
    assert Variant(width=1, height=16384).height == 16384


def test_variant_fit_must_be_known() -> None:
    with raises_config("Variant.fit='stretch' is not one of cover, contain, inside, fill"):
        Variant(width=10, height=10, fit="stretch")


@pytest.mark.parametrize("fit", ["cover", "contain", "fill"])
@pytest.mark.parametrize("dims", [{"width": 10}, {"height": 10}, {}])
def test_variant_box_fits_need_both_dimensions(fit: str, dims: dict[str, int]) -> None:
    with raises_config(f"Variant.fit={fit!r}", "needs both width and height"):
        Variant(fit=fit, **dims)


def test_variant_inside_needs_one_dimension() -> None:
    with raises_config("Variant.fit='inside'", "needs width or height"):
        Variant(fit="inside")
    assert Variant(fit="inside", width=800).height is None
    assert Variant(fit="inside", height=800).width is None


def test_variant_format_must_be_known() -> None:
    with raises_config("Variant.format='tiff' is not one of jpeg, png, webp, avif, gif"):
        Variant(width=10, height=10, format="tiff")


@pytest.mark.parametrize("value", [0, 101, True, 80.0])
def test_variant_quality_range(value: object) -> None:
    with raises_config(f"Variant.quality={value!r}", "1..100"):
        Variant(width=10, height=10, quality=value)  # type: ignore[arg-type]


def test_variant_keep_metadata_must_be_bool() -> None:
    with raises_config("Variant.keep_metadata=1 is not a bool"):
        Variant(width=10, height=10, keep_metadata=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [(1, 2), (1, 2, 3, 4), (0, 0, 256), (-1, 0, 0), (True, 0, 0),
                                   (0.5, 0, 0), "fff"])
def test_variant_background_is_rgb(value: object) -> None:
    with raises_config(f"Variant.background={value!r}", "0..255"):
        Variant(width=10, height=10, background=value)  # type: ignore[arg-type]


def test_variant_background_list_becomes_tuple() -> None:
    variant = Variant(width=10, height=10, background=[0, 0, 0])  # type: ignore[arg-type]
    assert variant.background == (0, 0, 0)
    assert hash(variant) == hash(Variant(width=10, height=10, background=(0, 0, 0)))


def test_variant_is_frozen() -> None:
    variant = Variant(width=10, height=10)
    with pytest.raises(AttributeError):
        variant.width = 20  # type: ignore[misc]


def test_variant_decode_refuses_unknown_fields() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `crop`"):
        msgspec.json.decode(b'{"width": 10, "height": 10, "crop": true}', type=Variant)


def test_decoding_reports_the_same_message() -> None:
    # msgspec wraps errors raised in __post_init__ while decoding into its own ValidationError
    with pytest.raises(msgspec.ValidationError, match=re.escape("Variant.fit='stretch'")):
        msgspec.json.decode(b'{"width": 10, "height": 10, "fit": "stretch"}', type=Variant)


# --- libvips format support ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif", "gif"])
def test_installed_libvips_writes_every_format(fmt: str) -> None:
    assert Variant(width=10, height=10, format=fmt).format == fmt


def test_format_the_libvips_build_cannot_write_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyvips

    version = f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"
    monkeypatch.setattr(profiles, "libvips_can_save", lambda fmt: fmt != "avif")
    with raises_config("Variant.format='avif'",
                       f"cannot be written by the installed libvips {version}", "heifsave"):
        Variant(width=10, height=10, format="avif")
    assert Variant(width=10, height=10, format="webp").format == "webp"


def test_importing_profiles_does_not_load_libvips() -> None:
    code = "import sys, rindle_async.profiles; print('pyvips' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert result.stdout.strip() == "False"


# --- Profile -------------------------------------------------------------------------------


def test_profile_defaults_match_the_design() -> None:
    profile = Profile(name="avatar")
    assert profile.storage == "local"
    assert profile.allow_mime == ("image/jpeg", "image/png", "image/webp")
    assert profile.max_bytes == 10 * 1024 * 1024
    assert profile.max_pixels == 50_000_000
    assert profile.variants == {}
    assert profile.public is False
    assert (profile.url_ttl, profile.upload_ttl) == (300, 3600)


def test_design_example_profile_constructs_and_round_trips() -> None:
    avatar = Profile(
        name="avatar", storage="local", allow_mime=("image/jpeg", "image/png", "image/webp"),
        max_bytes=10 * 1024 * 1024, max_pixels=50_000_000,
        variants={
            "thumb": Variant(width=128, height=128, fit="cover", format="webp", quality=80),
            "large": Variant(width=1600, height=1600, fit="inside", format="jpeg", quality=85),
        },
        public=False, url_ttl=300, upload_ttl=3600,
    )
    assert msgspec.json.decode(msgspec.json.encode(avatar), type=Profile) == avatar


def test_profile_variants_are_a_private_copy() -> None:
    variants = {"thumb": Variant(width=10, height=10)}
    profile = Profile(name="avatar", variants=variants)
    variants["big"] = Variant(width=900, height=900)
    assert list(profile.variants) == ["thumb"]


@pytest.mark.parametrize("name", ["Avatar", "", "-avatar", "_avatar", "a" * 64, "my avatar",
                                  "avatar\n", "a/b", "ávatar", 7])
def test_profile_name_pattern(name: object) -> None:
    with raises_config(f"Profile.name={name!r}", "^[a-z0-9][a-z0-9_-]{0,62}$"):
        Profile(name=name)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["a", "0", "avatar", "user_avatar-2", "a" * 63])
def test_profile_name_pattern_accepts(name: str) -> None:
    assert Profile(name=name).name == name


@pytest.mark.parametrize("storage", ["", None, 3])
def test_profile_storage_is_a_non_empty_string(storage: object) -> None:
    with raises_config(f"Profile.storage={storage!r}", "non-empty string"):
        Profile(name="avatar", storage=storage)  # type: ignore[arg-type]


@pytest.mark.parametrize("allow_mime", [(), [], "image/png", None])
def test_profile_allow_mime_is_a_non_empty_tuple(allow_mime: object) -> None:
    with raises_config(f"Profile.allow_mime={allow_mime!r}", "non-empty tuple"):
        Profile(name="avatar", allow_mime=allow_mime)  # type: ignore[arg-type]


@pytest.mark.parametrize("entry", ["image/JPEG", "image", "image/png ", "/png", "image/", 5,
                                   "image/png/x"])
def test_profile_allow_mime_entries_are_lowercase_type_subtype(entry: object) -> None:
    with raises_config(f"Profile.allow_mime entry {entry!r}", "lowercase type/subtype"):
        Profile(name="avatar", allow_mime=("image/png", entry))  # type: ignore[arg-type]


def test_profile_allow_mime_refuses_duplicates() -> None:
    with raises_config("Profile.allow_mime=('image/png', 'image/gif', 'image/png')",
                       "image/png more than once"):
        Profile(name="avatar", allow_mime=("image/png", "image/gif", "image/png"))


def test_profile_allow_mime_list_becomes_tuple() -> None:
    profile = Profile(name="avatar", allow_mime=["image/png", "image/svg+xml"])  # type: ignore[arg-type]
    assert profile.allow_mime == ("image/png", "image/svg+xml")


@pytest.mark.parametrize("field", ["max_bytes", "max_pixels"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5, "10"])
def test_profile_limits_are_positive_ints(field: str, value: object) -> None:
    with raises_config(f"Profile.{field}={value!r}", "an int >= 1"):
        Profile(name="avatar", **{field: value})


@pytest.mark.parametrize("value", [0, 604801, True, 300.0])
def test_profile_url_ttl_range(value: object) -> None:
    with raises_config(f"Profile.url_ttl={value!r}", "1..604800", "at most 7 days"):
        Profile(name="avatar", url_ttl=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [59, 604801, 0, False])
def test_profile_upload_ttl_range(value: object) -> None:
    with raises_config(f"Profile.upload_ttl={value!r}", "60..604800", "at most 7 days"):
        Profile(name="avatar", upload_ttl=value)  # type: ignore[arg-type]


def test_profile_ttl_bounds_are_inclusive() -> None:
    profile = Profile(name="avatar", url_ttl=604800, upload_ttl=60)
    assert (profile.url_ttl, profile.upload_ttl) == (604800, 60)
    assert Profile(name="avatar", url_ttl=1, upload_ttl=604800).url_ttl == 1


def test_profile_public_must_be_bool() -> None:
    with raises_config("Profile.public='yes' is not a bool"):
        Profile(name="avatar", public="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["Thumb", "", "thumb size", "-thumb"])
def test_profile_variant_names_follow_the_name_pattern(key: str) -> None:
    with raises_config(f"Profile.variants key {key!r}", "^[a-z0-9][a-z0-9_-]{0,62}$"):
        Profile(name="avatar", variants={key: Variant(width=10, height=10)})


def test_profile_variant_values_must_be_variants() -> None:
    with raises_config("Profile.variants['thumb']={'width': 10}", "is not a Variant"):
        Profile(name="avatar", variants={"thumb": {"width": 10}})  # type: ignore[dict-item]


def test_profile_variants_must_be_a_dict() -> None:
    with raises_config("Profile.variants=[]", "is not a dict"):
        Profile(name="avatar", variants=[])  # type: ignore[arg-type]


def test_profile_decode_converts_lists_and_refuses_unknown_fields() -> None:
    profile = msgspec.json.decode(
        b'{"name": "avatar", "allow_mime": ["image/png"],'
        b' "variants": {"thumb": {"width": 64, "height": 64, "background": [0, 0, 0]}}}',
        type=Profile)
    assert profile.allow_mime == ("image/png",)
    assert profile.variants["thumb"].background == (0, 0, 0)
    with pytest.raises(msgspec.ValidationError, match="unknown field `ttl`"):
        msgspec.json.decode(b'{"name": "avatar", "ttl": 5}', type=Profile)


# --- index_profiles ------------------------------------------------------------------------


def test_index_profiles_maps_names() -> None:
    avatar, cover = Profile(name="avatar"), Profile(name="cover")
    assert index_profiles(iter([avatar, cover])) == {"avatar": avatar, "cover": cover}


def test_index_profiles_refuses_duplicate_names() -> None:
    with raises_config("two profiles are named 'avatar'", "unique"):
        index_profiles([Profile(name="avatar"), Profile(name="avatar", public=True)])


def test_index_profiles_refuses_non_profiles() -> None:
    with raises_config("profiles must hold Profile objects, got 'avatar'"):
        index_profiles(["avatar"])  # type: ignore[list-item]


# --- recipe digests ------------------------------------------------------------------------

DIMENSIONS = st.integers(min_value=1, max_value=16384)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "width": st.none() | DIMENSIONS,
    "height": st.none() | DIMENSIONS,
    "fit": st.sampled_from(["cover", "contain", "inside", "fill"]),
    "format": st.sampled_from(["jpeg", "png", "webp", "avif", "gif"]),
    "quality": st.integers(min_value=1, max_value=100),
    "keep_metadata": st.booleans(),
    "background": st.tuples(*[st.integers(min_value=0, max_value=255)] * 3),
}


@st.composite
def variant_options(draw: st.DrawFn) -> dict[str, Any]:
    options = {field: draw(values) for field, values in FIELD_VALUES.items()}
    if options["fit"] != "inside":
        options["width"] = options["width"] or draw(DIMENSIONS)
        options["height"] = options["height"] or draw(DIMENSIONS)
    elif options["width"] is None and options["height"] is None:
        options["width"] = draw(DIMENSIONS)
    return options


@given(variant_options())
def test_equal_recipes_digest_equal(options: dict[str, Any]) -> None:
    first, second = Variant(**options), Variant(**dict(reversed(list(options.items()))))
    decoded = msgspec.json.decode(msgspec.json.encode(first), type=Variant)
    assert recipe_digest(first) == recipe_digest(second) == recipe_digest(decoded)
    assert re.fullmatch(r"[0-9a-f]{20}", recipe_digest(first))


@given(variant_options(), st.sampled_from(sorted(FIELD_VALUES)), st.data())
def test_changing_any_option_changes_the_digest(options: dict[str, Any], field: str,
                                                data: st.DataObject) -> None:
    new_value = data.draw(FIELD_VALUES[field].filter(lambda value: value != options[field]))
    try:
        changed = Variant(**{**options, field: new_value})
    except ConfigurationError:  # e.g. dropping height from a cover variant
        assume(False)
    assert recipe_digest(changed) != recipe_digest(Variant(**options))


def test_digest_is_pinned() -> None:
    # changing this value marks every stored variant stale: do it only with a RECIPE_VERSION bump
    assert RECIPE_VERSION == 1
    assert recipe_digest(Variant(width=128, height=128)) == "ea1b368f9ef02aa0edbb"


def test_recipe_version_changes_the_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    variant = Variant(width=128, height=128)
    before = recipe_digest(variant)
    monkeypatch.setattr(profiles, "RECIPE_VERSION", RECIPE_VERSION + 1)
    assert recipe_digest(variant) != before


@pytest.mark.parametrize("hash_seed", ["0", "1", "4242"])
def test_digest_is_the_same_in_a_fresh_process(hash_seed: str) -> None:
    options = {"width": 640, "height": 480, "fit": "contain", "format": "jpeg", "quality": 72,
               "keep_metadata": True, "background": (12, 34, 56)}
    code = ("from rindle_async.profiles import Variant, recipe_digest; "
            f"print(recipe_digest(Variant(**{options!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(SRC), "PYTHONHASHSEED": hash_seed})
    assert result.stdout.strip() == recipe_digest(Variant(**options))


def test_profile_recipe_digests_cover_every_variant() -> None:
    thumb = Variant(width=128, height=128)
    large = Variant(width=1600, height=1600, fit="inside", format="avif")
    profile = Profile(name="avatar", variants={"thumb": thumb, "large": large})
    digests = profile.recipe_digests()
    assert digests == {"thumb": recipe_digest(thumb), "large": recipe_digest(large)}
    digests["thumb"] = "tampered"
    assert profile.recipe_digests()["thumb"] == recipe_digest(thumb)
    assert Profile(name="empty").recipe_digests() == {}


def test_profile_with_digests_still_encodes_and_compares() -> None:
    profile = Profile(name="avatar", variants={"thumb": Variant(width=128, height=128)})
    profile.recipe_digests()
    assert b"recipe" not in msgspec.json.encode(profile)
    assert profile == Profile(name="avatar", variants={"thumb": Variant(width=128, height=128)})
